"""Keeps the SLA report's facts and rollup in step with the state they summarize.

Called by the unit of work (`controller/service/unit_of_work.py`) in the transaction that writes
that state: a workflow's save writes the facts that changed and appends their difference to
`report_deltas` (append-only, so concurrent writers never wait for one another); recording a
message writes the transitions it completes.
`fold_deltas` moves the deltas into `report_rollup`; `rebuild` recomputes everything from the base tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC
from functools import cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, insert, or_, select, text, true

from contracts.envelope import Envelope
from controller.db import bulk
from controller.db.tables import (
    FLAGS,
    messages,
    report_deltas,
    report_facts,
    report_rollup,
    workflows,
)
from controller.domain import lifecycle
from controller.reporting import facts as rf
from participants.runtime.db import upsert

_SUBJECT = ("flow", "kind", "name", "to_type", "participant")
_SUMS = ("rows", "n", *FLAGS)
Facts = Mapping[tuple[str, str], rf.Fact]


def workflow_saved(conn: Connection, before: Facts, after: Facts) -> None:
    """Write the facts that changed between two states of one workflow, and the rollup's delta."""
    workflows_saved(conn, [(before, after)])


def workflows_saved(conn: Connection, states: Iterable[tuple[Facts, Facts]]) -> None:
    """The same for many workflows (each as its facts before and after), in two statements."""
    changed, replaced = _changes(conn, states)
    if changed:
        _upsert_facts(conn, changed)
    _append(conn, rf.deltas(replaced, changed))


def recorded_and_saved(conn: Connection, recorded: list[Envelope],
                       states: Iterable[tuple[Facts, Facts]]) -> None:
    """`messages_recorded` and `workflows_saved` at once (the tracker's batch): the transitions'
    query, then one upsert of every new or changed fact and one append of the rollup's delta.
    A transition's key (kind `transition`) is never a workflow's or a step's."""
    added = _transitions_of(conn, recorded)
    changed, replaced = _changes(conn, states)
    if added or changed:
        _upsert_facts(conn, [*added, *changed])
    _append(conn, rf.deltas(replaced, [*added, *changed]))


def _changes(conn: Connection, states: Iterable[tuple[Facts, Facts]]) -> tuple[list[rf.Fact], list[rf.Fact]]:
    """The facts new or changed, and those they replace (deleting a fact gone, which never happens)."""
    changed: list[rf.Fact] = []
    replaced: list[rf.Fact] = []
    for before, after in states:
        now_changed = [f for k, f in after.items() if before.get(k) != f]
        gone = [f for k, f in before.items() if k not in after]
        for f in gone:  # a workflow never loses a step; kept for completeness
            conn.execute(delete(report_facts).where(
                report_facts.c.correlation_id == f.correlation_id, report_facts.c.kind == f.kind,
                report_facts.c.item == f.item))
        changed += now_changed
        replaced += [before[f.key] for f in now_changed if f.key in before] + gone
    return changed, replaced


def messages_recorded(conn: Connection, recorded: list[Envelope]) -> None:
    """The transitions these new messages complete: each with its cause, and with messages it
    caused that arrived first, in one query. None until the workflow exists
    (`workflow_inserted` catches up)."""
    _add(conn, _transitions_of(conn, recorded))


def _transitions_of(conn: Connection, recorded: list[Envelope]) -> list[rf.Fact]:
    if not recorded:
        return []
    cids = sorted({m.correlation_id for m in recorded})
    ids = sorted({m.id for m in recorded})
    if conn.dialect.name == "postgresql":
        return [rf.transition(flow, started_at.astimezone(UTC), cid, cause_type,
                              cause_at.astimezone(UTC), effect_id, effect_type, source,
                              effect_at.astimezone(UTC))
                for flow, started_at, cid, cause_type, cause_at, effect_id, effect_type, source,
                effect_at in bulk.query(conn, _RELATED_PG, (cids, ids, ids))]
    return [rf.transition(r.flow, r.started_at, r.correlation_id, r.cause_type, r.cause_at, r.id,
                          r.type, r.source, r.occurred_at)
            for r in conn.execute(_related(), {"cids": cids, "ids": ids})]


# `_related` on PostgreSQL (`bulk.query`): a fixed text (arrays, not expanded IN lists), prepared.
_RELATED_PG = (
    "SELECT w.flow, w.started_at, w.correlation_id, cause.type, cause.occurred_at, effect.id,"
    " effect.type, effect.source, effect.occurred_at FROM workflows w"
    " JOIN workflow_messages effect ON effect.correlation_id = w.correlation_id"
    " JOIN workflow_messages cause ON cause.id = effect.causation_id"
    " WHERE cause.correlation_id = effect.correlation_id AND effect.id <> cause.id"
    " AND w.correlation_id = ANY(%s::varchar[])"
    " AND (effect.id = ANY(%s::varchar[]) OR cause.id = ANY(%s::varchar[]))")


@cache
def _related() -> Select[Any]:
    """Each (cause, effect) pair of one workflow in which either is one of `ids` (built once:
    the write path runs it for every batch)."""
    return _pairs().where(workflows.c.correlation_id.in_(bindparam("cids", expanding=True)), or_(
        _EFFECT.c.id.in_(bindparam("ids", expanding=True)),
        _CAUSE.c.id.in_(bindparam("ids", expanding=True))))


