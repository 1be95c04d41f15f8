"""The envelope of every stream entry: a flat map of strings, validated field by field."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from contracts.errors import InvalidMessage
from contracts.timefmt import Timestamp, format_ts, utcnow

TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}\Z"
CORRELATION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}\Z"
EVENT = "event"
COMMAND = "command"


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


class _JsonObject(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, str):
            raise ValidationError("must be a JSON object encoded as a string")
        try:
            decoded = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"not valid JSON: {exc}") from exc
        if not isinstance(decoded, dict):
            raise ValidationError("must be a JSON object")
        return decoded


class _IntString(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not re.fullmatch(r"[1-9][0-9]{0,8}", value):
            raise ValidationError("must be a positive integer written as a string")
        return int(value)


class _UuidString(fields.Str):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            uuid.UUID(text)
        except ValueError as exc:
            raise ValidationError("must be a UUID") from exc
        return text


# PostgreSQL refuses a NUL in text: such an entry would fail every attempt; malformed, it is
# dead-lettered at once.
_NO_NUL = validate.Regexp(r"\A[^\x00]*\Z", error="must not contain a NUL character")


class EnvelopeSchema(Schema):
    """Tolerant of fields it does not know: a newer producer may add some."""

    class Meta:
        unknown = EXCLUDE

    id = _UuidString(required=True)
    kind = fields.Str(required=True, validate=validate.OneOf([EVENT, COMMAND]))
    type = fields.Str(required=True, validate=validate.Regexp(TYPE_PATTERN))
    version = _IntString(required=True)
    correlation_id = fields.Str(required=True, validate=validate.Regexp(CORRELATION_PATTERN))
    causation_id = fields.Str(required=True, validate=[validate.Length(min=1, max=128), _NO_NUL])
    occurred_at = Timestamp(required=True)
    source = fields.Str(required=True, validate=[validate.Length(min=1, max=64), _NO_NUL])
    data = _JsonObject(required=True)
    traceparent = fields.Str(load_default=None, validate=[validate.Length(max=256), _NO_NUL])
    target = fields.Str(load_default=None, validate=validate.Regexp(NAME_PATTERN))
    attempt = _IntString(load_default=None)
    deadline = Timestamp(load_default=None)

    @validates_schema
    def _command_fields(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("kind") != COMMAND:
            return
        missing = {
            name: ["required on a command"]
            for name in ("target", "attempt", "deadline")
            if data.get(name) is None
        }
        if missing:
            raise ValidationError(missing)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Envelope:
        if data["kind"] == "event":
            data.update(target=None, attempt=None, deadline=None)
        return Envelope(**data)


_SCHEMA = EnvelopeSchema()


def decode_fields(raw: Mapping[Any, Any]) -> Envelope:
    """Decode a stream entry (bytes or str keys and values) into an Envelope."""
    text: dict[str, str] = {}
    for key, value in raw.items():
        try:
            k = key.decode() if isinstance(key, bytes) else str(key)
            text[k] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError as exc:
            raise InvalidMessage({"_entry": [f"not UTF-8: {exc}"]}) from exc
    try:
        envelope: Envelope = _SCHEMA.load(text)
    except ValidationError as exc:
        raise InvalidMessage(dict(exc.messages_dict)) from exc
    return envelope
