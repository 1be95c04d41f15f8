"""The rules of each envelope field, and the slow path of a refused entry: every field at fault,
named, in the words the marshmallow envelope schema used (tests and dead letters read them)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from contracts.timefmt import parse_ts

TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}\Z"
CORRELATION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}\Z"
INT_PATTERN = r"^[1-9][0-9]{0,8}\Z"  # a positive integer written as a string: version, attempt
# PostgreSQL refuses a NUL in text: such an entry would fail every attempt; malformed, it is
# dead-lettered at once.
NO_NUL_PATTERN = r"\A[^\x00]*\Z"
EVENT = "event"
COMMAND = "command"
MISSING = "Missing data for required field."
_NO_PATTERN = "String does not match expected pattern."
_NUL = "must not contain a NUL character"

Check = Callable[[str], list[str]]


def json_object(text: str) -> dict[str, Any]:
    """`data`: a JSON object encoded as a string; ValueError saying why not."""
    try:
        decoded = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise ValueError("must be a JSON object")
    return decoded


def _pattern(pattern: str, message: str = _NO_PATTERN) -> Check:
    compiled = re.compile(pattern)
    return lambda value: [] if compiled.match(value) else [message]


def _text(low: int | None, high: int) -> Check:
    def check(value: str) -> list[str]:
        out = []
        if low is not None and not low <= len(value) <= high:
            out.append(f"Length must be between {low} and {high}.")
        elif low is None and len(value) > high:
            out.append(f"Longer than maximum length {high}.")
        if "\x00" in value:
            out.append(_NUL)
        return out
    return check


def _raises(parse: Callable[[str], Any], message: str | None = None) -> Check:
    def check(value: str) -> list[str]:
        try:
            parse(value)
        except ValueError as exc:
            return [message or str(exc)]
        return []
    return check


_INT = _pattern(INT_PATTERN, "must be a positive integer written as a string")
_TS = _raises(parse_ts)
# In the order of the schema's fields, as its errors were; True: required.
_FIELDS: list[tuple[str, bool, Check]] = [
    ("id", True, _raises(uuid.UUID, "must be a UUID")),
    ("kind", True, lambda v: [] if v in (EVENT, COMMAND) else ["Must be one of: event, command."]),
    ("type", True, _pattern(TYPE_PATTERN)),
    ("version", True, _INT),
    ("correlation_id", True, _pattern(CORRELATION_PATTERN)),
    ("causation_id", True, _text(1, 128)),
    ("occurred_at", True, _TS),
    ("source", True, _text(1, 64)),
    ("data", True, _raises(json_object)),
    ("traceparent", False, _text(None, 256)),
    ("target", False, _pattern(NAME_PATTERN)),
    ("attempt", False, _INT),
    ("deadline", False, _TS),
]


def errors(text: dict[str, str]) -> dict[str, object]:
    """Every field of the entry at fault, with its messages; the command fields missing on a
    command only when every field present is sound."""
    found: dict[str, object] = {}
    for name, required, check in _FIELDS:
        if name not in text:
            if required:
                found[name] = [MISSING]
            continue
        messages = check(text[name])
        if messages:
            found[name] = messages
    if not found and text["kind"] == COMMAND:
        found = {n: ["required on a command"] for n in ("target", "attempt", "deadline") if n not in text}
    return found
