"""A differential test: `Registry.check` raises whatever `Registry.validate` raises, the same
errors, and nothing when `validate` returns, for every registered type of the reference flows
(the shipped marshmallow schemas and bulk repricing's declared ones). Payloads are valid samples
mutated by hypothesis, with the values where JSON Schema and marshmallow are known to part."""

from __future__ import annotations

import copy
import math
from datetime import date
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from config.flows import load_catalog
from contracts.errors import ContractError, InvalidMessage
from contracts.json_payloads import JsonPayload
from contracts.payload_check import verbatim_of, verdict_of
from contracts.payloads import Payload, Registry
from contracts.registry import default_registry
from tests.unit.test_json_schema_matches_marshmallow import CASES, mutate, paths

CHANGE = {"change_id": "c-1", "product_id": "P-1"}
PROPOSED = {**CHANGE, "current_price": 10.0, "proposed_price": 11, "unit_cost": 6.0, "currency": "EUR",
            "competitor_price": 12.5}
APPLIED = {**CHANGE, "price": 11.0, "currency": "EUR", "revision": 3}
CHANGED = {"flow": "order_fulfillment", "flow_version": 1, "correlation_id": "x", "status": "completed",
           "reason": None}
SHIPPED: dict[str, dict[str, Any]] = {
    **{message_type: sample for message_type, (_, sample) in CASES.items()},
    "price.change_proposed": PROPOSED, "price.evaluate": PROPOSED,
    "price.evaluated": {**CHANGE, "verdict": "review", "violations": [
        {"rule": "margin", "severity": "soft", "detail": "below 10 %"}]},
    "price.approved": CHANGE, "price.rejected": CHANGE,
    "price.publish": {**CHANGE, "proposed_price": 11.0, "currency": "EUR"},
    "price.published": {**APPLIED, "previous_price": 10.0},
    "price.revert": {**CHANGE, "reason": "canary failed"},
    "price.reverted": {**APPLIED, "restored": True},
    "catalog.price_updated": APPLIED, "search.price_indexed": APPLIED,
    **{t: {**CHANGE, "reason": "gone"} for t in ("catalog.price_update_failed", "price.evaluate_failed",
                                                  "price.publish_failed", "price.revert_failed")},
    **{f"workflow.{s}": CHANGED for s in ("completed", "compensating", "compensated", "needs_attention")},
}
# Any field's value, the known partings included: 1.0 for a strict int, True for a number, a
# number past a float's range, 0 against "more than 0", dates that are not (or not Python's).
POOL = [None, True, False, 0, 1, -1, 1.0, 2.5, -0.5, 10**20, 10**400, math.nan, math.inf, "", "x",
        "EUR", "eur", "EUR\n", "EURO", " EUR", "2026-11-25", "2026-02-30", "2026-1-5", "0000-01-01",
        "20261125", "2024-02-29", "accept", "soft", "s" * 129, [], ["r-1"], [1], {}, {"a": 1},
        [{"product_id": "p", "quantity": 1, "unit_price": 1}]]


@cache
def registry() -> Registry:
    """The shipped types and every type the shipped flow files declare."""
    reg = default_registry()
    load_catalog(reg)
    return reg


