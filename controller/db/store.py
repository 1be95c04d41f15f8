"""Loading and saving workflows: the SQL side of the pure lifecycle, and the per-workflow lock.

Loads and saves only: what else a write implies (the report's facts, the outbox) is the unit of
work's (`controller/service/unit_of_work.py`), which is the one caller of the writes here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Connection, Table, bindparam, insert, select, update

from contracts.envelope import EVENT, Envelope
from controller.db import bulk
from controller.db.tables import attributes, audit, compensations, messages, steps, workflows
from controller.domain import lifecycle
from participants.runtime.db import upsert


def lock_many(conn: Connection, correlation_ids: Iterable[str], *, wait: bool = True) -> set[str]:
    """Serialise every writer of these workflows (tracker, sweeper, API) until the transaction
    ends; the correlation IDs locked. `wait=False` takes only the locks no one holds (a sweep
    leaves a busy workflow to its next pass).

    PostgreSQL: transaction-scoped advisory locks, which also cover a workflow not inserted yet,
    taken in one statement in the order of their keys, so two writers cannot wait on each other.
    SQLite: every write transaction already holds the database lock (BEGIN IMMEDIATE).
    """
    cids = sorted(set(correlation_ids))
    if conn.dialect.name != "postgresql" or not cids:
        return set(cids)
    if wait:
        bulk.query(conn, _LOCK, (cids,))
        return set(cids)
    return {c for (c,) in bulk.query(conn, _TRY_LOCK, (cids,))}


_KEYS = ("(SELECT DISTINCT c, hashtextextended(c, 0) AS k FROM unnest(%s::text[]) AS c"
         " ORDER BY k) AS keys")
_LOCK = f"SELECT pg_advisory_xact_lock(k) FROM {_KEYS}"
_TRY_LOCK = f"SELECT c FROM {_KEYS} WHERE pg_try_advisory_xact_lock(k)"


def record_messages(conn: Connection, batch: Iterable[Envelope], received_at: datetime) -> list[Envelope]:
    """Add messages to the timeline once each, in one statement; those that were not there yet."""
    fresh = {m.id: m for m in batch}
    if not fresh:
        return []
    rows = [{
        "id": m.id, "correlation_id": m.correlation_id, "kind": m.kind, "type": m.type,
        "version": m.version, "source": m.source, "causation_id": m.causation_id,
        "occurred_at": m.occurred_at, "received_at": received_at, "target": m.target, "data": m.data,
    } for m in fresh.values()]
    if conn.dialect.name == "postgresql":
        added = {r[0] for r in bulk.insert(conn, messages, rows, "ON CONFLICT (id) DO NOTHING RETURNING id")}
    else:
        added = set(conn.execute(_record_statement(conn.dialect.name), rows).scalars())
    return [m for m in fresh.values() if m.id in added]


@cache
def _record_statement(dialect: str) -> Any:
    return upsert(dialect, messages).on_conflict_do_nothing(index_elements=["id"]).returning(messages.c.id)


def load(conn: Connection, correlation_id: str) -> lifecycle.Workflow | None:
    return load_many(conn, [correlation_id]).get(correlation_id)


def load_many(conn: Connection, correlation_ids: Iterable[str]) -> dict[str, lifecycle.Workflow]:
    """The workflows of these correlation IDs that exist, each with its steps, compensations and
    the first event of each type it has seen: one query on PostgreSQL, four on SQLite, however
    many workflows."""
    cids = sorted(set(correlation_ids))
    if conn.dialect.name == "postgresql":
        return _load_pg(conn, cids) if cids else {}
    return load_by_table(conn, cids)


def load_by_table(conn: Connection, cids: list[str]) -> dict[str, lifecycle.Workflow]:
    """`load_many` in four portable queries, one per table (SQLite's; the reference the tests
    hold PostgreSQL's one query to)."""
    found: dict[str, lifecycle.Workflow] = {}
    for row in conn.execute(_LOAD[0], {"cids": cids}):
        found[row.correlation_id] = lifecycle.Workflow(
            row.correlation_id, row.flow, row.flow_version, row.started_at, row.start_message_id,
            status=row.status, reason=row.reason, deadline=row.deadline, finished_at=row.finished_at,
            paused_at=row.paused_at,
        )
    if not found:
        return found
    params = {"cids": sorted(found)}
    for s in conn.execute(_LOAD[1], params):
        found[s.correlation_id].steps[s.name] = lifecycle.Step(**_fields(s, lifecycle.Step))
    for c in conn.execute(_LOAD[2], params):
        found[c.correlation_id].compensations[c.step] = lifecycle.Compensation(
            **_fields(c, lifecycle.Compensation))
    for m in conn.execute(_LOAD[3], params):
        found[m.correlation_id].seen.setdefault(m.type, (m.id, m.data))
    return found


def _load_pg(conn: Connection, cids: list[str]) -> dict[str, lifecycle.Workflow]:
    """PostgreSQL: each workflow in one row, its steps, compensations and first events of each
    type as JSON arrays (times as ISO text): one query, which psycopg prepares."""
    found: dict[str, lifecycle.Workflow] = {}
    for (cid, flow, version, started_at, start_id, status, reason, deadline, finished_at,
         paused_at, step_rows, comp_rows, seen_rows) in bulk.query(conn, _LOAD_PG, (cids,)):
        wf = found[cid] = lifecycle.Workflow(
            cid, flow, version, started_at.astimezone(UTC), start_id, status=status, reason=reason,
            deadline=_utc(deadline), finished_at=_utc(finished_at), paused_at=_utc(paused_at))
        for n, st, s_at, f_at, dl, seq, att, cmd, nxt, result in orjson.loads(step_rows or "[]"):
            wf.steps[n] = lifecycle.Step(n, st, _iso(s_at), _iso(f_at), _iso(dl), seq, att, cmd,
                                         _iso(nxt), result)
        for step, pos, command, cmd, st, att, sent, nxt, f_at in orjson.loads(comp_rows or "[]"):
            wf.compensations[step] = lifecycle.Compensation(
                step, pos, command, cmd, st, att, _iso(sent), _iso(nxt), _iso(f_at))
        for type_, mid, data in orjson.loads(seen_rows or "[]"):
            wf.seen[type_] = (mid, data)
    return found


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _json_rows(alias: str, names: Iterable[str]) -> str:
    return f"json_agg(json_build_array({', '.join(f'{alias}.{n}' for n in names)}))"


_LOAD_PG = (
    "SELECT w.correlation_id, w.flow, w.flow_version, w.started_at, w.start_message_id, w.status,"
    " w.reason, w.deadline, w.finished_at, w.paused_at,"
    f" (SELECT {_json_rows('s', [f.name for f in fields(lifecycle.Step)])}"
    "   FROM workflow_steps s WHERE s.correlation_id = w.correlation_id)::text,"
    f" (SELECT {_json_rows('c', [f.name for f in fields(lifecycle.Compensation)])}"
    "   FROM workflow_compensations c WHERE c.correlation_id = w.correlation_id)::text,"
    " (SELECT json_agg(json_build_array(e.type, e.id, e.data) ORDER BY e.seq) FROM"
    "   (SELECT DISTINCT ON (m.type) m.type, m.id, m.data, m.seq FROM workflow_messages m"
    f"    WHERE m.correlation_id = w.correlation_id AND m.kind = '{EVENT}' ORDER BY m.type, m.seq) e)::text"
    " FROM workflows w WHERE w.correlation_id = ANY(%s::varchar[])"
)


def _in_batch(table: Table) -> Any:
    return table.c.correlation_id.in_(bindparam("cids", expanding=True))


# Built once: every batch of the tracker runs them.
_LOAD = (
    select(workflows).where(_in_batch(workflows)),
    select(steps).where(_in_batch(steps)),
    select(compensations).where(_in_batch(compensations)),
    select(messages.c.correlation_id, messages.c.type, messages.c.id, messages.c.data)
    .where(_in_batch(messages), messages.c.kind == EVENT).order_by(messages.c.seq),
)


def early_messages_of(conn: Connection, correlation_ids: list[str]) -> dict[str, list[Envelope]]:
    """Events recorded for these correlation IDs before their workflows started, each ID's in
    arrival order: one query however many."""
    found: dict[str, list[Envelope]] = {}
    if not correlation_ids:
        return found
    if conn.dialect.name == "postgresql":
        for mid, kind, type_, version, cid, cause, at, source, data in bulk.query(
                conn, _EARLY_PG, (correlation_ids,)):
            found.setdefault(cid, []).append(Envelope(mid, kind, type_, version, cid, cause,
                                                      at.astimezone(UTC), source, orjson.loads(data)))
        return found
    for m in conn.execute(_EARLY, {"cids": correlation_ids}):
        found.setdefault(m.correlation_id, []).append(Envelope(
            m.id, m.kind, m.type, m.version, m.correlation_id, m.causation_id, m.occurred_at,
            m.source, m.data))
    return found


_EARLY = select(messages).where(_in_batch(messages), messages.c.kind == EVENT).order_by(messages.c.seq)
_EARLY_PG = ("SELECT id, kind, type, version, correlation_id, causation_id, occurred_at, source,"
             f" data::text FROM workflow_messages WHERE correlation_id = ANY(%s::varchar[])"
             f" AND kind = '{EVENT}' ORDER BY seq")


def taken(conn: Connection, correlation_ids: list[str]) -> set[str]:
    """Those of these correlation IDs a workflow has."""
    if conn.dialect.name == "postgresql":
        return {c for (c,) in bulk.query(conn, _TAKEN_PG, (correlation_ids,))}
    return set(conn.execute(_TAKEN, {"cids": correlation_ids}).scalars())


_TAKEN_PG = "SELECT correlation_id FROM workflows WHERE correlation_id = ANY(%s::varchar[])"


_TAKEN = select(workflows.c.correlation_id).where(_in_batch(workflows))


def started_with_keys(conn: Connection, actor: str, keys: list[str]) -> dict[str, tuple[str, str]]:
    """By idempotency key: the correlation ID and request hash of the workflow `actor` started
    with it, for those of `keys` it used."""
    if not keys:
        return {}
    if conn.dialect.name == "postgresql":
        return {key: (cid, digest) for key, cid, digest in bulk.query(conn, _KEYED_PG, (actor, keys))}
    rows = conn.execute(_KEYED, {"actor": actor, "keys": keys})
    return {r.idempotency_key: (r.correlation_id, r.request_hash) for r in rows}


_KEYED_PG = ("SELECT idempotency_key, correlation_id, request_hash FROM workflows"
             " WHERE started_by = %s AND idempotency_key = ANY(%s::varchar[])")
_KEYED = select(workflows.c.idempotency_key, workflows.c.correlation_id, workflows.c.request_hash).where(
    workflows.c.started_by == bindparam("actor"),
    workflows.c.idempotency_key.in_(bindparam("keys", expanding=True)))


def insert_workflows(conn: Connection, new: list[tuple[lifecycle.Workflow, dict[str, Any]]],
                     attrs: Mapping[str, Mapping[str, str]]) -> None:
    """New workflows, each with its extra columns (who started it, its input, ...), their steps
    and compensations, and the search attributes of each (by correlation ID)."""
    if not new:
        return
    _insert(conn, workflows, [{**_workflow_row(wf), "correlation_id": wf.correlation_id,
                               "flow": wf.flow, "flow_version": wf.flow_version,
                               "started_at": wf.started_at, "start_message_id": wf.start_message_id,
                               **extra} for wf, extra in new])
    _save_children(conn, [(wf, _empty(wf)) for wf, _ in new])
    _insert(conn, attributes, [{"correlation_id": cid, "name": name, "value": value}
                               for cid, found in attrs.items() for name, value in found.items()])


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows into a table in one statement: `bulk`'s on PostgreSQL when they all name the same
    columns (a column a row leaves out must get its default), SQLAlchemy's otherwise."""
    if rows and conn.dialect.name == "postgresql" and len({tuple(r) for r in rows}) == 1:
        bulk.insert(conn, table, rows)
    elif rows:
        conn.execute(insert(table), rows)


def _empty(wf: lifecycle.Workflow) -> lifecycle.Workflow:
    return lifecycle.Workflow(wf.correlation_id, wf.flow, wf.flow_version, wf.started_at,
                              wf.start_message_id)


def save_many(conn: Connection, changes: list[tuple[lifecycle.Workflow, lifecycle.Workflow]]) -> None:
    """Write what changed in each workflow since its snapshot (`before`, taken at load): one
    statement per kind of row, and no UPDATE of a workflow row that did not change."""
    rows = [{"_cid": wf.correlation_id, **row} for wf, before in changes
            if (row := _workflow_row(wf)) != _workflow_row(before)]
    if rows and conn.dialect.name == "postgresql":
        bulk.update(conn, workflows, ("correlation_id",), [_keyed(r, "correlation_id") for r in rows])
    elif rows:
        conn.execute(_update_workflow(), rows)
    _save_children(conn, changes)


def _keyed(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """An update's row with its keys ("_cid", "_name": SQLAlchemy's bind names) as column names."""
    out = dict(zip(keys, tuple(row.values())[:len(keys)], strict=True))
    return out | {k: v for k, v in row.items() if not k.startswith("_")}


def _workflow_row(wf: lifecycle.Workflow) -> dict[str, Any]:
    return {"status": wf.status, "reason": wf.reason, "deadline": wf.deadline,
            "finished_at": wf.finished_at, "paused_at": wf.paused_at,
            "next_due_at": lifecycle.next_due(wf)}


def insert_audit(conn: Connection, row: dict[str, Any]) -> None:
    """An operator's intervention: who, what, when, why and its result."""
    conn.execute(insert(audit).values(**row))


def _save_children(conn: Connection, changes: list[tuple[lifecycle.Workflow, lifecycle.Workflow]]) -> None:
    new_steps: list[dict[str, Any]] = []
    changed_steps: list[dict[str, Any]] = []
    new_comps: list[dict[str, Any]] = []
    changed_comps: list[dict[str, Any]] = []
    for wf, before in changes:
        _diff(wf.correlation_id, wf.steps, before.steps, new_steps, changed_steps)
        _diff(wf.correlation_id, wf.compensations, before.compensations, new_comps, changed_comps)
    if conn.dialect.name == "postgresql":
        for table, key, new, changed in ((steps, "name", new_steps, changed_steps),
                                         (compensations, "step", new_comps, changed_comps)):
            _bulk_rows(conn, table, key, new, changed)
        return
    for statement, rows in ((insert(steps), new_steps), (_update_step(), changed_steps),
                            (insert(compensations), new_comps), (_update_compensation(), changed_comps)):
        if rows:
            conn.execute(statement, rows)


def _bulk_rows(conn: Connection, table: Table, key: str, new: list[dict[str, Any]],
               changed: list[dict[str, Any]]) -> None:
    """PostgreSQL: the new rows in one INSERT, the changed ones in one UPDATE (`bulk`)."""
    _insert(conn, table, new)
    bulk.update(conn, table, ("correlation_id", key), [_keyed(r, "correlation_id", key) for r in changed])


def _diff(cid: str, current: dict[str, Any], previous: dict[str, Any], inserts: list[dict[str, Any]],
          updates: list[dict[str, Any]]) -> None:
    """The rows of `current` (steps or compensations by name) that are new or changed."""
    for name, row in current.items():
        old = previous.get(name)
        if old is None:
            inserts.append({"correlation_id": cid, **_columns(row)})
        elif old != row:
            updates.append({"_cid": cid, "_name": name, **_columns(row)})


def _columns(row: lifecycle.Step | lifecycle.Compensation) -> dict[str, Any]:
    """A step's or a compensation's fields as a row (not `asdict`: it deep-copies the result)."""
    return {name: getattr(row, name) for name in _NAMES[type(row)]}


_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (lifecycle.Step, lifecycle.Compensation)}


@cache
def _update_workflow() -> Any:
    return update(workflows).where(workflows.c.correlation_id == bindparam("_cid"))


@cache
def _update_step() -> Any:
    return update(steps).where(steps.c.correlation_id == bindparam("_cid"),
                               steps.c.name == bindparam("_name"))


@cache
def _update_compensation() -> Any:
    return update(compensations).where(compensations.c.correlation_id == bindparam("_cid"),
                                       compensations.c.step == bindparam("_name"))


def _fields(row: Any, cls: type) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in row._mapping.items() if k in names}
