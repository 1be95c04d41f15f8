"""The SLA report's summary as a plain-text table for a terminal: per flow, then per step, then
the progress of the flows that report it (bulk_repricing's SKU counts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.reporting.definitions import JUDGED, PROGRESS, PROGRESS_COUNTS, SLA_MET_PCT

_HEAD = ("", "started", "completed", "compensated", "breached", "SLA met %", "p50 s", "p95 s",
         "p99 s")


def summary(report: dict[str, Any]) -> str:
    rows = []
    for flow in report["flows"]:
        rows.append(_row(flow["flow"], flow))
        rows += [_row(f'  {s["step"]}', s) for s in report["steps"] if s["flow"] == flow["flow"]]
    if not rows:
        return "No workflow started in this range.\n"
    lines = _aligned(_HEAD, rows)
    progress = report.get("progress") or []
    if progress:
        head = ("progress", "workflows", *PROGRESS_COUNTS)
        lines += ["", *_aligned(head, [(p["flow"], *(str(p.get(k, 0)) for k in head[1:]))
                                       for p in progress]), PROGRESS]
    return "\n".join([*lines, "", SLA_MET_PCT, JUDGED]) + "\n"


def _aligned(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True))).rstrip() for r in [head, *rows]]


def _row(name: str, item: dict[str, Any]) -> tuple[str, ...]:
    d = item["duration_seconds"]
    pct = item["sla_met_pct"]
    return (name, str(item["started"]), str(item["completed"]), str(item["compensated"]),
            str(item["breached"]), "—" if pct is None else f"{pct:.1f}",
            *("—" if d[k] is None else f"{d[k]:.3f}" for k in ("p50", "p95", "p99")))