_EFFECT, _CAUSE = messages.alias("effect"), messages.alias("cause")


def _pairs() -> Select[Any]:
    effect, cause = _EFFECT, _CAUSE
    return select(
        workflows.c.flow, workflows.c.started_at, workflows.c.correlation_id,
        cause.c.type.label("cause_type"), cause.c.occurred_at.label("cause_at"), effect.c.id,
        effect.c.type, effect.c.source, effect.c.occurred_at,
    ).select_from(
        workflows.join(effect, effect.c.correlation_id == workflows.c.correlation_id)
        .join(cause, cause.c.id == effect.c.causation_id)
    ).where(cause.c.correlation_id == effect.c.correlation_id, effect.c.id != cause.c.id)


def workflow_inserted(conn: Connection, wf: lifecycle.Workflow, *, early: bool = True) -> None:
    """A new workflow: its facts, and the transitions among messages recorded before it (none
    when `early` is False)."""
    workflow_saved(conn, {}, rf.of_workflow(wf))
    if early:
        _add(conn, _transitions(conn, wf.correlation_id))


def _transitions(conn: Connection, correlation_id: str) -> list[rf.Fact]:
    query = _pairs().where(workflows.c.correlation_id == correlation_id)
    return [rf.transition(r.flow, r.started_at, correlation_id, r.cause_type, r.cause_at, r.id,
                          r.type, r.source, r.occurred_at) for r in conn.execute(query)]


def _add(conn: Connection, facts: list[rf.Fact]) -> None:
    if facts and conn.dialect.name == "postgresql":
        bulk.insert(conn, report_facts, [f.row() for f in facts])
    elif facts:
        conn.execute(insert(report_facts), [f.row() for f in facts])
    _append(conn, rf.deltas((), facts))


def _upsert_facts(conn: Connection, facts: Iterable[rf.Fact]) -> None:
    rows = sorted(facts, key=lambda f: (f.correlation_id, *f.key))
    if conn.dialect.name == "postgresql":
        bulk.insert(conn, report_facts, [f.row() for f in rows], _ON_FACT)
        return
    conn.execute(_upsert(conn.dialect.name), [f.row() for f in rows])


# The facts' upsert on PostgreSQL (`bulk`): a fact's columns replace the stored ones.
_KEY = ("correlation_id", "kind", "item")
_ON_FACT = (f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
            + ", ".join(f"{c.name} = excluded.{c.name}" for c in report_facts.c if c.name not in _KEY))


@cache
def _upsert(dialect: str) -> Any:
    stmt = upsert(dialect, report_facts)
    keys = ("correlation_id", "kind", "item")
    return stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={c.name: stmt.excluded[c.name] for c in report_facts.c if c.name not in keys})


def _append(conn: Connection, found: rf.Delta) -> None:
    if found and conn.dialect.name == "postgresql":
        bulk.insert(conn, report_deltas, _delta_rows(found))
    elif found:
        conn.execute(insert(report_deltas), _delta_rows(found))


def _delta_rows(found: rf.Delta) -> list[dict[str, Any]]:
    return [{**dict(zip((*_SUBJECT, "hour", "bucket"), key, strict=True)),
             **dict(zip(_SUMS, sums, strict=True))} for key, sums in sorted(found.items())]


def fold_deltas(conn: Connection) -> None:
    """Move every delta into the rollup, in one transaction: nothing counted twice or lost."""
    keys = [*_SUBJECT, "hour", "bucket"]
    names = ", ".join([*keys, *_SUMS])
    sums = ", ".join([*keys, *(f"sum({s})" for s in _SUMS)])
    merge = ", ".join(f"{s} = report_rollup.{s} + excluded.{s}" for s in _SUMS)
    conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {merge}"
    if conn.dialect.name == "postgresql":
        # One statement: exactly the deltas it deletes are added, whatever commits meanwhile.
        conn.execute(text(
            f"WITH moved AS (DELETE FROM report_deltas RETURNING *) "
            f"INSERT INTO report_rollup ({names}) SELECT {sums} FROM moved "
            f"GROUP BY {', '.join(keys)} {conflict}"))
        return
    # SQLite: this transaction holds the database's write lock.
    last = conn.execute(select(report_deltas.c.seq).order_by(report_deltas.c.seq.desc())
                        .limit(1)).scalar()
    if last is None:
        return
    conn.execute(text(
        f"INSERT INTO report_rollup ({names}) SELECT {sums} FROM report_deltas "
        f"WHERE seq <= :last GROUP BY {', '.join(keys)} {conflict}"), {"last": last})
    conn.execute(delete(report_deltas).where(report_deltas.c.seq <= last))


def rebuild(conn: Connection, fold: bool = True) -> int:
    """Recompute every fact and the rollup from the base tables (after a migration, or rows
    written by hand); returns the number of workflows. Reads one workflow at a time."""
    from controller.db import store  # store calls this module on every write

    for table in (report_facts, report_deltas, report_rollup):
        conn.execute(delete(table).where(true()))
    cids = conn.execute(select(workflows.c.correlation_id).order_by(
        workflows.c.correlation_id)).scalars().all()
    for cid in cids:
        wf = store.load(conn, cid)
        if wf is not None:
            workflow_inserted(conn, wf)
    if fold:
        fold_deltas(conn)
    return len(cids)
