"""The SLA report of `GET /v1/reports/sla`: per flow, per step and per transition.

Nothing here loads workflows into Python, nor reads the base tables in bulk: the counts and the
duration buckets are summed from the hourly rollup (and the facts of the partial hours at the
range's edges, `report_read`), each percentile is one short index read of the facts, and what
only the clock decides (past a deadline while still open) is counted live over the open
workflows (`report_outcomes`). What a fact holds is spelled in `report_facts`; the lists and the
time series are in `report_lists`. Durations are in seconds: a workflow's from `started_at` to
`finished_at`, a step's from its `started_at` (its prerequisites met) to `finished_at`, a
transition's between the `occurred_at` of a message and of the message it caused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from config.flows import Catalog
from contracts.timefmt import format_ts
from controller.reporting import facts as rf
from controller.reporting import lists as report_lists
from controller.reporting import outcomes as o
from controller.reporting import progress as report_progress
from controller.reporting import read as report_read
from controller.reporting.sql import is_postgres

# Upper bounds (seconds) of the duration histograms, shared with the /metrics histograms.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
w = o.w


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
               step_order: Mapping[str, Sequence[str]] | None = None,
               progress_on: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The whole report; `step_order` (flow -> step names as defined) orders the steps;
    `progress_on` (flow -> its progress events) gives the flows whose progress is summed."""
    scope = query.scope
    report: dict[str, Any] = {
        "generated_at": format_ts(query.now),
        "flow": query.flow,
        "from": format_ts(query.start) if query.start else None,
        "to": format_ts(query.end) if query.end else None,
        "flows": [], "steps": [], "transitions": [],
        "breaches": {"total": 0, "items": []}, "slowest": [],
        "series": {"bucket_seconds": 3600, "items": []}, "progress": [],
    }
    if scope.empty:
        return report
    tune(conn)
    report["flows"] = flow_rows(conn, scope)
    if not report["flows"]:
        return report
    order = step_order or {}
    declared = {f["flow"]: order.get(f["flow"], ()) for f in report["flows"]}
    report["steps"] = _ordered(step_rows(conn, scope, declared), order)
    report["transitions"] = transition_rows(conn, scope)
    report["breaches"] = {"total": sum(f["breached"] for f in report["flows"]),
                          "items": report_lists.breaches(conn, scope, query.limit)}
    report["slowest"] = report_lists.slowest(conn, scope, query.limit)
    report["series"] = report_lists.series(conn, scope)
    report["progress"] = report_progress.progress_rows(conn, scope, progress_on or {})
    return report


def progress_on(catalog: Catalog) -> dict[str, tuple[str, ...]]:
    """The flows that report progress, and the events that carry it, as their latest versions say."""
    return {flow.name: flow.progress_on for flow in catalog.all_latest() if flow.progress_on}


def step_order(catalog: Catalog) -> dict[str, list[str]]:
    """Each flow's steps in the order its latest version defines them."""
    return {flow.name: [s.name for s in flow.steps] for flow in catalog.all_latest()}


def tune(conn: Connection) -> None:
    """Call first in the report's transaction. On PostgreSQL, one snapshot for all its queries:
    a percentile's rank is found from the sums and read from the facts in two queries."""
    if is_postgres(conn):
        conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        # Compiling these small queries costs more than it saves.
        conn.execute(text("SET LOCAL jit = off"))


def flow_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    found = _subjects(conn, scope, rf.WORKFLOW)
    live = o.live_workflows(conn, scope, w.c.flow)
    out = []
    for subject, (sums, histogram) in sorted(found.items()):
        breached, judged = live.get(subject[0], (0, 0))
        row = {"flow": subject[0], "started": sums["rows"],
               **{k: sums[k] for k in ("completed", "compensated", "needs_attention", "in_flight")},
               "breached": sums["breached"] + breached, "sla_met": sums["sla_met"],
               "sla_judged": sums["sla_judged"] + judged}
        out.append(_with_sla(row, report_read.durations(conn, scope, subject, histogram)))
    return out


def step_rows(conn: Connection, scope: o.Scope,
              declared: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """A row per step with facts in the scope, and per step `declared` (flow -> step names) with
    none: a step no workflow in the scope has started (it has no facts: `facts.of_workflow`)."""
    found = _subjects(conn, scope, rf.STEP)
    for flow, names in declared.items():
        for name in names:
            found.setdefault((flow, rf.STEP, name, "", ""), ({k: 0 for k in report_read.SUMS}, []))
    live = o.live_steps(conn, scope)
    out = []
    for subject, (sums, histogram) in found.items():
        flow, step = subject[0], subject[2]
        late = live.get((flow, step), 0)
        row: dict[str, Any] = {"flow": flow, "step": step, **{k: sums[k] for k in (
            "started", "completed", "compensated", "failed", "needs_attention")},
            "breached": sums["breached"] + late, "sla_met": sums["sla_met"],
            "sla_judged": sums["sla_judged"] + late}
        row["histogram"] = {"le": list(BUCKETS), "count": sums["n"], "cumulative": [
            sum(c for b, c in histogram if b <= round(le * 1000)) for le in BUCKETS]}
        out.append(_with_sla(row, report_read.durations(conn, scope, subject, histogram)))
    return out


def transition_rows(conn: Connection, scope: o.Scope) -> list[dict[str, Any]]:
    """Each pair (cause -> effect) of a workflow's messages linked by `causation_id`, timed between
    their `occurred_at` (the emitters' clocks: what the participants took, not the controller's
    lag in reading them)."""
    out = []
    for subject, (sums, histogram) in _subjects(conn, scope, rf.TRANSITION).items():
        flow, _, from_type, to_type, participant = subject
        out.append({"flow": flow, "from_type": from_type, "to_type": to_type,
                    "participant": participant, "count": sums["rows"],
                    "duration_seconds": report_read.durations(conn, scope, subject, histogram)})
    return sorted(out, key=lambda r: (r["flow"], -(r["duration_seconds"]["p50"] or 0),
                                      r["from_type"], r["to_type"], r["participant"]))


Subjects = dict[tuple[str, ...], tuple[dict[str, int], list[tuple[int, int]]]]


def _subjects(conn: Connection, scope: o.Scope, kind: str) -> Subjects:
    """Per subject of that kind with facts in the scope: its sums, and (bucket, count) sorted."""
    found: Subjects = {}
    for r in report_read.sums(conn, scope, [kind], [*report_read.SUBJECT, "bucket"]):
        subject = tuple(r[:5])
        sums, histogram = found.setdefault(subject, ({k: 0 for k in report_read.SUMS}, []))
        for k in report_read.SUMS:
            sums[k] += int(r._mapping[k])
        if r.bucket != rf.UNTIMED and r.n:
            histogram.append((int(r.bucket), int(r.n)))
    for _, histogram in found.values():
        histogram.sort()
    return {k: v for k, v in found.items() if v[0]["rows"]}


def _with_sla(row: dict[str, Any], durations: dict[str, Any]) -> dict[str, Any]:
    """The counts, SLA met % and the durations under `duration_seconds`."""
    judged = row["sla_judged"]
    row["sla_met_pct"] = round(100.0 * row["sla_met"] / judged, 3) if judged else None
    row["duration_seconds"] = durations
    return row


def _ordered(rows: list[dict[str, Any]], order: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    def rank(row: dict[str, Any]) -> tuple[str, int, str]:
        names = list(order.get(row["flow"], ()))
        return row["flow"], names.index(row["step"]) if row["step"] in names else len(names), row["step"]
    return sorted(rows, key=rank)
