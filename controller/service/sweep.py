"""The SLA sweep: finds workflows whose next deadline or retry is due and lets the lifecycle act.

Its cost grows with the number of workflows due, not in flight: `next_due_at` is indexed (partially,
on the rows that owe something). Several sweeps may run at once: each workflow is taken under its
advisory lock with try-lock semantics and re-read, so nothing is issued twice.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import Connection, select, text

from contracts.envelope import Envelope
from controller.db import store
from controller.db.tables import workflows
from controller.domain import lifecycle
from controller.service import effects
from controller.service.bootstrap import Services
from participants.runtime import outbox
from participants.runtime.faults import crash_point

log = structlog.get_logger("baton.sweeper")


def sweep_once(services: Services, now: datetime, limit: int = 500, chunk: int = 50) -> int:
    """One pass over at most `limit` due workflows, `chunk` to a transaction: a burst of breaches
    holds each workflow's lock (on SQLite, the database's write lock) for one chunk, not the whole
    pass. Returns how many workflows it acted on."""
    with services.engine.connect() as conn:
        due = conn.execute(
            select(workflows.c.correlation_id).where(workflows.c.next_due_at <= now)
            .order_by(workflows.c.next_due_at).limit(limit)
        ).scalars().all()
    acted, sent = 0, 0
    ordered = sorted(due)
    for start in range(0, len(ordered), chunk):
        done, messages = _sweep_chunk(services, ordered[start:start + chunk], now)
        acted, sent = acted + done, sent + messages
    if acted:
        log.info("swept", workflows=acted, messages=sent)
    return acted


def _sweep_chunk(services: Services, cids: list[str], now: datetime) -> tuple[int, int]:
    with services.engine.begin() as conn:
        sent: list[Envelope] = []
        acted = 0
        for cid in cids:
            if not _try_lock(conn, cid):
                continue  # another sweeper or the tracker has it; it is re-read next pass if still due
            produced = _sweep_workflow(services, conn, cid, now)
            if produced is not None:
                acted += 1
                sent += produced
        crash_point("sweeper.before_commit", services.settings.crash_points if sent else ())
        pending = outbox.enqueue(conn, services.keys, sent, now)
    crash_point("sweeper.after_commit", services.settings.crash_points if pending else ())
    outbox.publish(services.engine, services.redis, pending, services.settings.crash_points)
    return acted, len(sent)


def _sweep_workflow(services: Services, conn: Connection, cid: str,
                    now: datetime) -> list[Envelope] | None:
    wf = store.load(conn, cid)
    if wf is None:
        return None
    due = lifecycle.next_due(wf)
    if due is None or due > now:
        return None  # someone acted on it since the query
    flow = services.catalog.get(wf.flow, wf.flow_version)
    before = store.snapshot(wf)
    with structlog.contextvars.bound_contextvars(correlation_id=cid):
        changes = lifecycle.on_time(flow, wf, now)
        store.save(conn, wf, before)
        if wf.status != before.status:
            log.info("workflow changed by the clock", status=wf.status, reason=wf.reason)
    return effects.to_messages(conn, services.registry, wf, changes, now)


def _try_lock(conn: Connection, cid: str) -> bool:
    if conn.dialect.name != "postgresql":
        return True  # SQLite: this transaction already holds the database's write lock
    got = conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtextextended(:cid, 0))"),
                       {"cid": cid}).scalar_one()
    return bool(got)
