"""The SLA report of `GET /v1/reports/sla`: per flow, per step and per transition, computed in SQL.

Nothing here loads workflows into Python: each section is one aggregate query, whose size does
not grow with the number of workflows (the lists are top-N). What counts as met, judged and
breached is spelled in `report_outcomes`; the lists and the time series are in `report_lists`.
Durations are in seconds: a workflow's from `started_at` to `finished_at`, a step's from its
`started_at` (its prerequisites met) to `finished_at`, a transition's between the `occurred_at`
of a message and of the message it caused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select, text

from contracts.timefmt import format_ts
from controller import lifecycle as lc
from controller import report_lists
from controller import report_outcomes as o
from controller.report_sql import duration, is_postgres, percentiles, span, to_seconds
from controller.tables import messages

# Upper bounds (seconds) of the duration histograms, shared with the /metrics histograms.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STATS = ("p50", "p95", "p99", "max")
w, s, c = o.w, o.s, o.c


@dataclass(frozen=True)
class ReportQuery:
    now: datetime
    flow: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 20  # rows of the breaches and slowest lists

    @property
    def scope(self) -> o.Scope:
        return o.Scope(self.now, self.flow, self.start, self.end)


def sla_report(conn: Connection, query: ReportQuery,
               step_order: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The whole report; `step_order` (flow -> step names as defined) orders the steps."""
    scope = query.scope
    report: dict[str, Any] = {
        "generated_at": format_ts(query.now),
        "flow": query.flow,
        "from": format_ts(query.start) if query.start else None,
        "to": format_ts(query.end) if query.end else None,
        "flows": [], "steps": [], "transitions": [],
        "breaches": {"total": 0, "items": []}, "slowest": [],
        "series": {"bucket_seconds": 3600, "items": []},
    }
    if scope.empty:
        return report
    _tune(conn)
    report["flows"] = flow_rows(conn, scope)
    if not report["flows"]:
        return report
    report["steps"] = _ordered(step_rows(conn, scope), step_order or {})
    report["transitions"] = transition_rows(conn, scope)
    report["breaches"] = {"total": sum(f["breached"] for f in report["flows"]),
                          "items": report_lists.breaches(conn, scope, query.limit)}
    report["slowest"] = report_lists.slowest(conn, scope, query.limit)
    report["series"] = report_lists.series(conn, scope)
    return report


def _tune(conn: Connection) -> None:
    # Sorting a million durations wants more than the default 4 MB, or it spills to disk;
    # LOCAL: only this read-only transaction.
    if is_postgres(conn):
        conn.execute(text("SET LOCAL work_mem = '64MB'"))


def flow_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    now = scope.now
    counts = select(
        w.c.flow, func.count().label("started"),
        func.count().filter(w.c.status == lc.COMPLETED).label("completed"),
        func.count().filter(w.c.status == lc.COMPENSATED).label("compensated"),
        func.count().filter(w.c.status == lc.NEEDS_ATTENTION).label("needs_attention"),
        func.count().filter(w.c.status.in_(o.IN_FLIGHT)).label("in_flight"),
        func.count().filter(o.workflow_breached(now)).label("breached"),
        func.count().filter(o.workflow_met()).label("sla_met"),
        func.count().filter(o.workflow_judged(now)).label("sla_judged"),
    ).where(*scope.where()).group_by(w.c.flow).order_by(w.c.flow)
    source = select(w.c.flow, duration(conn, w.c.started_at, w.c.finished_at).label("d")).where(
        *scope.where(), w.c.status == lc.COMPLETED, w.c.finished_at.is_not(None)).subquery()
    stats = _stats_by_key(conn.execute(percentiles(conn, source, ["flow"])), 1)
    return [_with_sla(dict(r._mapping), stats.get((r.flow,))) for r in conn.execute(counts)]


