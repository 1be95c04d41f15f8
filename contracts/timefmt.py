"""RFC 3339 UTC timestamps with milliseconds, the only time format on the wire, and the one parser
(and marshmallow field) that every timestamp read from outside goes through."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from marshmallow import ValidationError, fields

# RFC 3339 section 5.6 `date-time`, exactly: not the ISO 8601 variants that datetime.fromisoformat
# also takes (basic format, week dates, hour-only times, comma fractions, a space for the T).
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
# What Baton writes (`format_ts`): parsed by the C parser of datetime, which takes this form as RFC
# 3339 does. Anything else, or a value it refuses, goes the long way.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
EXAMPLE = "2026-11-22T10:00:00.000Z"


def utcnow() -> datetime:
    """Now, to the millisecond: the wire's precision, so a round trip is lossless."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_ts(moment: datetime) -> str:
    """`2026-11-22T10:00:00.123Z`; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat truncates to the millisecond as the wire wants, in 2/3 of strftime's time, and
    # pads a year below 1000 to four digits as RFC 3339 asks (strftime's %Y does not on glibc).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 date-time (its offset is required) into an aware UTC datetime."""
    if _CANONICAL.fullmatch(text):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass  # month 13, second 60...: the long way says so in its words
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:64]!r} is not an RFC 3339 date-time with an offset, such as {EXAMPLE}")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micro = int((match[7] or "")[:6].ljust(6, "0"))  # beyond microseconds: cut, not rounded
    try:
        offset = timedelta()
        if match[8]:
            if int(match[9]) > 23 or int(match[10]) > 59:
                raise ValueError("an offset is at most 23:59")
            offset = timedelta(hours=int(match[9]), minutes=int(match[10]))
            offset = -offset if match[8] == "-" else offset
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
    except ValueError as exc:  # month 13, hour 25, February 30, an offset of 24 hours...
        raise ValueError(f"{text!r} is not a valid date-time: {exc}") from exc  # short: it matched
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise ValueError(f"{text!r} is outside years 1 to 9999 in UTC") from None


class Timestamp(fields.AwareDateTime):
    """An API field: RFC 3339 through `parse_ts`, documented as `date-time` like its base."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=None, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise ValidationError(f"must be an RFC 3339 date-time string such as {EXAMPLE}")
        try:
            return parse_ts(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
