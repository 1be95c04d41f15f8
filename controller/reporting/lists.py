"""The SLA report's lists and time series: which workflows breached and which step was late, the
slowest completed workflows, and per time bucket what started, completed, breached and met."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal_column, select, union

from contracts.timefmt import format_ts
from controller.db.tables import report_deltas, report_facts, report_rollup
from controller.domain.statuses import WorkflowStatus
from controller.reporting import facts as rf
from controller.reporting import outcomes as o
from controller.reporting import read as report_read
from controller.reporting.sql import bucket_width, duration, epoch_bucket, greatest, moment, to_seconds

w, s, f = o.w, o.s, report_facts
MAX_BUCKETS = 60


def link(correlation_id: str) -> str:
    return f"/v1/workflows/{correlation_id}"


def breaches(conn: Connection, scope: o.Scope, limit: int) -> list[dict[str, Any]]:
    """The breached workflows, late by the most first, each with the step that was late and by how
    much: the step that overran the most, its own deadline or the workflow's while it was active.
    A step that never ended overran until the workflow stopped waiting for it.

    The breached workflows are found through indexes (their facts, or the running ones), and
    their steps read through the steps' primary key (correlated subqueries): how late each is,
    then which step for the `limit` latest. The cost follows the breaches, not the workflows.
    """
    now = scope.now
    steps_of = _overruns(conn, now)

    def latest(column: str) -> Any:
        # A derived table, so that the ORDER BY names its column: SQLite refuses outer references there.
        mine = steps_of.subquery("candidates")
        return (select(mine.c[column]).where(mine.c.overrun > 0)
                .order_by(mine.c.overrun.desc(), mine.c.name).limit(1).scalar_subquery())

    fallback = duration(conn, w.c.deadline, func.coalesce(w.c.finished_at, moment(now)))
    late = func.coalesce(latest("overrun"), fallback).label("late")
    ranked = select(w.c.correlation_id, late).where(
        w.c.correlation_id.in_(_breached(scope)), *scope.where(), o.workflow_breached(now)
    ).subquery("ranked")
    top = select(ranked).order_by(ranked.c.late.desc(), ranked.c.correlation_id).limit(
        limit).subquery("top")
    query = select(
        w.c.correlation_id, w.c.flow, w.c.status, w.c.reason, w.c.deadline, top.c.late,
        latest("name").label("step"), latest("deadline").label("step_deadline"),
        latest("kind").label("kind"),
    ).join_from(w, top, top.c.correlation_id == w.c.correlation_id).order_by(
        top.c.late.desc(), w.c.correlation_id)
    return [{"correlation_id": r.correlation_id, "flow": r.flow, "status": r.status,
             "reason": r.reason, "step": r.step, "deadline_of": r.kind or "workflow",
             "deadline": _ts(r.step_deadline if r.kind == "step" else r.deadline),
             "late_by_seconds": to_seconds(r.late), "link": link(r.correlation_id)}
            for r in conn.execute(query)]


def _overruns(conn: Connection, now: datetime) -> Any:
    """The steps of the workflow at hand (a correlated select): each one's name and deadline, by how
    much it overran (-1: not at all) and whose deadline that was, its own (`step`) or the workflow's
    while it was active (`workflow`)."""
    end = o.step_end(now, o.first_compensation_at())
    own = case((o.step_breached(now, o.first_compensation_at()), duration(conn, s.c.deadline, end)))
    whole = case((and_(s.c.started_at <= w.c.deadline, end > w.c.deadline),
                  duration(conn, w.c.deadline, end)))
    overrun = greatest(conn, func.coalesce(own, -1.0), func.coalesce(whole, -1.0))
    kind = case((func.coalesce(own, -1.0) >= func.coalesce(whole, -1.0), literal_column("'step'")),
                else_=literal_column("'workflow'"))
    return select(s.c.name, s.c.deadline, kind.label("kind"), overrun.label("overrun")).where(
        s.c.correlation_id == w.c.correlation_id).correlate(w)


def _breached(scope: o.Scope) -> Any:
    """The scope's breached workflows: by their state (a partial index of the facts), or by the
    clock (running past the deadline: the status index)."""
    flagged = select(f.c.correlation_id).where(
        f.c.kind == literal_column(f"'{rf.WORKFLOW}'"), f.c.breached == literal_column("1"),
        *_started(scope), *([] if scope.flow is None else [f.c.flow == scope.flow]))
    running = select(w.c.correlation_id).where(
        w.c.status == WorkflowStatus.RUNNING, w.c.deadline < moment(scope.now), *scope.where())
    return union(flagged, running)


def slowest(conn: Connection, scope: o.Scope, limit: int) -> list[dict[str, Any]]:
    """The completed workflows that took longest, from their facts: per flow, the rank index
    read from the top."""
    top: list[tuple[int, str]] = []
    for flow in [scope.flow] if scope.flow is not None else _flows(conn):
        query = select(f.c.duration_ms, f.c.correlation_id).where(
            f.c.flow == flow, f.c.kind == rf.WORKFLOW, f.c.name == "", f.c.to_type == "",
            f.c.participant == "", f.c.duration_ms.is_not(None), *_started(scope),
        ).order_by(f.c.duration_ms.desc(), f.c.correlation_id).limit(limit)
        top += [(r.duration_ms, r.correlation_id) for r in conn.execute(query)]
    top = sorted(top, key=lambda t: (-t[0], t[1]))[:limit]
    rows = {r.correlation_id: r for r in conn.execute(select(
        w.c.correlation_id, w.c.flow, w.c.started_at, w.c.finished_at, w.c.deadline).where(
        w.c.correlation_id.in_([cid for _, cid in top])))}
    return [{"correlation_id": cid, "flow": rows[cid].flow, "started_at": _ts(rows[cid].started_at),
             "finished_at": _ts(rows[cid].finished_at), "deadline": _ts(rows[cid].deadline),
             "duration_seconds": to_seconds(ms / 1000), "link": link(cid)} for ms, cid in top]


def _flows(conn: Connection) -> list[str]:
    """Every flow with a workflow (each has a delta, folded or not)."""
    query = union(*(select(t.c.flow).where(t.c.kind == rf.WORKFLOW).distinct()
                    for t in (report_rollup, report_deltas)))
    return sorted(conn.execute(query).scalars())


def _started(scope: o.Scope) -> list[Any]:
    found = [] if scope.start is None else [f.c.started_at >= moment(scope.start)]
    return found + ([] if scope.end is None else [f.c.started_at < moment(scope.end)])


def series(conn: Connection, scope: o.Scope) -> dict[str, Any]:
    """Per bucket of start time (the workflows started in it): started, completed, breached, SLA
    met %. The bucket is the narrowest of 10 s ... 30 days that keeps the chart readable: whole
    hours are summed from the hourly rollup, shorter buckets from the facts."""
    first, last = _range(conn, scope)
    if first is None or last is None:
        return {"bucket_seconds": 3600, "items": []}
    width = bucket_width((last - first).total_seconds(), MAX_BUCKETS)
    found: dict[int, dict[str, int]] = {}
    if width % 3600 == 0:
        for r in report_read.sums(conn, scope, [rf.WORKFLOW], ["hour"]):
            _add(found, int(r.hour) * 3600 // width, r._mapping)
    else:
        slot = epoch_bucket(conn, f.c.started_at, width)
        for r in report_read.fact_sums(conn, scope, [rf.WORKFLOW], slot):
            _add(found, int(r.slot), r._mapping)
    for b, (late, judged) in o.live_workflows(conn, scope, epoch_bucket(conn, w.c.started_at,
                                                                        width)).items():
        _add(found, int(b), {"breached": late, "sla_judged": judged})
    items = []
    for b in range(int(first.timestamp()) // width, int(last.timestamp()) // width + 1):
        r = found.get(b, {})
        judged = r.get("sla_judged", 0)
        items.append({
            "start": format_ts(datetime.fromtimestamp(b * width, UTC)),
            "started": r.get("rows", 0), "completed": r.get("completed", 0),
            "breached": r.get("breached", 0),
            "sla_met_pct": round(100.0 * r.get("sla_met", 0) / judged, 3) if judged else None,
        })
    return {"bucket_seconds": width, "items": items}


def _add(found: dict[int, dict[str, int]], slot: int, sums: Mapping[str, Any]) -> None:
    into = found.setdefault(slot, {})
    for k in ("rows", "completed", "breached", "sla_met", "sla_judged"):
        if k in sums:
            into[k] = into.get(k, 0) + int(sums[k] or 0)


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