def step_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    now, g = scope.now, o.gave_up()
    joined = (s.join(w, s.c.correlation_id == w.c.correlation_id)
              .outerjoin(c, and_(c.c.correlation_id == s.c.correlation_id, c.c.step == s.c.name))
              .outerjoin(g, g.c.correlation_id == s.c.correlation_id))
    d = o.step_duration(conn)
    histogram = [func.count().filter(o.step_done(), d <= span(conn, le)).label(f"le_{i}")
                 for i, le in enumerate(BUCKETS)]
    counts = select(
        w.c.flow, s.c.name.label("step"),
        func.count().filter(s.c.started_at.is_not(None)).label("started"),
        func.count().filter(s.c.status.in_(o.STEP_COMPLETED)).label("completed"),
        func.count().filter(s.c.status == lc.STEP_COMPENSATED).label("compensated"),
        func.count().filter(s.c.status == lc.FAILED).label("failed"),
        func.count().filter(c.c.status == lc.FAILED).label("needs_attention"),
        func.count().filter(o.step_breached(now)).label("breached"),
        func.count().filter(o.step_met()).label("sla_met"),
        func.count().filter(o.step_judged(now)).label("sla_judged"),
        *histogram,
    ).select_from(joined).where(*scope.where()).group_by(w.c.flow, s.c.name)
    source = select(w.c.flow, s.c.name.label("step"), d.label("d")).select_from(
        s.join(w, s.c.correlation_id == w.c.correlation_id)
    ).where(*scope.where(), o.step_done()).subquery()
    stats = _stats_by_key(conn.execute(percentiles(conn, source, ["flow", "step"])), 2)
    rows = []
    for r in conn.execute(counts):
        row = {k: v for k, v in r._mapping.items() if not k.startswith("le_")}
        cumulative = [r._mapping[f"le_{i}"] for i in range(len(BUCKETS))]
        row["histogram"] = {"le": list(BUCKETS), "cumulative": cumulative,
                            "count": stats.get((r.flow, r.step), {}).get("count", 0)}
        rows.append(_with_sla(row, stats.get((r.flow, r.step))))
    return rows


def transition_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    """Each pair (cause -> effect) of a workflow's messages linked by `causation_id`, timed between
    their `occurred_at` (the emitters' clocks: what the participants took, not the controller's
    lag in reading them)."""
    effect, cause = messages.alias("effect"), messages.alias("cause")
    source = select(
        w.c.flow, cause.c.type.label("from_type"), effect.c.type.label("to_type"),
        effect.c.source.label("participant"),
        duration(conn, cause.c.occurred_at, effect.c.occurred_at).label("d"),
    ).select_from(
        effect.join(cause, and_(cause.c.id == effect.c.causation_id,
                                cause.c.correlation_id == effect.c.correlation_id))
        .join(w, w.c.correlation_id == effect.c.correlation_id)
    ).where(*scope.where(), effect.c.id != cause.c.id).subquery()
    keys = ["flow", "from_type", "to_type", "participant"]
    rows = [{**dict(zip(keys, key, strict=True)), "count": found["count"],
             "duration_seconds": {k: found[k] for k in STATS}}
            for key, found in _stats_by_key(conn.execute(percentiles(conn, source, keys)), 4).items()]
    return sorted(rows, key=lambda r: (r["flow"], -(r["duration_seconds"]["p50"] or 0)))


def _stats_by_key(rows: Any, width: int) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(r[:width]): {"count": r.n, **{k: to_seconds(r._mapping[k]) for k in STATS}}
            for r in rows}


def _with_sla(row: dict[str, Any], stats: dict[str, Any] | None) -> dict[str, Any]:
    judged = row["sla_judged"]
    row["sla_met_pct"] = round(100.0 * row["sla_met"] / judged, 3) if judged else None
    row["duration_seconds"] = {"count": (stats or {}).get("count", 0),
                               **{k: (stats or {}).get(k) for k in STATS}}
    return row


def _ordered(rows: list[dict[str, Any]], order: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    def rank(row: dict[str, Any]) -> tuple[str, int, str]:
        names = list(order.get(row["flow"], ()))
        return row["flow"], names.index(row["step"]) if row["step"] in names else len(names), row["step"]
    return sorted(rows, key=rank)
