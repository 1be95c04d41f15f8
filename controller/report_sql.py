"""The dialect-specific SQL of the reports: durations, percentiles and time buckets.

PostgreSQL sorts durations as intervals with `percentile_cont`; SQLite ranks them with window
functions and interpolates between the two neighbouring ranks, the same definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Select,
    Subquery,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY, array

from participants.tables import UtcDateTime

QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_MS_PER_DAY = 86_400_000.0
_UNIX_EPOCH_JULIAN_DAY = 2440587.5


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def moment(value: datetime) -> ColumnElement[datetime]:
    """A bound timestamp stored the way the tables store theirs (so SQLite compares like with like)."""
    return literal(value, UtcDateTime())


def duration(conn: Connection, start: Any, end: Any) -> ColumnElement[Any]:
    """`end - start` in seconds: double precision on PostgreSQL (date_part, not the numeric of
    EXTRACT: sorting doubles is several times faster), exact to the millisecond on SQLite, which
    keeps no finer time."""
    if is_postgres(conn):
        return func.date_part(literal_column("'epoch'"), end - start, type_=Float)
    return func.round((func.julianday(end) - func.julianday(start)) * _MS_PER_DAY) / 1000.0


def greatest(conn: Connection, a: Any, b: Any) -> ColumnElement[Any]:
    """The larger of two non-NULL values (SQLite's scalar max)."""
    return func.greatest(a, b) if is_postgres(conn) else func.max(a, b)


def to_seconds(value: Any) -> float | None:
    """A `duration(...)` as the database returns it, rounded to the microsecond."""
    return None if value is None else round(float(value), 6)


def summarize(conn: Connection, rows: Subquery, groups: Sequence[str], flags: Sequence[str]
              ) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per group of `rows`: how many rows, how many have each boolean column of `flags` true, and
    `n`, `p50`, `p95`, `p99`, `max` of its column `d` (NULL: not timed).

    `rows` computes each flag and duration once per row (`per_row`). The p-th percentile is
    percentile_cont's: with the n values sorted, the value at the 0-based position p*(n-1),
    interpolated linearly between the two ranks around it. PostgreSQL does it all in one scan;
    SQLite counts in one query and ranks in another.
    """
    keys = [rows.c[g] for g in groups]
    counts = [func.count().label("rows"), *(func.count().filter(rows.c[f]).label(f) for f in flags)]
    if is_postgres(conn):
        sorted_once = type_coerce(  # one sort for the three percentiles; NULLs are left out
            func.percentile_cont(array(list(QUANTILES.values()))).within_group(rows.c.d),
            ARRAY(Float))
        inner = select(*keys, *counts, func.count(rows.c.d).label("n"), sorted_once.label("ps"),
                       func.max(rows.c.d).label("max")).group_by(*keys).subquery()
        query = select(*(c for c in inner.c if c.name != "ps"),
                       *(inner.c.ps[i + 1].label(name) for i, name in enumerate(QUANTILES)))
        return _by_key(conn.execute(query), groups)
    found = _by_key(conn.execute(select(*keys, *counts).group_by(*keys)), groups)
    timed = select(rows).where(rows.c.d.is_not(None)).subquery()
    for key, stats in _by_key(conn.execute(_ranked(timed, groups)), groups).items():
        found.setdefault(key, {}).update(stats)
    for stats in found.values():
        stats.setdefault("n", 0)
    return found


def per_row(query: Select[Any]) -> Subquery:
    """`query` as a subquery that PostgreSQL evaluates once per row (OFFSET 0 keeps the planner
    from copying each expression into every aggregate that uses it)."""
    return query.offset(0).subquery("per_row")


def _ranked(durations: Subquery, groups: Sequence[str]) -> Select[Any]:
    keys = [durations.c[g] for g in groups]
    ranked = select(*keys, durations.c.d,
                    func.row_number().over(partition_by=keys, order_by=durations.c.d).label("rn"),
                    func.count().over(partition_by=keys).label("n")).subquery()
    return select(
        *(ranked.c[g] for g in groups), ranked.c.n,
        *(_interpolated(ranked, q).label(name) for name, q in QUANTILES.items()),
        func.max(ranked.c.d).label("max"),
    ).group_by(*(ranked.c[g] for g in groups), ranked.c.n)


def _interpolated(ranked: Subquery, q: float) -> ColumnElement[Any]:
    # The same float arithmetic as PostgreSQL's percentile_cont: position = q * (n - 1).
    position = literal(q, Float) * (ranked.c.n - 1)
    below = cast(position, Integer)  # floor: the position is never negative
    low = func.max(case((ranked.c.rn == below + 1, ranked.c.d)))
    high = func.coalesce(func.max(case((ranked.c.rn == below + 2, ranked.c.d))), low)
    return low + (position - below) * (high - low)


def _by_key(rows: Any, names: Sequence[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    width = len(names)
    return {tuple(r[:width]): {k: v for k, v in r._mapping.items() if k not in names} for r in rows}


def epoch_bucket(conn: Connection, column: Any, width_seconds: int) -> ColumnElement[int]:
    """Which `width_seconds`-wide bucket since 1970 a timestamp falls in."""
    if is_postgres(conn):
        epoch = func.date_part(literal_column("'epoch'"), column, type_=Float)
        return cast(func.floor(epoch / width_seconds), BigInteger)
    epoch_ms = cast(func.round((func.julianday(column) - _UNIX_EPOCH_JULIAN_DAY) * _MS_PER_DAY),
                    BigInteger)
    return epoch_ms.op("/")(width_seconds * 1000)  # integer division on SQLite


def bucket_width(span_seconds: float, max_buckets: int = 60) -> int:
    """The narrowest readable bucket (10 s ... 30 days, then whole days) that keeps a chart within
    `max_buckets`."""
    for width in (10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400):
        if math.ceil(span_seconds / width) <= max_buckets:
            return width
    return math.ceil(span_seconds / max_buckets / 86400) * 86400  # whole days
