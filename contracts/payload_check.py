"""The fast verdict on a payload: a shipped marshmallow schema converted once to JSON Schema (by
apispec) and compiled with jsonschema-rs, trusted only where it is known to be no more permissive
than marshmallow. A "no" proves nothing: `Registry.check` then asks marshmallow, which stays the
authority on every refusal and its words.

`verbatim_of` goes one step further for `Registry.validate`: a payload the verdict takes, whose
every number is already of its field's Python type, is one that `schema.load` would return equal
to itself, for a schema of fields that load a JSON value as it is (no date, no default, no
renamed key): its loaded form is a copy of it."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema_rs
from apispec import APISpec
from apispec.ext.marshmallow import OpenAPIConverter
from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, missing, validate

Verdict = Callable[[dict[str, Any]], bool]
Path = tuple[str | None, ...]  # None: each element of a list
# A pattern of literals, ASCII ranges, groups and quantifiers: one that Python's `re` and
# jsonschema-rs read alike (no escapes, no `.`, no flags or look-arounds).
_PLAIN_PATTERN = re.compile(r"[\^$\[\]{}(),|?*+A-Za-z0-9_ -]*")
_AMBIGUOUS = re.compile(r"\(\?(?!:)|\{,|\{\}|\[\^?\]")  # a flag or look-around, `{,n}`, `[]`


class Amount(fields.Float):
    """A JSON number: a numeric string or a boolean is a wrong type, not an amount."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("must be a JSON number")
        result: float = super()._deserialize(value, attr, data, **kwargs)
        return result


# The methods of a load: a schema overriding one may refuse what its fields take.
_LOADING = ("load", "_do_load", "_deserialize", "_invoke_load_processors",
            "_invoke_field_validators", "_invoke_schema_validators", "_run_validator")
_NUMBER = frozenset({validate.Range, validate.OneOf})
# The field types the check knows, each with the validators apispec writes for it.
_RULES: dict[type, frozenset[type]] = {
    fields.String: frozenset({validate.Length, validate.Regexp, validate.OneOf}),
    fields.Integer: _NUMBER, fields.Float: _NUMBER, Amount: _NUMBER,
    fields.Boolean: frozenset(), fields.Date: frozenset(),
    fields.List: frozenset({validate.Length}), fields.Nested: frozenset(),
}


def verdict_of(schema: object) -> Verdict | None:
    """A function that says True only of payloads `schema.load` accepts (and False of some it
    accepts too), or None when none is known: a declared schema's own, or a shipped one's."""
    is_valid = getattr(schema, "is_valid", None)  # a declared JsonPayload: already JSON Schema
    if callable(is_valid):
        return is_valid
    if not isinstance(schema, Schema):
        return None
    converted = marshmallow_json_schema(schema)
    ints: list[Path] = []
    if not _tighten(schema, converted, (), ints):
        return None
    try:
        validator = jsonschema_rs.validator_for(converted, validate_formats=True, offline=True)
    except ValueError:  # a pattern jsonschema-rs does not compile: marshmallow decides
        return None

    integral = [_typed(path, int) for path in ints]

    def verdict(data: dict[str, Any]) -> bool:
        try:
            if not validator.is_valid(data):
                return False
        except Exception:  # not JSON (a key not a string, bytes): marshmallow decides
            return False
        return all(is_int(data) for is_int in integral)

    return verdict


def verbatim_of(schema: object) -> Verdict | None:
    """A function that says True only of payloads `schema.load` (a marshmallow schema's) accepts
    and returns unchanged: equal, each value of the same type. None when none is known."""
    if not isinstance(schema, Schema):
        return None
    verdict = verdict_of(schema)
    typed: list[tuple[Path, type]] = []
    if verdict is None or not _as_is(schema, (), typed):
        return None

    checks = [_typed(path, kind) for path, kind in typed]

    def verbatim(data: dict[str, Any]) -> bool:
        return verdict(data) and all(check(data) for check in checks)

    return verbatim


def _as_is(schema: Schema, at: Path, typed: list[tuple[Path, type]]) -> bool:
    """Whether `schema` loads a payload its verdict takes as it is, once the numbers listed in
    `typed` (filled here) hold their field's Python type. Its hooks were refused by `_tighten`."""
    if schema.unknown not in (RAISE, INCLUDE):  # EXCLUDE drops the unknown keys; INCLUDE keeps
        return False                             # them as they are, as the copy does
    for name, field in schema.load_fields.items():
        if field.data_key not in (None, name) or field.attribute not in (None, name):
            return False
        if field.load_default is not missing:
            # A default fills an absent key: as it is only where the key is given.
            if callable(field.load_default):
                return False
            typed.append(((*at, name), _Present))
        if not _field_as_is(field, (*at, name), typed):
            return False
    return True


class _Present:
    """In `typed`: the key must be there (whatever its value), or a load default fills it in."""


