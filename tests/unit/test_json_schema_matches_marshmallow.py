"""A differential test: the shipped order_fulfillment payloads written as JSON Schema, as a user
would declare them, accept and refuse the same payloads as the marshmallow schemas do. Payloads
are valid samples mutated by hypothesis (a field removed, retyped, emptied, or one added)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from contracts import order_fulfillment
from contracts.json_payloads import JsonPayload
from contracts.payloads import PayloadSchema, Registry


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


ID = {"type": "string", "minLength": 1, "maxLength": 128}
TEXT = {"type": "string"}
AMOUNT = {"type": "number", "minimum": 0}
CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$"}
QUANTITY = {"type": "integer", "minimum": 1}
ITEM = obj(["product_id", "quantity", "unit_price"], product_id=ID, quantity=QUANTITY, unit_price=AMOUNT)
ORDER_PLACED = obj(["order_id", "customer_id", "items", "total_amount", "currency"], order_id=ID,
                   customer_id=ID, items={"type": "array", "minItems": 1, "items": ITEM},
                   total_amount=AMOUNT, currency=CURRENCY)
FAILED = obj(["order_id", "reason"], order_id=ID, reason={"type": "string", "minLength": 1})
ORDER = obj(["order_id"], order_id=ID)
RESERVED = obj(["order_id", "reservations"], order_id=ID, reservations={"type": "array", "items": obj(
    ["reservation_id", "product_id", "quantity"], reservation_id=TEXT, product_id=TEXT,
    quantity=QUANTITY)})
CHARGED = obj(["order_id", "payment_id", "amount", "currency"], order_id=ID, payment_id=TEXT,
              amount=AMOUNT, currency=CURRENCY)
SCHEDULED = obj(["order_id", "shipment_id", "estimated_delivery"], order_id=ID, shipment_id=TEXT,
                estimated_delivery={"type": "string", "format": "date"})

PLACED = {"order_id": "o-1", "customer_id": "c-1", "items": [
    {"product_id": "SKU-1", "quantity": 2, "unit_price": 5.0},
    {"product_id": "SKU-2", "quantity": 1, "unit_price": 0}], "total_amount": 10, "currency": "EUR"}

# Every type of the reference flow, its JSON Schema and a valid sample.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "order.placed": (ORDER_PLACED, PLACED),
    "inventory.reserve": (ORDER_PLACED, PLACED),  # the orchestrated variants take the order
    "payment.charge": (ORDER_PLACED, PLACED),
    "inventory.reserved": (RESERVED, {"order_id": "o-1", "reservations": [
        {"reservation_id": "r-1", "product_id": "SKU-1", "quantity": 2}]}),
    "payment.charged": (CHARGED, {"order_id": "o-1", "payment_id": "p-1", "amount": 10.5,
                                  "currency": "EUR"}),
    "shipment.scheduled": (SCHEDULED, {"order_id": "o-1", "shipment_id": "s-1",
                                       "estimated_delivery": "2026-11-25"}),
    "notification.sent": (obj(["order_id", "channel"], order_id=ID, channel=TEXT),
                          {"order_id": "o-1", "channel": "email"}),
    "inventory.released": (obj(["order_id", "released_reservations"], order_id=ID,
                               released_reservations={"type": "array", "items": TEXT}),
                           {"order_id": "o-1", "released_reservations": ["r-1", "r-2"]}),
    "payment.refunded": (obj(["order_id", "payment_id", "amount"], order_id=ID, payment_id=TEXT,
                             amount=AMOUNT), {"order_id": "o-1", "payment_id": "p-1", "amount": 3}),
    "shipment.cancelled": (obj(["order_id", "shipment_id"], order_id=ID, shipment_id=TEXT),
                           {"order_id": "o-1", "shipment_id": "s-1"}),
    "payment.refund": (obj(["order_id", "reason"], order_id=ID, reason=TEXT),
                       {"order_id": "o-1", "reason": "step_failed"}),
    "inventory.release": (ORDER, {"order_id": "o-1", "reservations": []}),
    "shipment.cancel": (ORDER, {"order_id": "o-1"}),
    "shipment.schedule": (ORDER, {"order_id": "o-1"}),
}
for _failed in ("inventory.reservation_failed", "payment.charge_failed", "shipment.scheduling_failed",
                "inventory.release_failed", "payment.refund_failed", "shipment.cancel_failed",
                "inventory.reserve_failed", "shipment.schedule_failed"):
    CASES[_failed] = (FAILED, {"order_id": "o-1", "reason": "out of stock"})

# Values a producer could send in place of any field. Left out, for the difference each shows
# (test_the_known_differences): an integral float (1.0), a trailing newline after a pattern's `$`.
POOL = [None, True, False, 0, 1, -1, 2, 10**20, 2.5, -0.5, "", "x", "EUR", "eur", "EURO", "2026-11-25",
        "2026-13-45", "next week", "2026-11-25T10:00:00Z", "s" * 128, "s" * 129, [], ["r-1"], [1],
        {}, {"a": 1}, [{"product_id": "p", "quantity": 1, "unit_price": 1}]]


@cache
def shipped() -> Registry:
    registry = Registry()
    order_fulfillment.register(registry)
    return registry


@cache
def declared(message_type: str) -> JsonPayload:
    return JsonPayload(CASES[message_type][0])


def accepts(schema: PayloadSchema, data: dict[str, Any]) -> bool:
    try:
        schema.load(data)
    except ValidationError:
        return False
    return True


def test_every_shipped_type_of_the_reference_flow_has_a_case() -> None:
    assert set(CASES) == set(shipped().types())


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside `value` a mutation can touch, the root included."""
    found = [at]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*at, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*at, index))
    return found


