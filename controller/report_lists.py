"""The SLA report's lists and time series: which workflows breached and which step was late, the
slowest completed workflows, and per time bucket what started, completed, breached and met."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal_column, select

from contracts.timefmt import format_ts
from controller import lifecycle as lc
from controller import report_outcomes as o
from controller.report_sql import bucket_width, duration, epoch_bucket, greatest, moment, to_seconds

w, s = o.w, o.s
MAX_BUCKETS = 60


def link(correlation_id: str) -> str:
    return f"/v1/workflows/{correlation_id}"


def breaches(conn: Connection, scope: o.Scope, limit: int) -> list[dict[str, Any]]:
    """The breached workflows, late by the most first, each with the step that was late and by how
    much: the step that overran the most, its own deadline or the workflow's while it was active.
    A step that never ended overran until the workflow stopped waiting for it.

    Each breached workflow's steps are read through the steps' primary key (correlated
    subqueries), so the cost follows the breaches, not the steps of every workflow.
    """
    now = scope.now
    end = o.step_end(now, o.first_compensation_at())
    own = case((o.step_breached(now, o.first_compensation_at()), duration(conn, s.c.deadline, end)))
    whole = case((and_(s.c.started_at <= w.c.deadline, end > w.c.deadline),
                  duration(conn, w.c.deadline, end)))
    overrun = greatest(conn, func.coalesce(own, -1.0), func.coalesce(whole, -1.0))

    # A derived table, so that the ORDER BY names its column: SQLite refuses outer references there.
    kind = case((func.coalesce(own, -1.0) >= func.coalesce(whole, -1.0), literal_column("'step'")),
                else_=literal_column("'workflow'"))
    steps_of = select(s.c.name, s.c.deadline, kind.label("kind"), overrun.label("overrun")).where(
        s.c.correlation_id == w.c.correlation_id).correlate(w)

    def latest(column: str) -> Any:
        mine = steps_of.subquery("candidates")
        return (select(mine.c[column]).where(mine.c.overrun > 0)
                .order_by(mine.c.overrun.desc(), mine.c.name).limit(1).scalar_subquery())

    fallback = duration(conn, w.c.deadline, func.coalesce(w.c.finished_at, moment(now)))
    rows = select(
        w.c.correlation_id, w.c.flow, w.c.status, w.c.reason, w.c.deadline,
        latest("name").label("step"), latest("deadline").label("step_deadline"),
        latest("kind").label("kind"), func.coalesce(latest("overrun"), fallback).label("late"),
    ).where(*scope.where(), o.workflow_breached(now)).subquery("breached")
    query = select(rows).order_by(rows.c.late.desc(), rows.c.correlation_id).limit(limit)
    return [{"correlation_id": r.correlation_id, "flow": r.flow, "status": r.status,
             "reason": r.reason, "step": r.step, "deadline_of": r.kind or "workflow",
             "deadline": _ts(r.step_deadline if r.kind == "step" else r.deadline),
             "late_by_seconds": to_seconds(r.late), "link": link(r.correlation_id)}
            for r in conn.execute(query)]


def slowest(conn: Connection, scope: o.Scope, limit: int) -> list[dict[str, Any]]:
    d = duration(conn, w.c.started_at, w.c.finished_at)
    query = select(w.c.correlation_id, w.c.flow, w.c.started_at, w.c.finished_at, w.c.deadline,
                   d.label("d")).where(*scope.where(), w.c.status == lc.COMPLETED,
                                       w.c.finished_at.is_not(None)
                                       ).order_by(d.desc(), w.c.correlation_id).limit(limit)
    return [{"correlation_id": r.correlation_id, "flow": r.flow, "started_at": _ts(r.started_at),
             "finished_at": _ts(r.finished_at), "deadline": _ts(r.deadline),
             "duration_seconds": to_seconds(r.d), "link": link(r.correlation_id)}
            for r in conn.execute(query)]


def series(conn: Connection, scope: o.Scope) -> dict[str, Any]:
    """Per bucket of start time (the workflows started in it): started, completed, breached, SLA
    met %. The bucket is the narrowest of 10 s ... 30 days that keeps the chart readable."""
    first, last = _range(conn, scope)
    if first is None or last is None:
        return {"bucket_seconds": 3600, "items": []}
    width = bucket_width((last - first).total_seconds(), MAX_BUCKETS)
    bucket = epoch_bucket(conn, w.c.started_at, width).label("bucket")
    query = select(
        bucket, func.count().label("started"),
        func.count().filter(w.c.status == lc.COMPLETED).label("completed"),
        func.count().filter(o.workflow_breached(scope.now)).label("breached"),
        func.count().filter(o.workflow_met()).label("sla_met"),
        func.count().filter(o.workflow_judged(scope.now)).label("sla_judged"),
    ).where(*scope.where()).group_by(bucket)
    found = {int(r.bucket): r for r in conn.execute(query)}
    items = []
    for b in range(int(first.timestamp()) // width, int(last.timestamp()) // width + 1):
        r = found.get(b)
        judged = r.sla_judged if r else 0
        items.append({
            "start": format_ts(datetime.fromtimestamp(b * width, UTC)),
            "started": r.started if r else 0, "completed": r.completed if r else 0,
            "breached": r.breached if r else 0,
            "sla_met_pct": round(100.0 * r.sla_met / judged, 3) if r and judged else None,
        })
    return {"bucket_seconds": width, "items": items}


def _range(conn: Connection, scope: o.Scope) -> tuple[datetime | None, datetime | None]:
    """The chart's span: the asked range, each open end closed by the data."""
    row = conn.execute(select(func.min(w.c.started_at), func.max(w.c.started_at))
                       .where(*scope.where())).one()
    first = scope.start or row[0]
    last = min(scope.end, scope.now) if scope.end else row[1]
    if first is None or last is None:
        return None, None
    return first, max(first, last)


def _ts(value: datetime | None) -> str | None:
    return format_ts(value) if value else None

