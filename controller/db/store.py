"""Loading and saving workflows: the SQL side of the pure lifecycle, and the per-workflow lock.

Every write also keeps the SLA report's facts in step, in the same transaction (`report_store`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import fields, replace
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select, text, update

from contracts.envelope import EVENT, Envelope
from controller.db.tables import compensations, messages, steps, workflows
from controller.domain import lifecycle
from controller.reporting import facts as rf
from controller.reporting import store as report_store
from participants.runtime.db import upsert


def lock(conn: Connection, correlation_id: str) -> None:
    lock_many(conn, [correlation_id])


def lock_many(conn: Connection, correlation_ids: Iterable[str]) -> None:
    """Serialise every writer of these workflows (tracker, sweeper, API) until the transaction ends.

    PostgreSQL: transaction-scoped advisory locks, which also cover a workflow not inserted yet,
    taken in one statement in the order of their keys, so two batches cannot wait on each other.
    SQLite: every write transaction already holds the database lock (BEGIN IMMEDIATE).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK, {"cids": sorted(set(correlation_ids))})


_LOCK = text("SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(c, 0) AS k"
             " FROM unnest(CAST(:cids AS text[])) AS c ORDER BY k) AS keys")


def record_message(conn: Connection, message: Envelope, received_at: datetime, *,
                   transitions: bool = True) -> bool:
    """Add a message to the timeline once; False when it was there already."""
    return bool(record_messages(conn, [message], received_at, transitions=transitions))


def record_messages(conn: Connection, batch: Iterable[Envelope], received_at: datetime, *,
                    transitions: bool = True) -> list[Envelope]:
    """Add messages to the timeline once each, in one statement; those that were not there yet.
    `transitions=False` skips the report's transitions: for a message nothing can name as its
    cause yet and that names none."""
    fresh = {m.id: m for m in batch}
    if not fresh:
        return []
    rows = [{
        "id": m.id, "correlation_id": m.correlation_id, "kind": m.kind, "type": m.type,
        "version": m.version, "source": m.source, "causation_id": m.causation_id,
        "occurred_at": m.occurred_at, "received_at": received_at, "target": m.target, "data": m.data,
    } for m in fresh.values()]
    added = set(conn.execute(_record_statement(conn.dialect.name), rows).scalars())
    recorded = [m for m in fresh.values() if m.id in added]
    if transitions:
        report_store.messages_recorded(conn, recorded)
    return recorded


@cache
def _record_statement(dialect: str) -> Any:
    return upsert(dialect, messages).on_conflict_do_nothing(index_elements=["id"]).returning(messages.c.id)


def load(conn: Connection, correlation_id: str) -> lifecycle.Workflow | None:
    return load_many(conn, [correlation_id]).get(correlation_id)


def load_many(conn: Connection, correlation_ids: Iterable[str]) -> dict[str, lifecycle.Workflow]:
    """The workflows of these correlation IDs that exist, each with its steps, compensations and
    the first event of each type it has seen: four queries, however many workflows."""
    found: dict[str, lifecycle.Workflow] = {}
    for row in conn.execute(_LOAD[0], {"cids": sorted(set(correlation_ids))}):
        found[row.correlation_id] = lifecycle.Workflow(
            row.correlation_id, row.flow, row.flow_version, row.started_at, row.start_message_id,
            status=row.status, reason=row.reason, deadline=row.deadline, finished_at=row.finished_at,
            paused_at=row.paused_at,
        )
    if not found:
        return found
    cids = {"cids": sorted(found)}
    for s in conn.execute(_LOAD[1], cids):
        found[s.correlation_id].steps[s.name] = lifecycle.Step(**_fields(s, lifecycle.Step))
    for c in conn.execute(_LOAD[2], cids):
        found[c.correlation_id].compensations[c.step] = lifecycle.Compensation(
            **_fields(c, lifecycle.Compensation))
    for m in conn.execute(_LOAD[3], cids):
        found[m.correlation_id].seen.setdefault(m.type, (m.id, m.data))
    return found


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


def early_messages(conn: Connection, correlation_id: str) -> list[Envelope]:
    """Events recorded for a correlation ID before its workflow started, in arrival order."""
    return [
        Envelope(m.id, m.kind, m.type, m.version, m.correlation_id, m.causation_id, m.occurred_at,
                 m.source, m.data)
        for m in conn.execute(_EARLY, {"cid": correlation_id})
    ]


_EARLY = select(messages).where(messages.c.correlation_id == bindparam("cid"),
                                messages.c.kind == EVENT).order_by(messages.c.seq)


def insert_workflow(conn: Connection, wf: lifecycle.Workflow, extra: dict[str, Any], *,
                    early: bool = True) -> None:
    """`early=False`: no message of this correlation ID was recorded before it."""
    conn.execute(insert(workflows), {
        "correlation_id": wf.correlation_id, "flow": wf.flow, "flow_version": wf.flow_version,
        "status": wf.status, "reason": wf.reason, "started_at": wf.started_at, "deadline": wf.deadline,
        "finished_at": wf.finished_at, "paused_at": wf.paused_at, "next_due_at": lifecycle.next_due(wf),
        "start_message_id": wf.start_message_id, **extra,
    })
    empty = lifecycle.Workflow(wf.correlation_id, wf.flow, wf.flow_version, wf.started_at,
                               wf.start_message_id)
    _save_children(conn, [(wf, empty)])
    report_store.workflow_inserted(conn, wf, early=early)


def snapshot(wf: lifecycle.Workflow) -> lifecycle.Workflow:
    """A copy to diff against after the lifecycle ran: each step and compensation copied, their
    values shared (the lifecycle replaces a result or a payload, never changes one in place)."""
    return replace(wf, steps={n: copy.copy(s) for n, s in wf.steps.items()},
                   compensations={n: copy.copy(c) for n, c in wf.compensations.items()},
                   seen=dict(wf.seen))


def save(conn: Connection, wf: lifecycle.Workflow, before: lifecycle.Workflow) -> None:
    """Write what changed since `before` (a snapshot taken at load)."""
    save_many(conn, [(wf, before)])


def save_many(conn: Connection, changes: list[tuple[lifecycle.Workflow, lifecycle.Workflow]]) -> None:
    """Write what changed in each workflow since its snapshot: one statement per kind of row."""
    if not changes:
        return
    conn.execute(_update_workflow(), [{
        "_cid": wf.correlation_id, "status": wf.status, "reason": wf.reason, "deadline": wf.deadline,
        "finished_at": wf.finished_at, "paused_at": wf.paused_at, "next_due_at": lifecycle.next_due(wf),
    } for wf, _ in changes])
    _save_children(conn, changes)
    report_store.workflows_saved(conn, [(rf.of_workflow(before), rf.of_workflow(wf))
                                        for wf, before in changes])


def _save_children(conn: Connection, changes: list[tuple[lifecycle.Workflow, lifecycle.Workflow]]) -> None:
    new_steps: list[dict[str, Any]] = []
    changed_steps: list[dict[str, Any]] = []
    new_comps: list[dict[str, Any]] = []
    changed_comps: list[dict[str, Any]] = []
    for wf, before in changes:
        _diff(wf.correlation_id, wf.steps, before.steps, new_steps, changed_steps)
        _diff(wf.correlation_id, wf.compensations, before.compensations, new_comps, changed_comps)
    for statement, rows in ((insert(steps), new_steps), (_update_step(), changed_steps),
                            (insert(compensations), new_comps), (_update_compensation(), changed_comps)):
        if rows:
            conn.execute(statement, rows)


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
