"""The SLA sweep: finds workflows whose next deadline or retry is due and lets the lifecycle act.

Its cost grows with the number of workflows due, not in flight: `next_due_at` is indexed (partially,
on the rows that owe something). Several sweeps may run at once: each takes only the workflow
locks no one holds and re-reads what it got, so nothing is issued twice. A workflow it cannot
decide is set aside (`needs_attention`, the reason in its audit) and the pass goes on.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select

from controller.db.tables import workflows
from controller.domain import lifecycle
from controller.service.bootstrap import Services
from controller.service.unit_of_work import UnitOfWork, unit_of_work
from participants.runtime.db import retry_lost_races

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


@retry_lost_races  # a deadlock's victim: the chunk again at once, re-read
def _sweep_chunk(services: Services, cids: list[str], now: datetime) -> tuple[int, int]:
    """A workflow another sweeper or the tracker holds is left: the next pass re-reads it."""
    acted = 0
    with unit_of_work(services, now, "sweeper") as uow:
        for cid, wf in sorted(uow.load(cids, wait=False).items()):
            due = lifecycle.next_due(wf)
            if due is None or due > now:
                continue  # someone acted on it since the query
            with structlog.contextvars.bound_contextvars(correlation_id=cid):
                _act(uow, wf, now)
            acted += 1
        sent = len(uow.messages)
    return acted, sent


def _act(uow: UnitOfWork, wf: lifecycle.Workflow, now: datetime) -> None:
    """Let the lifecycle act on one workflow. One it cannot decide (its flow version no longer
    loaded, a command whose payload fails validation) is set aside for an operator, and the
    chunk's others go on: the decision does no I/O, so what it raises is this workflow's alone."""
    try:
        uow.apply(wf, lifecycle.on_time(uow.flow(wf), wf, now))
    except Exception as exc:  # whatever it is: one bad workflow must not stop the sweep
        uow.set_aside(wf, exc, actor="sweeper")
        return
    if wf.status != uow.before(wf).status:
        log.info("workflow changed by the clock", status=wf.status, reason=wf.reason)

