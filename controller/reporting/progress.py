"""The SLA report's `progress`: per flow that reports progress (its `progress_on` events, e.g.
bulk_repricing's SKU counts), the sums over the workflows in scope of each one's latest counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select

from controller.db.tables import messages
from controller.domain import progress
from controller.reporting.outcomes import Scope, w


def progress_rows(conn: Connection, scope: Scope,
                  progress_on: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One row per flow with `progress_on` and a workflow in scope: `flow`, `workflows` (those
    that reported any progress) and the sum of each count their latest progress event carried
    (domain/progress.py).
    Reads those few events only (a bulk flow has few workflows, each a handful of them)."""
    types = sorted({t for ts in progress_on.values() for t in ts})
    flows = [f for f in progress_on if scope.flow in (None, f)]
    if not types or not flows:
        return []
    query = (select(w.c.flow, messages.c.correlation_id, messages.c.occurred_at, messages.c.seq,
                    messages.c.data)
             .join(w, w.c.correlation_id == messages.c.correlation_id)
             .where(messages.c.type.in_(types), w.c.flow.in_(flows), *scope.where()))
    reports: dict[tuple[str, str], list[tuple[Any, int, Any]]] = {}
    for row in conn.execute(query):
        reports.setdefault((row.flow, row.correlation_id), []).append(
            (row.occurred_at, row.seq, row.data))
    sums: dict[str, dict[str, Any]] = {}
    for (flow, _), found in reports.items():
        counts = progress.latest(found)
        if counts is None:
            continue
        into = sums.setdefault(flow, {"flow": flow, "workflows": 0})
        into["workflows"] += 1
        for name, value in counts.items():
            if isinstance(value, int):
                into[name] = into.get(name, 0) + value
    return [sums[f] for f in sorted(sums)]