def mutate(data: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> None:
    value = copy.deepcopy(value)  # the pool's values are shared: never mutated in place
    if not path:
        data["unknown_field"] = value
        return
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    if action == "remove":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent[path[-1]], dict):
        parent[path[-1]]["unknown_field"] = value
    else:
        parent[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, sample: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(sample)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        path = draw(st.sampled_from(paths(data)))
        action = draw(st.sampled_from(["remove", "replace", "add"]))
        mutate(data, path, action, draw(st.sampled_from(POOL)))
    return data


@pytest.mark.parametrize("message_type", sorted(CASES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_json_schema_decides_as_the_marshmallow_schema(message_type: str, data: st.DataObject) -> None:
    payload = data.draw(mutated(CASES[message_type][1]))
    assert accepts(declared(message_type), payload) == accepts(shipped().schema(message_type, 1),
                                                                payload), payload


@pytest.mark.parametrize("message_type", sorted(CASES))
def test_each_valid_sample_is_accepted_by_both(message_type: str) -> None:
    sample = CASES[message_type][1]
    assert accepts(shipped().schema(message_type, 1), sample)
    assert accepts(declared(message_type), sample)


# The table: one named case per rule, accepted (True) or refused (False) by both.
TABLE: list[tuple[str, str, dict[str, Any], bool]] = [
    ("order.placed", "a boolean quantity", {"items": [{"product_id": "p", "quantity": True,
                                                       "unit_price": 1}]}, False),
    ("order.placed", "a numeric string amount", {"total_amount": "10"}, False),
    ("order.placed", "a boolean amount", {"total_amount": False}, False),
    ("order.placed", "a zero quantity", {"items": [{"product_id": "p", "quantity": 0,
                                                    "unit_price": 1}]}, False),
    ("order.placed", "no items", {"items": []}, False),
    ("order.placed", "a lower-case currency", {"currency": "eur"}, False),
    ("order.placed", "an unknown field", {"coupon": "WINTER"}, True),
    ("order.placed", "an unknown field in an item", {"items": [{"product_id": "p", "quantity": 1,
                                                                "unit_price": 1, "gift": True}]}, True),
    ("order.placed", "an integer amount", {"total_amount": 10}, True),
    ("order.placed", "an order id of 129 characters", {"order_id": "o" * 129}, False),
    ("shipment.scheduled", "a date that is not one", {"estimated_delivery": "2026-02-30"}, False),
    ("shipment.scheduled", "a timestamp for a date", {"estimated_delivery": "2026-11-25T10:00:00Z"},
     False),
    ("payment.charge_failed", "an empty reason", {"reason": ""}, False),
    ("payment.refund", "an empty reason", {"reason": ""}, True),
    ("inventory.released", "a number among the ids", {"released_reservations": ["r-1", 2]}, False),
]


@pytest.mark.parametrize(("message_type", "case", "change", "valid"), TABLE,
                         ids=[f"{t}: {c}" for t, c, _, _ in TABLE])
def test_a_table_of_cases_both_decide_alike(message_type: str, case: str, change: dict[str, Any],
                                            valid: bool) -> None:
    payload = {**copy.deepcopy(CASES[message_type][1]), **change}
    assert accepts(shipped().schema(message_type, 1), payload) is valid, "marshmallow"
    assert accepts(declared(message_type), payload) is valid, "JSON Schema"


# Where the two languages do differ, so that a user porting a marshmallow schema knows:
# (type, change, marshmallow accepts it, JSON Schema accepts it).
KNOWN = [
    # JSON Schema: 1.0 is an integer (a number with no fractional part); marshmallow's strict Int
    # wants a Python int.
    ("order.placed", {"items": [{"product_id": "p", "quantity": 1.0, "unit_price": 1}]}, False, True),
    # Python's `re.match` lets `$` match before a final newline; ECMA-262's (JSON Schema's) does not.
    ("order.placed", {"currency": "EUR\n"}, True, False),
]


@pytest.mark.parametrize(("message_type", "change", "by_marshmallow", "by_json_schema"), KNOWN)
def test_the_known_differences(message_type: str, change: dict[str, Any], by_marshmallow: bool,
                               by_json_schema: bool) -> None:
    payload = {**copy.deepcopy(CASES[message_type][1]), **change}
    assert accepts(shipped().schema(message_type, 1), payload) is by_marshmallow
    assert accepts(declared(message_type), payload) is by_json_schema
