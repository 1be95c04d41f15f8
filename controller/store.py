"""Loading and saving workflows: the SQL side of the pure lifecycle, and the per-workflow lock.

Every write also keeps the SLA report's facts in step, in the same transaction (`report_store`)."""

from __future__ import annotations

import copy
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from contracts.envelope import EVENT, Envelope
from controller import lifecycle, report_store
from controller import report_facts as rf
from controller.tables import compensations, messages, steps, workflows


def lock(conn: Connection, correlation_id: str) -> None:
    """Serialise every writer of one workflow (tracker, sweeper, API) until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock, which also covers a workflow not inserted yet.
    SQLite: every write transaction already holds the database lock (BEGIN IMMEDIATE).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:cid, 0))"),
                     {"cid": correlation_id})


def record_message(conn: Connection, message: Envelope, received_at: datetime) -> bool:
    """Add a message to the timeline once; False when it was there already."""
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = conn.execute(upsert(messages).values(
        id=message.id, correlation_id=message.correlation_id, kind=message.kind, type=message.type,
        version=message.version, source=message.source, causation_id=message.causation_id,
        occurred_at=message.occurred_at, received_at=received_at, target=message.target,
        data=message.data,
    ).on_conflict_do_nothing(index_elements=["id"]).returning(messages.c.seq))
    if result.first() is None:  # RETURNING: rowcount was seen non-zero for a resent command
        return False
    report_store.message_recorded(conn, message)
    return True


def exists(conn: Connection, correlation_id: str) -> bool:
    query = select(workflows.c.correlation_id).where(workflows.c.correlation_id == correlation_id)
    return conn.execute(query).first() is not None


def load(conn: Connection, correlation_id: str) -> lifecycle.Workflow | None:
    row = conn.execute(select(workflows).where(workflows.c.correlation_id == correlation_id)).first()
    if row is None:
        return None
    wf = lifecycle.Workflow(
        row.correlation_id, row.flow, row.flow_version, row.started_at, row.start_message_id,
        status=row.status, reason=row.reason, deadline=row.deadline, finished_at=row.finished_at,
        paused_at=row.paused_at,
    )
    for s in conn.execute(select(steps).where(steps.c.correlation_id == correlation_id)):
        wf.steps[s.name] = lifecycle.Step(**_fields(s, lifecycle.Step))
    for c in conn.execute(select(compensations).where(compensations.c.correlation_id == correlation_id)):
        wf.compensations[c.step] = lifecycle.Compensation(**_fields(c, lifecycle.Compensation))
    seen = select(messages.c.type, messages.c.id, messages.c.data).where(
        messages.c.correlation_id == correlation_id, messages.c.kind == EVENT
    ).order_by(messages.c.seq)
    for m in conn.execute(seen):
        wf.seen.setdefault(m.type, (m.id, m.data))
    return wf


def early_messages(conn: Connection, correlation_id: str) -> list[Envelope]:
    """Events recorded for a correlation ID before its workflow started, in arrival order."""
    query = select(messages).where(
        messages.c.correlation_id == correlation_id, messages.c.kind == EVENT
    ).order_by(messages.c.seq)
    return [
        Envelope(m.id, m.kind, m.type, m.version, m.correlation_id, m.causation_id, m.occurred_at,
                 m.source, m.data)
        for m in conn.execute(query)
    ]


def insert_workflow(conn: Connection, wf: lifecycle.Workflow, extra: dict[str, Any]) -> None:
    conn.execute(insert(workflows).values(
        correlation_id=wf.correlation_id, flow=wf.flow, flow_version=wf.flow_version,
        status=wf.status, reason=wf.reason, started_at=wf.started_at, deadline=wf.deadline,
        finished_at=wf.finished_at, paused_at=wf.paused_at, next_due_at=lifecycle.next_due(wf),
        start_message_id=wf.start_message_id, **extra,
    ))
    empty = lifecycle.Workflow(wf.correlation_id, wf.flow, wf.flow_version, wf.started_at,
                               wf.start_message_id)
    _save_children(conn, wf, empty)
    report_store.workflow_inserted(conn, wf)


def snapshot(wf: lifecycle.Workflow) -> lifecycle.Workflow:
    return copy.deepcopy(wf)


def save(conn: Connection, wf: lifecycle.Workflow, before: lifecycle.Workflow) -> None:
    """Write what changed since `before` (a snapshot taken at load)."""
    conn.execute(update(workflows).where(workflows.c.correlation_id == wf.correlation_id).values(
        status=wf.status, reason=wf.reason, deadline=wf.deadline, finished_at=wf.finished_at,
        paused_at=wf.paused_at, next_due_at=lifecycle.next_due(wf),
    ))
    _save_children(conn, wf, before)
    report_store.workflow_saved(conn, rf.of_workflow(before), rf.of_workflow(wf))


def _save_children(conn: Connection, wf: lifecycle.Workflow, before: lifecycle.Workflow) -> None:
    cid = wf.correlation_id
    for name, step in wf.steps.items():
        old = before.steps.get(name)
        if old is None:
            conn.execute(insert(steps).values(correlation_id=cid, **asdict(step)))
        elif old != step:
            conn.execute(update(steps).where(steps.c.correlation_id == cid, steps.c.name == name)
                         .values(**asdict(step)))
    for name, comp in wf.compensations.items():
        prev = before.compensations.get(name)
        if prev is None:
            conn.execute(insert(compensations).values(correlation_id=cid, **asdict(comp)))
        elif prev != comp:
            conn.execute(update(compensations).where(
                compensations.c.correlation_id == cid, compensations.c.step == name
            ).values(**asdict(comp)))


def _fields(row: Any, cls: type) -> dict[str, Any]:
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in row._mapping.items() if k in names}
