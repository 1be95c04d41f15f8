"""What the SLA report counts, as SQL conditions over workflows and their steps.

- A workflow or step *met* its SLA when it completed (a step: done, even if later compensated)
  at or before its deadline.
- It is *judged* once that can be told: it has finished, or its deadline has passed.
  SLA met % = met / judged.
- A workflow *breached* when the controller stopped it for its SLA (`reason = sla_breached`), when
  it completed after its deadline, or when it is still running past it.
- A step breached when it ended after its own deadline; a step that never ended, when its
  workflow stopped waiting for it (compensation began, or now if still running) after that
  deadline, unless a failure or a cancellation stopped the workflow.

What a workflow's state alone decides is kept in `report_facts` (`report_facts.py`, the same rules
in Python); what the clock decides is counted live here, over the few workflows still open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, exists, func, or_, select

from controller.db.tables import compensations, steps, workflows
from controller.domain.statuses import Reason, StepStatus, WorkflowStatus
from controller.reporting.sql import duration, moment

STEP_COMPLETED = (StepStatus.DONE, StepStatus.COMPENSATED)
w, s, c = workflows, steps, compensations


@dataclass(frozen=True)
class Scope:
    """Workflows started in [start, end) UTC, of one flow or all; `now` judges what is still open."""

    now: datetime
    flow: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.start is not None and self.end is not None and self.start >= self.end

    def where(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.flow is not None:
            found.append(w.c.flow == self.flow)
        if self.start is not None:
            found.append(w.c.started_at >= self.start)
        if self.end is not None:
            found.append(w.c.started_at < self.end)
        return found


def workflow_breached(now: datetime) -> ColumnElement[bool]:
    return or_(
        w.c.reason == Reason.SLA_BREACHED,
        and_(w.c.status == WorkflowStatus.COMPLETED, w.c.finished_at > w.c.deadline),
        and_(w.c.status == WorkflowStatus.RUNNING, w.c.deadline < moment(now)),
    )


def stopped_waiting(now: datetime, gave_up_at: Any) -> ColumnElement[Any]:
    """When the workflow stopped waiting for its unfinished steps: its first compensation command
    (`gave_up_at`), else its end, else now."""
    return func.coalesce(gave_up_at, w.c.finished_at, moment(now))


def step_end(now: datetime, gave_up_at: Any) -> ColumnElement[Any]:
    return func.coalesce(s.c.finished_at, stopped_waiting(now, gave_up_at))


def step_breached(now: datetime, gave_up_at: Any) -> ColumnElement[bool]:
    waited = or_(w.c.reason.is_(None), w.c.reason == Reason.SLA_BREACHED)
    return and_(s.c.started_at.is_not(None), s.c.deadline.is_not(None), or_(
        s.c.finished_at > s.c.deadline,
        and_(s.c.finished_at.is_(None), waited, stopped_waiting(now, gave_up_at) > s.c.deadline),
    ))


def first_compensation_at() -> Any:
    """Per workflow row of the enclosing query: when its first compensation command went out."""
    return (select(func.min(c.c.sent_at)).where(c.c.correlation_id == w.c.correlation_id)
            .correlate(w).scalar_subquery())


def step_duration(conn: Connection) -> ColumnElement[Any]:
    return duration(conn, s.c.started_at, s.c.finished_at)


def step_done() -> ColumnElement[bool]:
    """Steps whose duration counts: done (or done, then compensated) after they began."""
    return and_(s.c.status.in_(STEP_COMPLETED), s.c.started_at.is_not(None),
                s.c.finished_at.is_not(None))


def live_workflows(conn: Connection, scope: Scope, group: Any) -> dict[Any, tuple[int, int]]:
    """Per `group`: (breached, judged) by the clock alone: running or compensating past the
    workflow's deadline (running only, for breached). Read through the status index."""
    now = moment(scope.now)
    late = and_(w.c.deadline < now)
    breached = and_(late, w.c.status == WorkflowStatus.RUNNING,
                    or_(w.c.reason.is_(None), w.c.reason != Reason.SLA_BREACHED))
    query = select(group.label("g"), func.count().filter(breached), func.count().filter(late)).where(
        w.c.status.in_((WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING)), *scope.where()).group_by(group)
    return {r[0]: (r[1], r[2]) for r in conn.execute(query)}


def live_steps(conn: Connection, scope: Scope) -> dict[tuple[str, str], int]:
    """Per (flow, step): steps breached by the clock alone (so judged too): active past their
    deadline in a workflow that still waits for them (not ended, no compensation sent). Read
    through the partial index of open workflows."""
    sent = exists().where(c.c.correlation_id == w.c.correlation_id, c.c.sent_at.is_not(None))
    waited = or_(w.c.reason.is_(None), w.c.reason == Reason.SLA_BREACHED)
    query = select(w.c.flow, s.c.name, func.count()).select_from(
        w.join(s, s.c.correlation_id == w.c.correlation_id)).where(
        w.c.finished_at.is_(None), ~sent, waited, s.c.started_at.is_not(None),
        s.c.finished_at.is_(None), s.c.deadline < moment(scope.now), *scope.where(),
    ).group_by(w.c.flow, s.c.name)
    return {(r[0], r[1]): r[2] for r in conn.execute(query)}
