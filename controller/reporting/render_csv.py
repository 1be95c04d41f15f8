"""The SLA report as one CSV table for a spreadsheet: a row per flow, step, transition, breach,
slow workflow, time bucket and flow's progress (the last columns: `workflows`, `skus`,
`published`, `done`, `reverted`, with `failed`), told apart by the `level` column; the numbers
are the JSON's. The last rows, of level `definition`, say in `reason` what the column named in
`status` means."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from controller.reporting.definitions import DEFINITIONS

COLUMNS = (
    "level", "flow", "step", "from_type", "to_type", "participant",
    "started", "completed", "compensated", "needs_attention", "failed", "in_flight", "breached",
    "sla_met", "sla_judged", "sla_met_pct",
    "count", "p50_seconds", "p95_seconds", "p99_seconds", "max_seconds",
    "correlation_id", "status", "reason", "deadline_of", "deadline", "late_by_seconds",
    "started_at", "finished_at", "duration_seconds", "bucket_start", "link",
    "workflows", "skus", "published", "done", "reverted",
)
_DURATIONS = {"count": "count", "p50": "p50_seconds", "p95": "p95_seconds", "p99": "p99_seconds",
              "max": "max_seconds"}


def render(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows(report):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def rows(report: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for level, key in (("flow", "flows"), ("step", "steps"), ("transition", "transitions")):
        for item in report[key]:
            yield _flat(level, item)
    for breach in report["breaches"]["items"]:
        yield {"level": "breach", **breach}
    for slow in report["slowest"]:
        yield {"level": "slowest", **slow}
    for point in report["series"]["items"]:
        yield {"level": "series", "bucket_start": point["start"],
               **{k: v for k, v in point.items() if k != "start"}}
    for progress in report.get("progress") or []:
        yield {"level": "progress", **{k: v for k, v in progress.items() if k in COLUMNS}}
    for column, sentence in DEFINITIONS:
        yield {"level": "definition", "status": column, "reason": sentence}


def _flat(level: str, item: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in item.items()
            if k in COLUMNS and k not in ("duration_seconds", "count")}
    for key, column in _DURATIONS.items():
        flat[column] = item["duration_seconds"].get(key)
    return {"level": level, **flat}


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value  # text a participant chose (a name, a type): shown, never run
    return str(value)
