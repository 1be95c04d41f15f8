"""The dialect-specific SQL of the reports and metrics: durations, moments and time buckets."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Select,
    Subquery,
    cast,
    func,
    literal,
    literal_column,
)

from participants.runtime.tables import UtcDateTime

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


def per_row(query: Select[Any]) -> Subquery:
    """`query` as a subquery that PostgreSQL evaluates once per row (OFFSET 0 keeps the planner
    from copying each expression into every aggregate that uses it)."""
    return query.offset(0).subquery("per_row")


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
