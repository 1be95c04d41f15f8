"""Payload schemas declared as data: JSON Schema, compiled once with jsonschema-rs, read tolerantly
(unknown fields pass through), failing with marshmallow's ValidationError keyed like marshmallow's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema_rs
from marshmallow import Schema, ValidationError

from contracts.payload_check import marshmallow_json_schema
from contracts.payloads import PayloadSchema

MISSING = "Missing data for required field."  # marshmallow's words, so both kinds read alike
# The `_failed` answer of a declared command, as FailedPayload is for the shipped ones.
FAILED_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["reason"],
    "properties": {"reason": {"type": "string", "minLength": 1}},
}


class JsonPayload:
    """A declared payload schema; `source` names where it was declared (a flow file)."""

    def __init__(self, schema: Mapping[str, Any], source: str = "") -> None:
        """ValueError when `schema` is not a payload schema (`schema_problems`)."""
        problems = schema_problems(schema)
        if problems:
            raise ValueError("; ".join(problems))
        self.schema: dict[str, Any] = json.loads(json.dumps(schema))
        self.source = source
        self._validator = _compile(self.schema)

    def load(self, data: Mapping[str, Any], /) -> dict[str, Any]:
        """`data` as given when it matches; otherwise every error, nested by field."""
        loaded = dict(data)
        if self._validator.is_valid(loaded):  # the hot path: no error objects built
            return loaded
        raise ValidationError(nest(self._validator.iter_errors(loaded)))

    def is_valid(self, data: dict[str, Any], /) -> bool:
        """Whether `load` would accept `data`: the registry's fast check of a declared payload."""
        return self._validator.is_valid(data)

    def __repr__(self) -> str:
        return f"JsonPayload({self.schema!r}, source={self.source!r})"


def schema_problems(schema: Any) -> list[str]:
    """Why `schema` cannot be a payload schema: not plain JSON, not a valid JSON Schema, or not
    an object at the top level."""
    if not isinstance(schema, Mapping):
        return ["must be a JSON Schema: a mapping"]
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return [f"must be plain JSON (quote dates and times): {exc}"]
    try:
        jsonschema_rs.meta.validate(dict(schema))
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(p) for p in exc.instance_path)
        return [f"is not a valid JSON Schema{' at ' + where if where else ''}: {exc.message}"]
    except jsonschema_rs.ReferencingError as exc:
        return [f"is not a valid JSON Schema: {_first_line(exc)}"]
    if schema.get("type") != "object":
        return ["must have `type: object` at the top level: a payload is a JSON object"]
    try:
        _compile(dict(schema))
    except (ValueError, jsonschema_rs.ReferencingError) as exc:  # e.g. a $ref to nowhere
        return [f"cannot be compiled: {_first_line(exc)}"]
    return []


def _compile(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    # offline: a `$ref` is resolved within the schema; loading a flow file fetches nothing.
    return jsonschema_rs.validator_for(schema, validate_formats=True, offline=True)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def nest(errors: Iterable[jsonschema_rs.ValidationError]) -> dict[Any, Any]:
    """marshmallow's shape: the path ['items', 0, 'q'] gives {"items": {0: {"q": [message]}}};
    a missing required property is named itself; an error about the whole payload is `_schema`."""
    messages: dict[Any, Any] = {}
    for error in errors:
        path = list(error.instance_path)
        message = error.message
        if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Required):
            path.append(error.kind.property)
            message = MISSING
        _put(messages, path or ["_schema"], message)
    return messages


def _put(messages: dict[Any, Any], path: list[Any], message: str) -> None:
    node = messages
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if isinstance(child, list):  # the field has errors of its own and inside it: keep both
            child = node[key] = {"_schema": child}
        node = child
    leaf = node.setdefault(path[-1], [])
    if isinstance(leaf, dict):
        leaf = leaf.setdefault("_schema", [])
    if message not in leaf:
        leaf.append(message)


def as_json_schema(schema: PayloadSchema) -> dict[str, Any]:
    """The JSON Schema of a registered payload: a declared one as declared, a shipped marshmallow
    one as apispec converts it (the same converter that writes the OpenAPI document)."""
    if isinstance(schema, JsonPayload):
        return schema.schema
    if isinstance(schema, Schema):
        return marshmallow_json_schema(schema)
    return {"type": "object"}
