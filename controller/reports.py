"""The SLA report of `GET /v1/reports/sla`: per flow, per step and per transition, computed in SQL.

Nothing here loads workflows into Python: each section is an aggregate query (two on SQLite)
whose answer does not grow with the number of workflows (the lists are top-N). What counts as met, judged and
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

from sqlalchemy import Connection, and_, case, select, text

from config.flows import Catalog
from contracts.timefmt import format_ts
from controller import lifecycle as lc
from controller import report_lists
from controller import report_outcomes as o
from controller.report_sql import duration, is_postgres, per_row, summarize, to_seconds
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
    tune(conn)
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


def step_order(catalog: Catalog) -> dict[str, list[str]]:
    """Each flow's steps in the order its latest version defines them."""
    return {flow.name: [s.name for s in flow.steps] for flow in catalog.all_latest()}


def tune(conn: Connection) -> None:
    # Sorting a million durations wants more than the default 4 MB, or it spills to disk;
    # LOCAL: only this read-only transaction.
    if is_postgres(conn):
        conn.execute(text("SET LOCAL work_mem = '64MB'"))
        # Compiling these few big queries costs more than it saves.
        conn.execute(text("SET LOCAL jit = off"))


def flow_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    now = scope.now
    timed = and_(w.c.status == lc.COMPLETED, w.c.finished_at.is_not(None))
    flags = {
        "completed": w.c.status == lc.COMPLETED, "compensated": w.c.status == lc.COMPENSATED,
        "needs_attention": w.c.status == lc.NEEDS_ATTENTION, "in_flight": w.c.status.in_(o.IN_FLIGHT),
        "breached": o.workflow_breached(now), "sla_met": o.workflow_met(),
        "sla_judged": o.workflow_judged(now),
    }
    rows = per_row(select(w.c.flow, *(v.label(k) for k, v in flags.items()),
                          _when(timed, duration(conn, w.c.started_at, w.c.finished_at))
                          ).where(*scope.where()))
    found = summarize(conn, rows, ["flow"], list(flags))
    return [_with_sla({"flow": flow, "started": row.pop("rows"), **row})
            for (flow,), row in sorted(found.items())]


def step_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    now, g = scope.now, o.gave_up()
    # The failed compensations as a small grouped subquery: joined by hash, where a join with
    # the table itself is planned as a merge join that sorts every step.
    failed = select(c.c.correlation_id, c.c.step).where(c.c.status == lc.FAILED).group_by(
        c.c.correlation_id, c.c.step).subquery("failed")
    joined = (s.join(w, s.c.correlation_id == w.c.correlation_id)
              .outerjoin(g, g.c.correlation_id == s.c.correlation_id)
              .outerjoin(failed, and_(failed.c.correlation_id == s.c.correlation_id,
                                      failed.c.step == s.c.name)))
    flags = {
        "started": s.c.started_at.is_not(None), "completed": s.c.status.in_(o.STEP_COMPLETED),
        "compensated": s.c.status == lc.STEP_COMPENSATED, "failed": s.c.status == lc.FAILED,
        "needs_attention": failed.c.step.is_not(None), "breached": o.step_breached(now),
        "sla_met": o.step_met(), "sla_judged": o.step_judged(now),
    }
    rows = per_row(select(w.c.flow, s.c.name.label("step"), *(v.label(k) for k, v in flags.items()),
                          _when(o.step_done(), o.step_duration(conn))
                          ).select_from(joined).where(*scope.where()))
    buckets = {f"le_{i}": rows.c.d <= le for i, le in enumerate(BUCKETS)}
    bucketed = per_row(select(rows, *(v.label(k) for k, v in buckets.items())))
    found = summarize(conn, bucketed, ["flow", "step"], [*flags, *buckets])
    out = []
    for (flow, step), row in found.items():
        cumulative = [row.pop(k) for k in buckets]
        row["histogram"] = {"le": list(BUCKETS), "cumulative": cumulative, "count": row["n"]}
        row.pop("rows")
        out.append(_with_sla({"flow": flow, "step": step, **row}))
    return out


def transition_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    """Each pair (cause -> effect) of a workflow's messages linked by `causation_id`, timed between
    their `occurred_at` (the emitters' clocks: what the participants took, not the controller's
    lag in reading them)."""
    effect, cause = messages.alias("effect"), messages.alias("cause")
    rows = per_row(select(
        w.c.flow, cause.c.type.label("from_type"), effect.c.type.label("to_type"),
        effect.c.source.label("participant"),
        duration(conn, cause.c.occurred_at, effect.c.occurred_at).label("d"),
    ).select_from(
        effect.join(cause, cause.c.id == effect.c.causation_id)
        .join(w, w.c.correlation_id == effect.c.correlation_id)
    ).where(*scope.where(), cause.c.correlation_id == effect.c.correlation_id,
            effect.c.id != cause.c.id))
    keys = ("flow", "from_type", "to_type", "participant")
    found = summarize(conn, rows, keys, [])
    out = [{**dict(zip(keys, key, strict=True)), "count": row["n"],
            "duration_seconds": _durations(row)} for key, row in found.items()]
    return sorted(out, key=lambda r: (r["flow"], -(r["duration_seconds"]["p50"] or 0)))


def _when(condition: Any, d: Any) -> Any:
    """The duration of rows that are timed, NULL for the others."""
    return case((condition, d)).label("d")


def _durations(row: dict[str, Any]) -> dict[str, Any]:
    return {"count": row.get("n") or 0, **{k: to_seconds(row.get(k)) for k in STATS}}


def _with_sla(row: dict[str, Any]) -> dict[str, Any]:
    """The counts, SLA met %, and the durations under `duration_seconds`."""
    judged = row["sla_judged"]
    out = {k: v for k, v in row.items() if k not in ("n", *STATS)}
    out["sla_met_pct"] = round(100.0 * row["sla_met"] / judged, 3) if judged else None
    out["duration_seconds"] = _durations(row)
    return out


def _ordered(rows: list[dict[str, Any]], order: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    def rank(row: dict[str, Any]) -> tuple[str, int, str]:
        names = list(order.get(row["flow"], ()))
        return row["flow"], names.index(row["step"]) if row["step"] in names else len(names), row["step"]
    return sorted(rows, key=rank)
