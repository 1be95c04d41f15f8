"""The wire envelope and the payload registry: round trips, and every rejection naming its field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from marshmallow import Schema, ValidationError, fields

from contracts.api import DeadlineBody, ListQuery
from contracts.envelope import COMMAND, EVENT, Envelope, decode_fields, new_command, new_event
from contracts.errors import InvalidMessage, UnknownMessageType, UnsupportedVersion
from contracts.payloads import FailedPayload, Payload, Registry, failed_type
from contracts.registry import default_registry
from contracts.reports_api import SlaQuery

AT = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def _cid() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


def _event(**overrides: Any) -> dict[str, str]:
    fields_ = {
        "id": str(uuid.uuid4()),
        "kind": "event",
        "type": "payment.charged",
        "version": "1",
        "correlation_id": _cid(),
        "causation_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-22T10:00:00.123Z",
        "source": "payment",
        "data": '{"order_id": "o-1", "payment_id": "p-1", "amount": 12.5, "currency": "EUR"}',
    }
    fields_.update(overrides)
    return fields_


def _command(**overrides: Any) -> dict[str, str]:
    fields_ = _event(kind="command", type="payment.refund", source="controller",
                     data='{"order_id": "o-1", "reason": "step_failed"}')
    fields_.update(target="payment", attempt="1", deadline="2026-11-22T10:01:00.000Z")
    fields_.update(overrides)
    return fields_


def _rejected(raw: dict[Any, Any]) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        decode_fields(raw)
    return caught.value


# -- round trips -----------------------------------------------------------------------------------


def test_an_event_survives_to_fields_and_decode_fields() -> None:
    start = new_event("order.placed", {"order_id": "o-1", "items": [{"q": 1}]},
                      correlation_id=_cid(), source="controller", traceparent="00-abc-def-01")
    assert start.causation_id == start.id  # a start event is its own cause
    wire = start.to_fields()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in wire.items())
    assert wire["kind"] == "event" and wire["version"] == "1"
    assert not {"target", "attempt", "deadline"} & set(wire)
    assert decode_fields(wire) == start

    reply = new_event("payment.charged", {"amount": 1.5}, correlation_id=start.correlation_id,
                      causation_id=start.id, source="payment", version=3)
    assert decode_fields(reply.to_fields()) == reply
    assert "traceparent" not in reply.to_fields()


def test_an_event_survives_as_bytes_as_redis_returns_it() -> None:
    sent = new_event("payment.charged", {"amount": 1.5, "note": "é"}, correlation_id=_cid(),
                     source="payment", causation_id=str(uuid.uuid4()))
    raw = {k.encode(): v.encode() for k, v in sent.to_fields().items()}
    assert decode_fields(raw) == sent


def test_a_command_survives_the_round_trip_with_target_attempt_and_deadline() -> None:
    sent = new_command("payment.refund", {"order_id": "o-1", "reason": "sla_breached"},
                       target="payment", correlation_id=_cid(), causation_id=str(uuid.uuid4()),
                       deadline=AT + timedelta(seconds=30), source="controller")
    wire = sent.to_fields()
    assert (wire["kind"], wire["target"], wire["attempt"]) == ("command", "payment", "1")
    assert wire["deadline"] == "2026-11-22T10:00:30.123Z"
    back = decode_fields(wire)
    assert back == sent
    assert (back.kind, back.target, back.attempt, back.deadline) == (
        COMMAND, "payment", 1, AT + timedelta(seconds=30))


def test_timestamps_are_normalised_to_utc_with_milliseconds() -> None:
    decoded = decode_fields(_event(occurred_at="2026-11-22T12:00:00.5+02:00"))
    assert decoded.occurred_at == datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)
    assert decoded.to_fields()["occurred_at"] == "2026-11-22T10:00:00.500Z"


@pytest.mark.parametrize(("text", "moment"), [
    ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
    ("2026-11-22t10:00:00z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
    ("2026-11-22T10:00:00.1234567-05:30", datetime(2026, 11, 22, 15, 30, 0, 123456, tzinfo=UTC)),
    ("2026-11-22T00:30:00+01:00", datetime(2026, 11, 21, 23, 30, tzinfo=UTC)),
    ("2028-02-29T23:59:59.999-00:00", datetime(2028, 2, 29, 23, 59, 59, 999000, tzinfo=UTC)),
])
def test_every_form_of_rfc_3339_date_time_is_accepted(text: str, moment: datetime) -> None:
    assert decode_fields(_event(occurred_at=text)).occurred_at == moment


def test_an_event_never_carries_command_fields_even_if_sent_some() -> None:
    decoded = decode_fields(_event(target="payment", attempt="2", deadline="2026-11-22T10:00:00Z"))
    assert decoded.kind == EVENT
    assert (decoded.target, decoded.attempt, decoded.deadline) == (None, None, None)


def test_unknown_extra_fields_are_tolerated() -> None:
    raw = _event(x_added_by_a_newer_producer="1", priority="high")
    decoded = decode_fields(raw)
    assert decoded.id == raw["id"] and decoded.type == "payment.charged"
    assert decoded.data["amount"] == 12.5


# -- rejections, each naming its field -------------------------------------------------------------


# ISO 8601 forms that datetime.fromisoformat takes and RFC 3339 does not, then impossible values.
NOT_RFC_3339 = [
    "20261122T100000Z", "2026-W47-1T10:00:00Z", "2026-11-22T10Z", "2026-11-22T10:00Z",
    "2026-11-22T10:00:00,5Z", "2026-11-22 10:00:00Z", "2026-11-22T10:00:00+0100",
    "2026-11-22T10:00:00+01", "2026-11-22T10:00:00.Z", "+2026-11-22T10:00:00Z", "2026-327T10:00:00Z",
    "2026-11-22T10:00:00Z ", "\uff12\uff10\uff12\uff16-11-22T10:00:00Z",  # full-width digits
    "yesterday", "", "2026-13-01T10:00:00Z", "2026-11-22T25:00:00Z", "2026-02-29T10:00:00Z",
    "2026-11-22T10:00:60Z", "2026-11-22T10:00:00+24:00", "2026-11-22T10:00:00+01:60",
]


@pytest.mark.parametrize("value", NOT_RFC_3339)
def test_a_bad_timestamp_is_rejected_naming_the_field(value: str) -> None:
    error = _rejected(_event(occurred_at=value))
    assert set(error.errors) == {"occurred_at"}
    assert "occurred_at" in str(error)
    assert set(_rejected(_command(deadline=value)).errors) == {"deadline"}


@pytest.mark.parametrize(("schema", "field", "key"), [
    (ListQuery(), "started_after", "started_after"), (ListQuery(), "started_before", "started_before"),
    (DeadlineBody(), "deadline", "deadline"), (SlaQuery(), "from", "start"), (SlaQuery(), "to", "end"),
])
def test_the_api_timestamps_are_as_strict_as_the_wire(schema: Schema, field: str, key: str) -> None:
    extra = {"reason": "moved"} if isinstance(schema, DeadlineBody) else {}
    loaded = schema.load({**extra, field: "2026-11-22t11:00:00.5+01:00"})
    assert loaded[key] == datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)
    for value in NOT_RFC_3339:
        with pytest.raises(ValidationError) as caught:
            schema.load({**extra, field: value})
        assert set(caught.value.messages_dict) == {field}, value


def test_a_naive_timestamp_is_rejected() -> None:
    error = _rejected(_event(occurred_at="2026-11-22T10:00:00.123"))
    assert set(error.errors) == {"occurred_at"}
    assert "offset" in str(error.errors["occurred_at"])


def test_a_naive_command_deadline_is_rejected() -> None:
    error = _rejected(_command(deadline="2026-11-22T10:01:00"))
    assert set(error.errors) == {"deadline"}


@pytest.mark.parametrize("value", ["{not json", "", "{'single': 'quotes'}", "null"])
def test_data_that_is_not_a_json_object_is_rejected(value: str) -> None:
    error = _rejected(_event(data=value))
    assert set(error.errors) == {"data"}


def test_data_that_is_a_json_array_is_rejected() -> None:
    error = _rejected(_event(data='[{"order_id": "o-1"}]'))
    assert error.errors == {"data": ["must be a JSON object"]}


@pytest.mark.parametrize("name", [
    "id", "kind", "type", "version", "correlation_id", "causation_id", "occurred_at", "source", "data",
])
def test_a_missing_required_field_is_rejected_by_name(name: str) -> None:
    raw = _event()
    del raw[name]
    error = _rejected(raw)
    assert set(error.errors) == {name}
    assert name in str(error)


@pytest.mark.parametrize("value", ["wf 1", "wf/1", "wf#1", "wf\n1", "wf-1\n", "wf-é", "", "x" * 129])
def test_a_bad_correlation_id_is_rejected(value: str) -> None:
    error = _rejected(_event(correlation_id=value))
    assert set(error.errors) == {"correlation_id"}


def test_a_correlation_id_of_128_allowed_characters_is_accepted() -> None:
    cid = ("Ab0._:-" * 19)[:128]
    assert decode_fields(_event(correlation_id=cid)).correlation_id == cid


@pytest.mark.parametrize("value", ["not-a-uuid", "1234", ""])
def test_an_id_that_is_not_a_uuid_is_rejected(value: str) -> None:
    error = _rejected(_event(id=value))
    assert set(error.errors) == {"id"}


@pytest.mark.parametrize("value", ["0", "x", "-1", "1.0", "", " 1", "1\n", "\u00b2"])
def test_a_version_that_is_not_a_positive_integer_is_rejected(value: str) -> None:
    error = _rejected(_event(version=value))
    assert set(error.errors) == {"version"}


@pytest.mark.parametrize("value", ["query", "signal", ""])
def test_an_unknown_kind_is_rejected(value: str) -> None:
    assert set(_rejected(_event(kind=value)).errors) == {"kind"}


@pytest.mark.parametrize("value", [
    "Payment.Charged", "charged", "payment..charged", "payment.charged!", "payment.charged\n"])
def test_a_malformed_type_is_rejected(value: str) -> None:
    assert set(_rejected(_event(type=value)).errors) == {"type"}


@pytest.mark.parametrize("name", ["target", "attempt", "deadline"])
def test_a_command_missing_target_attempt_or_deadline_is_rejected(name: str) -> None:
    raw = _command()
    del raw[name]
    error = _rejected(raw)
    assert error.errors == {name: ["required on a command"]}
    assert name in str(error)


def test_a_command_missing_all_its_fields_names_each_of_them() -> None:
    raw = _command()
    for name in ("target", "attempt", "deadline"):
        del raw[name]
    assert set(_rejected(raw).errors) == {"target", "attempt", "deadline"}


@pytest.mark.parametrize(("name", "value"), [
    ("attempt", "0"), ("attempt", "x"), ("attempt", "\u00b2"),
    ("target", "Pay Ment"), ("target", "payment\n"),
])
def test_a_command_with_a_bad_attempt_or_target_is_rejected(name: str, value: str) -> None:
    assert set(_rejected(_command(**{name: value})).errors) == {name}


def test_a_command_decodes_its_attempt_as_an_integer() -> None:
    decoded = decode_fields(_command(attempt="3"))
    assert decoded.attempt == 3 and decoded.target == "payment"


@pytest.mark.parametrize("where", ["value", "key"])
def test_bytes_that_are_not_utf8_are_rejected(where: str) -> None:
    raw: dict[bytes, bytes] = {k.encode(): v.encode() for k, v in _event().items()}
    if where == "value":
        raw[b"source"] = b"\xff\xfepayment"
    else:
        raw[b"\xc3\x28"] = b"1"
    error = _rejected(raw)
    assert set(error.errors) == {"_entry"}
    assert "UTF-8" in str(error)


def test_several_faults_are_all_reported() -> None:
    error = _rejected(_event(id="nope", version="0", data="[]"))
    assert set(error.errors) == {"id", "version", "data"}


# -- the payload registry --------------------------------------------------------------------------


def _charged(**overrides: Any) -> dict[str, Any]:
    return {"order_id": "o-1", "payment_id": "p-1", "amount": 12.5, "currency": "EUR", **overrides}


def _placed(**overrides: Any) -> dict[str, Any]:
    data = {"order_id": "o-1", "customer_id": "c-1", "total_amount": 20,
            "items": [{"product_id": "SKU-1", "quantity": 2, "unit_price": 10}], "currency": "EUR"}
    data.update(overrides)
    return data


def test_an_unknown_type_is_an_unknown_message_type() -> None:
    registry = default_registry()
    with pytest.raises(UnknownMessageType, match=r"payment\.teleported") as caught:
        registry.validate("payment.teleported", 1, {})
    assert caught.value.message_type == "payment.teleported"
    assert not registry.knows("payment.teleported")
    with pytest.raises(UnknownMessageType):
        registry.kind("payment.teleported")


def test_an_unsupported_version_lists_the_supported_ones() -> None:
    registry = default_registry()
    with pytest.raises(UnsupportedVersion) as caught:
        registry.validate("payment.charged", 2, _charged())
    assert (caught.value.message_type, caught.value.version, caught.value.supported) == (
        "payment.charged", 2, [1])
    assert "supported: [1]" in str(caught.value)


def test_the_registry_keeps_several_versions_of_a_type() -> None:
    class ChargedV2(Payload):
        amount_cents = fields.Int(required=True, strict=True)

    registry = default_registry()
    registry.register("payment.charged", ChargedV2(), version=2)
    assert registry.versions("payment.charged") == [1, 2]
    assert registry.latest("payment.charged") == 2
    assert registry.validate("payment.charged", 2, {"amount_cents": 5}) == {"amount_cents": 5}
    assert registry.validate("payment.charged", 1, _charged())["amount"] == 12.5
    with pytest.raises(UnsupportedVersion) as caught:
        registry.schema("payment.charged", 3)
    assert caught.value.supported == [1, 2]


def test_a_payload_keeps_the_fields_it_does_not_know() -> None:
    loaded = default_registry().validate("payment.charged", 1, _charged(fraud_score=0.1, extra={"a": 1}))
    assert loaded == _charged(fraud_score=0.1, extra={"a": 1})


def test_a_nested_payload_keeps_unknown_fields_too() -> None:
    item = {"product_id": "SKU-1", "quantity": 1, "unit_price": 3, "gift_wrap": True}
    loaded = default_registry().validate("order.placed", 1, _placed(items=[item], channel="web"))
    assert loaded["channel"] == "web"
    assert loaded["items"][0]["gift_wrap"] is True


@pytest.mark.parametrize("value", ["12.50", True, None, [12]])
def test_an_amount_that_is_not_a_json_number_is_rejected(value: object) -> None:
    with pytest.raises(InvalidMessage) as caught:
        default_registry().validate("payment.charged", 1, _charged(amount=value))
    assert set(caught.value.errors) == {"data.amount"}


def test_an_amount_may_be_an_integer() -> None:
    assert default_registry().validate("payment.charged", 1, _charged(amount=12))["amount"] == 12


@pytest.mark.parametrize("quantity", [0, -1, "2", 1.5])
def test_an_item_quantity_must_be_a_positive_integer(quantity: object) -> None:
    item = {"product_id": "SKU-1", "quantity": quantity, "unit_price": 10}
    with pytest.raises(InvalidMessage) as caught:
        default_registry().validate("order.placed", 1, _placed(items=[item]))
    assert set(caught.value.errors) == {"data.items"}
    assert "quantity" in str(caught.value.errors["data.items"])


def test_a_negative_unit_price_is_rejected() -> None:
    item = {"product_id": "SKU-1", "quantity": 1, "unit_price": -0.01}
    with pytest.raises(InvalidMessage) as caught:
        default_registry().validate("order.placed", 1, _placed(items=[item]))
    assert "unit_price" in str(caught.value.errors["data.items"])


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R", "", 978])
def test_a_currency_must_be_an_iso_4217_code(currency: object) -> None:
    with pytest.raises(InvalidMessage) as caught:
        default_registry().validate("payment.charged", 1, _charged(currency=currency))
    assert set(caught.value.errors) == {"data.currency"}


@pytest.mark.parametrize("name", ["order_id", "payment_id", "amount", "currency"])
def test_a_missing_required_payload_field_is_named(name: str) -> None:
    data = _charged()
    del data[name]
    with pytest.raises(InvalidMessage) as caught:
        default_registry().validate("payment.charged", 1, data)
    assert set(caught.value.errors) == {f"data.{name}"}
    assert f"data.{name}" in str(caught.value)


def test_an_order_needs_at_least_one_item() -> None:
    with pytest.raises(InvalidMessage) as caught:
        default_registry().validate("order.placed", 1, _placed(items=[]))
    assert set(caught.value.errors) == {"data.items"}


def test_an_estimated_delivery_must_be_a_date() -> None:
    registry = default_registry()
    good = {"order_id": "o-1", "shipment_id": "s-1", "estimated_delivery": "2026-11-25"}
    assert registry.validate("shipment.scheduled", 1, good)["estimated_delivery"].isoformat() == "2026-11-25"
    with pytest.raises(InvalidMessage) as caught:
        registry.validate("shipment.scheduled", 1, {**good, "estimated_delivery": "next week"})
    assert set(caught.value.errors) == {"data.estimated_delivery"}


COMMANDS = ("inventory.release", "payment.refund", "shipment.cancel",
            "inventory.reserve", "payment.charge", "shipment.schedule")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_registers_its_failed_answer_requiring_a_reason(command: str) -> None:
    registry = default_registry()
    answer = failed_type(command)
    assert answer == command + "_failed"
    assert registry.kind(command) == COMMAND
    assert registry.kind(answer) == EVENT
    assert registry.versions(answer) == registry.versions(command)
    with pytest.raises(InvalidMessage) as caught:
        registry.validate(answer, 1, {"order_id": "o-1"})
    assert set(caught.value.errors) == {"data.reason"}
    with pytest.raises(InvalidMessage) as caught:
        registry.validate(answer, 1, {"order_id": "o-1", "reason": ""})
    assert set(caught.value.errors) == {"data.reason"}
    assert registry.validate(answer, 1, {"order_id": "o-1", "reason": "card expired", "code": 7}) == {
        "order_id": "o-1", "reason": "card expired", "code": 7}


@pytest.mark.parametrize("failure", [
    "inventory.reservation_failed", "payment.charge_failed", "shipment.scheduling_failed"])
def test_every_failure_event_of_the_reference_flow_requires_a_reason(failure: str) -> None:
    registry = default_registry()
    assert registry.kind(failure) == EVENT
    with pytest.raises(InvalidMessage) as caught:
        registry.validate(failure, 1, {"order_id": "o-1"})
    assert set(caught.value.errors) == {"data.reason"}


def test_a_command_registered_without_a_failed_schema_gets_the_generic_one() -> None:
    registry = Registry()
    registry.register("ledger.close", Payload(), kind=COMMAND)
    assert registry.kind("ledger.close_failed") == EVENT
    assert isinstance(registry.schema("ledger.close_failed", 1), FailedPayload)
    with pytest.raises(InvalidMessage) as caught:
        registry.validate("ledger.close_failed", 1, {})
    assert caught.value.errors == {"data.reason": ["Missing data for required field."]}


def test_an_event_registers_no_failed_answer() -> None:
    registry = Registry()
    registry.register("ledger.closed", Payload())
    assert not registry.knows("ledger.closed_failed")


def test_decoded_envelope_is_frozen() -> None:
    decoded = decode_fields(_event())
    assert isinstance(decoded, Envelope)
    with pytest.raises(AttributeError):
        decoded.type = "payment.refunded"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["source", "causation_id", "traceparent"])
def test_a_nul_in_a_free_text_field_is_malformed_so_it_is_dead_lettered_at_once(name: str) -> None:
    """PostgreSQL refuses a NUL in text: decoded, the entry would fail every attempt instead."""
    assert list(_rejected(_event(**{name: "pay\x00ment"})).errors) == [name]


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01"])
def test_a_date_time_whose_utc_falls_outside_years_1_to_9999_is_a_value_error(text: str) -> None:
    from contracts.timefmt import parse_ts
    with pytest.raises(ValueError, match="year"):
        parse_ts(text)
