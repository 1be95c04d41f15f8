"""The envelope of every stream entry: a flat map of strings, validated field by field, decoded once
per entry by msgspec."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta

from contracts.envelope_rules import (
    COMMAND,
    CORRELATION_PATTERN,
    EVENT,
    INT_PATTERN,
    NAME_PATTERN,
    NO_NUL_PATTERN,
    TYPE_PATTERN,
    errors,
    json_object,
)
from contracts.errors import InvalidMessage
from contracts.timefmt import format_ts, parse_ts, utcnow


@dataclass(frozen=True)
class Envelope:
    id: str
    kind: str
    type: str
    version: int
    correlation_id: str
    causation_id: str
    occurred_at: datetime
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    traceparent: str | None = None
    target: str | None = None
    attempt: int | None = None
    deadline: datetime | None = None

    def to_fields(self) -> dict[str, str]:
        """The flat string map written with XADD."""
        out = {
            "id": self.id,
            "kind": self.kind,
            "type": self.type,
            "version": str(self.version),
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "occurred_at": format_ts(self.occurred_at),
            "source": self.source,
            "data": orjson.dumps(self.data).decode(),
        }
        if self.traceparent:
            out["traceparent"] = self.traceparent
        if self.kind == COMMAND:
            out["target"] = self.target or ""
            out["attempt"] = str(self.attempt or 1)
            out["deadline"] = format_ts(self.deadline) if self.deadline else ""
        return out


def new_id() -> str:
    return str(uuid.uuid4())


def new_event(
    message_type: str,
    data: Mapping[str, Any],
    *,
    correlation_id: str,
    source: str,
    causation_id: str | None = None,
    version: int = 1,
    traceparent: str | None = None,
    message_id: str | None = None,
) -> Envelope:
    """An event; without a cause it is a start event and is its own cause."""
    mid = message_id or new_id()
    return Envelope(
        id=mid, kind=EVENT, type=message_type, version=version,
        correlation_id=correlation_id, causation_id=causation_id or mid,
        occurred_at=utcnow(), source=source, data=dict(data), traceparent=traceparent,
    )


def new_command(
    message_type: str,
    data: Mapping[str, Any],
    *,
    target: str,
    correlation_id: str,
    causation_id: str,
    deadline: datetime,
    source: str,
    version: int = 1,
    message_id: str | None = None,
) -> Envelope:
    return Envelope(
        id=message_id or new_id(), kind=COMMAND, type=message_type, version=version,
        correlation_id=correlation_id, causation_id=causation_id, occurred_at=utcnow(),
        source=source, data=dict(data), target=target, attempt=1, deadline=deadline,
    )


# The flat map, its field rules checked by msgspec in C: the fast path of every entry read. What a
# pattern or a length cannot say (a UUID, a timestamp, the JSON of `data`, the fields a command
# needs) `_build` checks. An entry refused here is checked again by `envelope_rules.errors`, the
# slow path, which names every field at fault in the words the marshmallow schema used.


class _Wire(msgspec.Struct, frozen=True):
    id: str
    kind: Literal["event", "command"]
    type: Annotated[str, Meta(pattern=TYPE_PATTERN)]
    version: Annotated[str, Meta(pattern=INT_PATTERN)]
    correlation_id: Annotated[str, Meta(pattern=CORRELATION_PATTERN)]
    causation_id: Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_NUL_PATTERN)]
    occurred_at: str
    source: Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL_PATTERN)]
    data: str
    traceparent: Annotated[str, Meta(max_length=256, pattern=NO_NUL_PATTERN)] | None = None
    target: Annotated[str, Meta(pattern=NAME_PATTERN)] | None = None
    attempt: Annotated[str, Meta(pattern=INT_PATTERN)] | None = None
    deadline: str | None = None


def _build(w: _Wire) -> Envelope:
    """The envelope of fields whose patterns held; ValueError when another rule is broken."""
    uuid.UUID(w.id)
    occurred_at = parse_ts(w.occurred_at)
    deadline = parse_ts(w.deadline) if w.deadline is not None else None  # checked on events too
    data = json_object(w.data)
    if w.kind == EVENT:
        return Envelope(w.id, w.kind, w.type, int(w.version), w.correlation_id, w.causation_id,
                        occurred_at, w.source, data, w.traceparent)
    if w.target is None or w.attempt is None or deadline is None:
        raise ValueError("a command without its target, attempt or deadline")
    return Envelope(w.id, w.kind, w.type, int(w.version), w.correlation_id, w.causation_id,
                    occurred_at, w.source, data, w.traceparent, w.target, int(w.attempt), deadline)


def _text(raw: Mapping[Any, Any]) -> dict[str, str]:
    try:
        try:
            return {k.decode(): v.decode() for k, v in raw.items()}  # as redis-py returns it
        except AttributeError:  # str keys or values: a test's, or an envelope kept as JSON
            return {_str(k): _str(v) for k, v in raw.items()}
    except UnicodeDecodeError as exc:
        raise InvalidMessage({"_entry": [f"not UTF-8: {exc}"]}) from exc


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_fields(raw: Mapping[Any, Any]) -> Envelope:
    """Decode a stream entry (bytes or str keys and values) into an Envelope; InvalidMessage keyed
    by field when it breaks a rule. Unknown fields are ignored: a newer producer may add some."""
    text = _text(raw)
    try:
        return _build(msgspec.convert(text, _Wire))
    except (msgspec.ValidationError, ValueError):
        pass  # refused: which fields, and why, is the slow path's to say
    raise InvalidMessage(errors(text))