def _field_as_is(field: fields.Field, at: Path, typed: list[tuple[Path, type]]) -> bool:
    kind = type(field)
    if isinstance(field, fields.List):  # exactly these types: `_tighten_field` refused others
        return _field_as_is(field.inner, (*at, None), typed)
    if isinstance(field, fields.Nested):
        return _as_is(field.schema, (*at, None) if field.many else at, typed)
    if kind in (fields.Integer, fields.Float, Amount):  # 1.0 loads as 1, 10 as 10.0
        typed.append((at, int if kind is fields.Integer else float))
        return True
    return kind in (fields.String, fields.Boolean)  # a Date loads as a `date`: not as it is


def marshmallow_json_schema(schema: Schema) -> dict[str, Any]:
    """A shipped schema as apispec converts it (the converter that writes the OpenAPI document)."""
    converted: dict[str, Any] = copy.deepcopy(_converter().schema2jsonschema(schema))
    return converted


@cache
def _converter() -> OpenAPIConverter:
    # No name resolver: nested schemas are written inline, each schema stands on its own.
    spec = APISpec("payloads", "1", "3.1.0")
    return OpenAPIConverter("3.1.0", lambda schema: None, spec)


def _tighten(schema: Schema, converted: dict[str, Any], at: Path, ints: list[Path]) -> bool:
    """Make `converted` refuse what `schema` refuses, in place, and list where a strict integer
    must be a Python int; False when `schema` holds something whose JSON Schema is not known to
    be as strict (a hook, a field type or validator not listed here)."""
    if any(schema._hooks.values()) or schema.many or schema.partial or any(
            getattr(type(schema), name) is not getattr(Schema, name) for name in _LOADING):
        return False
    if schema.unknown == RAISE:
        if set(schema.fields) != set(schema.load_fields):  # a dump-only field is unknown on load
            return False
        converted["additionalProperties"] = False
    properties = converted.get("properties", {})
    for name, field in schema.load_fields.items():
        key = field.data_key or name
        if key not in properties or not _tighten_field(field, properties[key], (*at, key), ints):
            return False
    return True


def _tighten_field(field: fields.Field, prop: dict[str, Any], at: Path, ints: list[Path]) -> bool:
    kind = type(field)
    if not _validators_known(field, prop):
        return False
    if isinstance(field, fields.List) and kind is fields.List:
        return _tighten_field(field.inner, prop["items"], (*at, None), ints)
    if isinstance(field, fields.Nested) and kind is fields.Nested:
        if field.only or field.exclude or field.unknown is not None:
            return False
        shape = prop["items"] if field.many else prop
        return _tighten(field.schema, shape, (*at, None) if field.many else at, ints)
    if kind is fields.Integer and getattr(field, "strict", False):
        ints.append(at)  # JSON Schema's integer takes 1.0, a strict Int does not
    elif kind in (fields.Float, Amount):
        prop.setdefault("maximum", sys.float_info.max)  # float() of a larger number overflows
        prop.setdefault("minimum", -sys.float_info.max)
    elif kind is fields.Date:
        if getattr(field, "format", None) not in (None, "iso"):
            return False
        prop["not"] = {"pattern": "^0000"}  # a full-date of year 0: Python's dates start at 1
    elif isinstance(field, fields.Boolean) and field.truthy:
        return True in field.truthy and False in field.falsy
    return True


def _validators_known(field: fields.Field, prop: dict[str, Any]) -> bool:
    """Whether `field` is of a type listed here, and apispec wrote each of its validators at least
    as strictly, once tightened here."""
    known = _RULES.get(type(field))
    kinds = [type(rule) for rule in field.validators]
    if known is None or not set(kinds) <= known or len(kinds) != len(set(kinds)):
        return False  # apispec writes one rule of a kind, not all of them
    for rule in field.validators:
        if isinstance(rule, validate.Range):
            _exclusive(rule, prop)
        elif isinstance(rule, validate.Regexp):
            pattern = rule.regex.pattern
            if (not isinstance(pattern, str) or rule.regex.flags & ~re.UNICODE
                    or not _PLAIN_PATTERN.fullmatch(pattern) or _AMBIGUOUS.search(pattern)):
                return False
            prop["pattern"] = f"^(?:{pattern})"  # re.match anchors every alternative at the start
    return True


def _exclusive(rule: validate.Range, prop: dict[str, Any]) -> None:
    # apispec writes an exclusive bound as an inclusive one: minimum 0 for "more than 0".
    if rule.min is not None and not rule.min_inclusive:
        prop.pop("minimum", None)
        prop["exclusiveMinimum"] = rule.min
    if rule.max is not None and not rule.max_inclusive:
        prop.pop("maximum", None)
        prop["exclusiveMaximum"] = rule.max


def _typed(path: Path, kind: type) -> Callable[[Any], bool]:
    """Whether the values at `path` in a payload JSON Schema accepted are of exactly `kind` (or
    null, or absent: the schema ruled on those; `_Present`: the key is there). Made once per
    path, as nested functions: a payload's check walks no path and slices no tuple."""
    if not path:
        return lambda value: value is None or type(value) is kind
    head, rest = path[0], path[1:]
    if kind is _Present and not rest:
        return lambda value: value is None or head in value
    inner = _typed(rest, kind)
    if head is None:
        return lambda value: value is None or all(map(inner, value))
    absent = kind is not _Present or bool(rest)
    return lambda value: value is None or (inner(value[head]) if head in value else absent)