def declared_sample(schema: dict[str, Any]) -> Any:
    """A payload a declared JSON Schema takes: its required properties, each of its type."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: declared_sample(schema["properties"][k]) for k in schema.get("required", [])}
    if kind == "array":
        return [declared_sample(schema["items"])] * schema.get("minItems", 1)
    if kind == "string":
        return "EUR" if "pattern" in schema else "abc"
    return 1 if kind == "integer" else 5.5


def sample(message_type: str) -> dict[str, Any]:
    schema = registry().schema(message_type, 1)
    if isinstance(schema, JsonPayload):
        found: dict[str, Any] = declared_sample(schema.schema)
        return found
    return SHIPPED[message_type]


def outcome(method: Any, message_type: str, version: int, data: Any) -> Any:
    """None, or what was raised: its class, and the errors by field of an InvalidMessage."""
    try:
        method(message_type, version, data)
    except ContractError as exc:
        return type(exc), str(exc), exc.errors if isinstance(exc, InvalidMessage) else None
    return None


def agree(message_type: str, data: dict[str, Any]) -> Any:
    reg = registry()
    expected = outcome(reg.validate, message_type, 1, copy.deepcopy(data))
    assert outcome(reg.check, message_type, 1, data) == expected, data
    return expected


def test_every_type_has_a_sample_and_a_fast_verdict_that_takes_it() -> None:
    for message_type in registry().types():
        schema = registry().schema(message_type, 1)
        verdict = verdict_of(schema)
        assert verdict is not None, message_type
        assert verdict(sample(message_type)), message_type  # the hot path is the fast one
        assert agree(message_type, sample(message_type)) is None


@st.composite
def mutated(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths(data)))
        mutate(data, path, draw(st.sampled_from(["remove", "replace", "add"])), draw(st.sampled_from(POOL)))
    return data


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_check_raises_as_validate_raises_on_mutated_samples(data: st.DataObject) -> None:
    message_type = data.draw(st.sampled_from(registry().types()))
    agree(message_type, data.draw(mutated(sample(message_type))))


# Each place the converted JSON Schema was more permissive than marshmallow, and is tightened.
PARTINGS = [
    ("order.placed", {"items": [{"product_id": "p", "quantity": 1.0, "unit_price": 1}]}),
    ("price.published", {"revision": 2.0}),
    ("price.change_proposed", {"proposed_price": 0}),  # "more than 0"; apispec wrote "at least 0"
    ("payment.charged", {"amount": 10**400}),  # float() of it overflows
    ("shipment.scheduled", {"estimated_delivery": "0000-12-31"}),  # no year 0 in Python
]


@pytest.mark.parametrize(("message_type", "change"), PARTINGS)
def test_where_json_schema_was_looser_check_refuses_as_marshmallow(message_type: str,
                                                                   change: dict[str, Any]) -> None:
    payload = {**SHIPPED[message_type], **change}
    verdict = verdict_of(registry().schema(message_type, 1))
    assert verdict is not None and not verdict(payload)
    assert agree(message_type, payload) is not None


def test_unknown_types_and_versions_raise_alike() -> None:
    assert agree("no.such_type", {})[0].__name__ == "UnknownMessageType"
    reg = registry()
    expected = outcome(reg.validate, "order.placed", 9, {})
    assert outcome(reg.check, "order.placed", 9, {}) == expected
    assert expected[0].__name__ == "UnsupportedVersion"


class Hooked(Payload):
    a = fields.Str(required=True)

    @validates_schema
    def _never(self, data: dict[str, Any], **kwargs: Any) -> None:
        pass


class Loaded(Payload):
    a = fields.Str()

    def load(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        return super().load(data, *args, **kwargs)


class Unanchored(Payload):
    code = fields.Str(required=True, validate=validate.Regexp(r"[A-Z]{3}|x"))


@pytest.mark.parametrize("schema", [
    Hooked(),  # a hook: JSON Schema cannot say what it checks
    Loaded(),  # nor can it say what an overridden load does
    type("Escaped", (Payload,), {"a": fields.Str(validate=validate.Regexp(r"^\d+$"))})(),
    type("Other", (Payload,), {"a": fields.Decimal()})(),
    type("Twice", (Payload,), {"a": fields.Str(validate=[validate.Length(max=3), validate.Length(min=2)])})(),
    type("Truthy", (Payload,), {"a": fields.Bool(truthy={"yes"}, falsy={"no"})})(),
    type("NoCompile", (Payload,), {"a": fields.Str(validate=validate.Regexp(r"^a{x"))})(),
    type("EmptyClass", (Payload,), {"a": fields.Str(validate=validate.Regexp(r"^[]a]"))})(),
    type("DateRange", (Payload,), {"a": fields.Date(validate=validate.Range(min=date(2026, 1, 1)))})(),
    type("DateChoice", (Payload,), {"a": fields.Date(validate=validate.OneOf([date(2026, 1, 1)]))})(),
    type("DumpOnly", (Schema,), {"a": fields.Str(dump_only=True)})(),
], ids=["hook", "load", "escape", "decimal", "two-lengths", "truthy", "no-compile", "empty-class",
        "date-range", "date-choice", "dump-only-raise"])
def test_a_schema_the_check_cannot_vouch_for_is_left_to_marshmallow(schema: Schema) -> None:
    assert verdict_of(schema) is None


def test_a_pattern_is_matched_from_the_start_as_marshmallow_matches() -> None:
    reg = Registry()
    reg.register("t.x", Unanchored())
    for code in ("EUR", "EURx", "xEUR", "eEUR", "x", "ab"):
        expected = outcome(reg.validate, "t.x", 1, {"code": code})
        assert outcome(reg.check, "t.x", 1, {"code": code}) == expected, code


class Strict(Schema):  # marshmallow's default: an unknown field is refused, here and nested
    inner = fields.Nested(Unanchored)
    many = fields.List(fields.Nested(type("Leaf", (Schema,), {"n": fields.Int(strict=True)})))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["inner", "many", "other"]), st.one_of(
    st.sampled_from(POOL), st.fixed_dictionaries({}, optional={"code": st.sampled_from(POOL),
                                                             "other": st.just(1)}),
    st.lists(st.fixed_dictionaries({}, optional={"n": st.sampled_from(POOL), "m": st.just(1)}),
             max_size=2)), max_size=3))
def test_a_schema_refusing_unknown_fields_is_checked_alike(data: dict[str, Any]) -> None:
    reg = Registry()
    reg.register("t.strict", Strict())
    assert verdict_of(Strict()) is not None
    assert outcome(reg.check, "t.strict", 1, data) == outcome(reg.validate, "t.strict", 1, data), data


# -- validate's copy of a payload that loads as it is ---------------------------------------------

def as_loaded(message_type: str) -> dict[str, Any]:
    """The sample as its schema loads it: each number of its field's type (a float field's a
    float), the form in which a payload loads as it is. Its dates stay text."""
    schema = registry().schema(message_type, 1)
    assert isinstance(schema, Schema)
    form: dict[str, Any] = schema.dump(schema.load(copy.deepcopy(sample(message_type))))
    return form


def same(a: Any, b: Any) -> bool:
    """Equal, and each value of the same type (10 and 10.0 are not the same here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


def loaded(message_type: str, data: Any) -> Any:
    """What marshmallow's load of the schema returns, or the errors it raises."""
    try:
        return registry().schema(message_type, 1).load(copy.deepcopy(data))
    except ValidationError as exc:
        return ("refused", {f"data.{k}": v for k, v in exc.messages_dict.items()})


def validated(message_type: str, data: Any) -> Any:
    try:
        return registry().validate(message_type, 1, data)
    except InvalidMessage as exc:
        return ("refused", exc.errors)


def test_a_float_valued_payload_of_the_hot_types_is_copied_and_loads_the_same() -> None:
    hot = ["order.placed", "inventory.reserved", "payment.charged", "notification.sent",
           "workflow.completed", "price.published"]
    for message_type in hot:
        payload = as_loaded(message_type)
        verbatim = verbatim_of(registry().schema(message_type, 1))
        assert verbatim is not None and verbatim(payload), (message_type, payload)
        got = registry().validate(message_type, 1, payload)
        assert same(got, loaded(message_type, payload)), (message_type, got)
        assert got is not payload


def test_a_number_not_yet_of_its_fields_type_is_loaded_by_marshmallow() -> None:
    order = as_loaded("order.placed")
    order["total_amount"] = 20  # an Amount: loads as 20.0
    verbatim = verbatim_of(registry().schema("order.placed", 1))
    assert verbatim is not None and not verbatim(order)
    assert type(registry().validate("order.placed", 1, order)["total_amount"]) is float
    changed = {**CHANGED}
    del changed["reason"]  # a load default fills it in
    assert registry().validate("workflow.completed", 1, changed)["reason"] is None


def test_the_copy_is_the_callers_own() -> None:
    order = as_loaded("order.placed")
    got = registry().validate("order.placed", 1, order)
    got["items"][0]["product_id"] = "changed"
    assert order["items"][0]["product_id"] != "changed"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_validate_returns_what_marshmallow_loads_on_mutated_samples(data: st.DataObject) -> None:
    message_type = data.draw(st.sampled_from(registry().types()))
    base = sample(message_type)
    if data.draw(st.booleans()) and not isinstance(registry().schema(message_type, 1), JsonPayload):
        base = as_loaded(message_type)
    payload = data.draw(mutated(base))
    assert same(validated(message_type, payload), loaded(message_type, payload)), payload


@pytest.mark.parametrize("schema", [
    type("Dated", (Payload,), {"a": fields.Date()})(),  # a date loads as a `date`
    type("Keyed", (Payload,), {"a": fields.Str(data_key="b")})(),  # the key is renamed
    type("Moved", (Payload,), {"a": fields.Str(attribute="b")})(),
    type("Made", (Payload,), {"a": fields.Str(load_default=lambda: "x")})(),
    type("Dropping", (Schema,), {"a": fields.Str(), "Meta": type("Meta", (), {"unknown": "exclude"})})(),
    Hooked(),
], ids=["date", "data-key", "attribute", "callable-default", "exclude", "hook"])
def test_a_schema_whose_load_changes_a_payload_is_always_loaded(schema: Schema) -> None:
    assert verbatim_of(schema) is None
