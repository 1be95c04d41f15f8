"""The wire's timestamps: `format_ts` writes RFC 3339 UTC to the millisecond, `parse_ts` reads it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from contracts.timefmt import format_ts, parse_ts

offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets)


def spelled(d: datetime) -> str:
    """The expected text, field by field."""
    u = d.astimezone(UTC)
    return (f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}."
            f"{u.microsecond // 1000:03d}Z")


@given(moments)
def test_any_aware_moment_is_written_in_utc_to_the_millisecond_and_read_back(d: datetime) -> None:
    text = format_ts(d)
    assert text == spelled(d)
    assert parse_ts(text) == d.astimezone(UTC).replace(microsecond=d.microsecond // 1000 * 1000)


def test_a_naive_moment_is_taken_as_utc_and_a_year_below_1000_has_four_digits() -> None:
    assert format_ts(datetime(2026, 11, 22, 10, 0, 0, 123999)) == "2026-11-22T10:00:00.123Z"
    assert format_ts(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000Z"
