"""The dialect-specific SQL of the reports: durations, percentiles and time buckets.

PostgreSQL sorts durations as intervals with `percentile_cont`; SQLite ranks them with window
functions and interpolates between the two neighbouring ranks, the same definition.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Interval,
    Select,
    Subquery,
    case,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import array

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
    """`end - start`: an interval on PostgreSQL (sorted and compared without any arithmetic), a
    number of seconds on SQLite, exact to the millisecond (SQLite keeps no finer time)."""
    if is_postgres(conn):
        return cast(end - start, Interval)
    return func.round((func.julianday(end) - func.julianday(start)) * _MS_PER_DAY) / 1000.0


def span(conn: Connection, seconds: float) -> ColumnElement[Any]:
    """A constant comparable with `duration(...)`."""
    if is_postgres(conn):
        return literal(timedelta(seconds=seconds), Interval)
    return literal(seconds, Float)


def to_seconds(value: Any) -> float | None:
    """A `duration(...)` as the database returns it, in seconds rounded to the microsecond."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return round(seconds, 6)


def percentiles(conn: Connection, source: Subquery, groups: list[str]) -> Select[Any]:
    """Per group of `source`: `n`, `p50`, `p95`, `p99` and `max` of its column `d`.

    The p-th percentile is percentile_cont's: with the n values sorted, the value at the 0-based
    position p*(n-1), interpolated linearly between the two ranks around it.
    """
    keys = [source.c[g] for g in groups]
    d = source.c.d
    if is_postgres(conn):
        sorted_once = func.percentile_cont(array(list(QUANTILES.values()))).within_group(d)
        inner = select(*keys, func.count(d).label("n"), sorted_once.label("ps"),
                       func.max(d).label("max")).group_by(*keys).subquery()
        return select(*(inner.c[g] for g in groups), inner.c.n,
                      *(inner.c.ps[i + 1].label(name) for i, name in enumerate(QUANTILES)),
                      inner.c.max)
    ranked = select(*keys, d, func.row_number().over(partition_by=keys, order_by=d).label("rn"),
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


def epoch_bucket(conn: Connection, column: Any, width_seconds: int) -> ColumnElement[int]:
    """Which `width_seconds`-wide bucket since 1970 a timestamp falls in."""
    if is_postgres(conn):
        return cast(func.floor(func.extract("epoch", column) / width_seconds), BigInteger)
    epoch_ms = cast(func.round((func.julianday(column) - _UNIX_EPOCH_JULIAN_DAY) * _MS_PER_DAY),
                    BigInteger)
    return epoch_ms.op("/")(width_seconds * 1000)  # integer division on SQLite


def bucket_width(span_seconds: float, max_buckets: int = 60) -> int:
    """The narrowest readable bucket (10 s ... 30 days) that keeps a chart within `max_buckets`."""
    for width in (10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400):
        if math.ceil(span_seconds / width) <= max_buckets:
            return width
    return 30 * 86400
