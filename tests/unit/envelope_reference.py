"""The marshmallow envelope schema the wire was decoded with before msgspec, kept as the reference
that `test_envelope_codec.py` holds `contracts.envelope.decode_fields` to: same entries accepted,
same refused, with the same errors."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from contracts.envelope import COMMAND, CORRELATION_PATTERN, EVENT, NAME_PATTERN, TYPE_PATTERN, Envelope
from contracts.errors import InvalidMessage
from contracts.timefmt import Timestamp


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


def reference_decode(raw: Mapping[Any, Any]) -> Envelope:
    """The old `decode_fields`, word for word."""
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
