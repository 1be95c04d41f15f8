"""Reads the SLA report's sums and exact percentiles from its facts and hourly rollup.

An asked range [start, end) is read as the whole hours inside it, from `report_rollup` and the
deltas not folded yet, and the partial hours at its edges from `report_facts`. A percentile is
percentile_cont's (the value at the 0-based position p*(n-1) of the sorted durations,
interpolated between the two ranks around it): the sums per duration bucket say which bucket
holds a rank and at which offset; the fact at that offset is read through the rank index, so a
percentile costs one short index scan, whatever the number of workflows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, func, select, union_all

from controller.db.tables import FLAGS, report_deltas, report_facts, report_rollup
from controller.reporting.outcomes import Scope
from controller.reporting.sql import moment

SUBJECT = ("flow", "kind", "name", "to_type", "participant")
SUMS = ("rows", "n", *FLAGS)
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
f = report_facts


@dataclass(frozen=True)
class Span:
    """The whole hours of a scope (None: open) and its partial edges as [start, end) ranges."""

    first_hour: int | None
    end_hour: int | None
    edges: tuple[tuple[Any, Any], ...]

    @classmethod
    def of(cls, scope: Scope) -> Span:
        lo = math.ceil(scope.start.timestamp() / 3600) if scope.start else None
        hi = math.floor(scope.end.timestamp() / 3600) if scope.end else None
        if lo is not None and hi is not None and lo >= hi:
            return cls(0, 0, ((scope.start, scope.end),))  # no whole hour inside
        edges = []
        if scope.start is not None and lo is not None and scope.start.timestamp() < lo * 3600:
            edges.append((scope.start, _at_hour(lo)))
        if scope.end is not None and hi is not None and hi * 3600 < scope.end.timestamp():
            edges.append((_at_hour(hi), scope.end))
        return cls(lo, hi, tuple(edges))


def _at_hour(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * 3600, UTC)


def sums(conn: Connection, scope: Scope, kinds: Sequence[str], by: Sequence[str]) -> list[Any]:
    """`SUMS` of the scope's facts of those kinds, grouped by columns of the rollup (`by`)."""
    span = Span.of(scope)
    parts: list[Select[Any]] = []
    for table in (report_rollup, report_deltas):
        where = [table.c.kind.in_(kinds), *_flow(table, scope)]
        if span.first_hour is not None:
            where.append(table.c.hour >= span.first_hour)
        if span.end_hour is not None:
            where.append(table.c.hour < span.end_hour)
        parts.append(select(*(table.c[c] for c in by), *(table.c[s] for s in SUMS)).where(*where))
    for start, end in span.edges:
        parts.append(_fact_sums(kinds, scope, by).where(*_between(start, end)))
    union = union_all(*parts).subquery("counted")
    query = select(*(union.c[c] for c in by), *(func.sum(union.c[s]).label(s) for s in SUMS)
                   ).group_by(*(union.c[c] for c in by))
    return list(conn.execute(query))


def fact_sums(conn: Connection, scope: Scope, kinds: Sequence[str], slot: Any) -> list[Any]:
    """`SUMS` of the scope's facts, grouped by `slot` (an expression over `report_facts`)."""
    query = select(slot.label("slot"), func.count().label("rows"), func.count(f.c.duration_ms).label("n"),
                   *(func.sum(f.c[x]).label(x) for x in FLAGS)).where(
        f.c.kind.in_(kinds), *_flow(f, scope), *_between(scope.start, scope.end)).group_by(slot)
    return list(conn.execute(query))


def _fact_sums(kinds: Sequence[str], scope: Scope, by: Sequence[str]) -> Select[Any]:
    return select(*(f.c[c] for c in by), func.count().label("rows"),
                  func.count(f.c.duration_ms).label("n"), *(func.sum(f.c[x]).label(x) for x in FLAGS)
                  ).where(f.c.kind.in_(kinds), *_flow(f, scope)).group_by(*(f.c[c] for c in by))


def _flow(table: Any, scope: Scope) -> list[ColumnElement[bool]]:
    return [] if scope.flow is None else [table.c.flow == scope.flow]


def _between(start: Any, end: Any) -> list[ColumnElement[bool]]:
    found = []
    if start is not None:
        found.append(f.c.started_at >= moment(start))
    if end is not None:
        found.append(f.c.started_at < moment(end))
    return found


def durations(conn: Connection, scope: Scope, subject: Sequence[str],
              histogram: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """count, p50, p95, p99 and max in seconds of a subject's durations, from its (bucket, count)
    pairs in the scope, sorted by bucket (the untimed bucket left out)."""
    counts = [(b, c) for b, c in histogram if c]
    n = sum(c for _, c in counts)
    found: dict[str, Any] = {"count": n, **{k: None for k in (*QUANTILES, "max")}}
    if n == 0:
        return found
    ranked = _Ranked(conn, scope, subject, counts)
    for name, q in QUANTILES.items():
        position = q * (n - 1)
        low = int(position)
        a, b = ranked.pair(low, low + 1 < n)
        found[name] = round(a / 1000 + (position - low) * (b / 1000 - a / 1000), 6)
    found["max"] = ranked.last() / 1000
    return found


class _Ranked:
    """The values at given ranks of a subject's durations in a scope, read bucket by bucket."""

    def __init__(self, conn: Connection, scope: Scope, subject: Sequence[str],
                 counts: Sequence[tuple[int, int]]) -> None:
        self.conn, self.scope, self.subject, self.counts = conn, scope, subject, counts

    def pair(self, rank: int, with_next: bool) -> tuple[int, int]:
        """The values at `rank` and `rank + 1` (the same twice when there is no next)."""
        i, offset = self._locate(rank)
        size = self.counts[i][1]
        if not with_next:
            [v] = self._read(i, offset, 1, size)
            return v, v
        if offset + 1 < size:
            a, b = self._read(i, offset, 2, size)
            return a, b
        [a] = self._read(i, offset, 1, size)
        [b] = self._read(i + 1, 0, 1, self.counts[i + 1][1])
        return a, b

    def last(self) -> int:
        i = len(self.counts) - 1
        size = self.counts[i][1]
        [v] = self._read(i, size - 1, 1, size)
        return v

    def _locate(self, rank: int) -> tuple[int, int]:
        before = 0
        for i, (_, c) in enumerate(self.counts):
            if rank < before + c:
                return i, rank - before
            before += c
        raise ValueError(f"rank {rank} beyond {before} durations")

    def _read(self, i: int, offset: int, count: int, size: int) -> list[int]:
        """`count` values from `offset` in bucket i (of `size`), scanning from its nearer end."""
        upper = self.counts[i][0]
        lower = self.counts[i - 1][0] if i else None
        where = [*(f.c[c] == v for c, v in zip(SUBJECT, self.subject, strict=True)),
                 f.c.duration_ms <= upper, *_between(self.scope.start, self.scope.end)]
        if lower is not None:
            where.append(f.c.duration_ms > lower)
        from_top = size - offset - count
        if from_top < offset:
            query = select(f.c.duration_ms).where(*where).order_by(f.c.duration_ms.desc())
            values = list(self.conn.execute(query.offset(from_top).limit(count)).scalars())[::-1]
        else:
            query = select(f.c.duration_ms).where(*where).order_by(f.c.duration_ms)
            values = list(self.conn.execute(query.offset(offset).limit(count)).scalars())
        if len(values) != count:  # the sums and the facts disagree: a bug, never a guess
            raise RuntimeError(f"report facts of {self.subject} out of step with their rollup")
        return values
