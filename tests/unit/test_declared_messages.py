"""Message types declared in flow files: the `messages:` section refused by file and field, the
JSON Schema payloads validating like marshmallow's, the compatibility rule between declarations,
and every process's registry (`load_registry`, a participant's default)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from marshmallow import ValidationError

from config.flows import load_catalog, load_file, load_registry
from contracts.envelope import COMMAND, EVENT
from contracts.errors import FlowDefinitionError, InvalidMessage
from contracts.json_payloads import JsonPayload, as_json_schema
from contracts.order_fulfillment import OrderPlaced
from contracts.payloads import Registry
from contracts.registry import default_registry
from participants.runtime.participant import Participant

MEMBER_JOINED: dict[str, Any] = {
    "type": "object", "required": ["member_id", "email"],
    "properties": {
        "member_id": {"type": "string", "minLength": 1},
        "email": {"type": "string", "format": "email"},
        "interests": {"type": "array", "items": {
            "type": "object", "required": ["topic"],
            "properties": {"topic": {"type": "string"}, "weight": {"type": "number"}}}},
    },
}


def _member(**extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": ["member_id"],
            "properties": {"member_id": {"type": "string"}, **extra}}


def loyalty_flow() -> dict[str, Any]:
    """The issue's flow: its own start event, a step with a compensation command, a second step."""
    return {
        "name": "loyalty_signup", "version": 1, "start_event": "member.joined",
        "search_attributes": ["member_id"],
        "messages": {
            "member.joined": {"version": 1, "schema": MEMBER_JOINED},
            "account.created": {"schema": _member(account_id={"type": "string", "minLength": 1})},
            "account.creation_failed": {"schema": {**_member(reason={"type": "string"}),
                                                   "required": ["member_id", "reason"]}},
            "account.delete": {"kind": "command", "schema": _member()},
            "account.deleted": {"schema": _member()},
            "welcome.sent": {"schema": _member()},
        },
        "steps": [
            {"name": "create_account", "participant": "accounts", "reacts_to": ["member.joined"],
             "done_on": "account.created", "failed_on": "account.creation_failed",
             "compensation": {"command": "account.delete", "answer": "account.deleted"}},
            {"name": "send_welcome", "participant": "mailer", "reacts_to": ["account.created"],
             "done_on": "welcome.sent"},
        ],
    }


def write(directory: Path, name: str, document: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def declaring(message_type: str, entry: Any) -> dict[str, Any]:
    return {"messages": {message_type: entry}}


def refused(directory: Path) -> FlowDefinitionError:
    with pytest.raises(FlowDefinitionError) as caught:
        load_catalog(default_registry(), [directory])
    return caught.value


def only(error: FlowDefinitionError, field: str) -> str:
    """The one message the error has for `field`."""
    found = error.errors[field]
    assert isinstance(found, list) and len(found) == 1, error.errors
    return str(found[0])


def messages(payload: JsonPayload, data: Any) -> Any:
    with pytest.raises(ValidationError) as caught:
        payload.load(data)
    return caught.value.messages


# -- the payload: validation as marshmallow's, by jsonschema-rs ------------------------------------


def test_a_valid_payload_is_returned_as_given_with_its_unknown_fields() -> None:
    payload = JsonPayload(MEMBER_JOINED)
    data = {"member_id": "m-1", "email": "ann@example.com", "from_a_newer_producer": [1, 2]}
    assert payload.load(data) == data


def test_errors_are_nested_like_marshmallows_and_every_one_is_listed() -> None:
    payload = JsonPayload(MEMBER_JOINED)
    found = messages(payload, {"email": "not an address",
                               "interests": [{"topic": "tea"}, {"weight": "heavy"}]})
    assert set(found) == {"member_id", "email", "interests"}
    assert found["member_id"] == ["Missing data for required field."]
    assert found["email"] and "email" in found["email"][0]
    assert set(found["interests"]) == {1}, "the item is keyed by its index, an int, as marshmallow does"
    assert set(found["interests"][1]) == {"topic", "weight"}
    assert found["interests"][1]["topic"] == ["Missing data for required field."]
    assert "number" in found["interests"][1]["weight"][0]


def test_the_shape_is_marshmallows_for_the_same_mistake() -> None:
    shipped = OrderPlaced()
    declared = JsonPayload(as_json_schema(shipped))
    bad = {"order_id": "o-1", "customer_id": "c", "total_amount": 1, "currency": "EUR",
           "items": [{"product_id": "p", "quantity": 1, "unit_price": 1}, {"product_id": "p",
                                                                            "unit_price": 1}]}
    with pytest.raises(ValidationError) as mm:
        shipped.load(bad)
    assert messages(declared, bad) == mm.value.messages == {
        "items": {1: {"quantity": ["Missing data for required field."]}}}


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_neither_a_number_nor_an_integer(value: bool) -> None:
    payload = JsonPayload({"type": "object", "properties": {
        "n": {"type": "number"}, "i": {"type": "integer"}}})
    assert set(messages(payload, {"n": value, "i": value})) == {"n", "i"}
    assert payload.load({"n": 1.5, "i": 2}) == {"n": 1.5, "i": 2}


def test_an_error_about_the_whole_payload_is_keyed_schema() -> None:
    payload = JsonPayload({"type": "object", "minProperties": 2})
    assert list(messages(payload, {"a": 1})) == ["_schema"]


def test_a_field_with_errors_of_its_own_and_inside_keeps_both() -> None:
    payload = JsonPayload({"type": "object", "properties": {"items": {
        "type": "array", "minItems": 3, "items": {"type": "integer"}}}})
    found = messages(payload, {"items": [1, "two"]})
    assert set(found["items"]) == {"_schema", 1}


def test_the_registry_names_declared_fields_as_it_does_shipped_ones() -> None:
    registry = Registry()
    registry.register("member.joined", JsonPayload(MEMBER_JOINED))
    with pytest.raises(InvalidMessage) as caught:
        registry.validate("member.joined", 1, {"member_id": "", "email": "a@b.example",
                                               "interests": [{"topic": 3}]})
    assert set(caught.value.errors) == {"data.member_id", "data.interests"}
    assert caught.value.errors["data.interests"] == {0: {"topic": ['3 is not of type "string"']}}


# -- the messages: section, refused by file and field --------------------------------------------


def test_a_flow_declaring_its_types_loads_and_registers_them(tmp_path: Path) -> None:
    write(tmp_path, "loyalty.yaml", loyalty_flow())
    registry = default_registry()
    catalog = load_catalog(registry, [tmp_path])
    flow = catalog.latest("loyalty_signup")
    assert flow.start_event == "member.joined"
    assert (registry.kind("member.joined"), registry.versions("member.joined")) == (EVENT, [1])
    assert registry.kind("account.delete") == COMMAND
    assert registry.kind("account.delete_failed") == EVENT, "a command's failed answer comes along"
    with pytest.raises(InvalidMessage) as caught:
        registry.validate("account.delete_failed", 1, {"member_id": "m-1"})
    assert set(caught.value.errors) == {"data.reason"}
    assert registry.validate("member.joined", 1, {"member_id": "m", "email": "m@example.com"})
    assert registry.knows("order.placed"), "the shipped types stay"
    assert "loyalty_signup" in catalog.names() and "order_fulfillment" in catalog.names()


def test_load_file_alone_registers_the_files_types_too(tmp_path: Path) -> None:
    registry = default_registry()
    flow = load_file(write(tmp_path, "loyalty.yaml", loyalty_flow()), registry)
    assert flow.name == "loyalty_signup" and registry.knows("member.joined")


def test_a_flow_may_use_types_another_file_declares_and_a_file_may_only_declare(
        tmp_path: Path) -> None:
    document = loyalty_flow()
    write(tmp_path, "a_flow.yaml", {k: v for k, v in document.items() if k != "messages"})
    write(tmp_path, "z_messages.yaml", {"messages": document["messages"]})
    catalog = load_catalog(default_registry(), [tmp_path])
    assert "loyalty_signup" in catalog.names()


def test_load_registry_is_the_shipped_schemas_and_every_declaration(tmp_path: Path) -> None:
    write(tmp_path, "loyalty.yaml", loyalty_flow())
    registry = load_registry([tmp_path])
    assert registry.knows("member.joined") and registry.knows("order.placed")
    assert not load_registry([]).knows("member.joined")


BAD_ENTRIES: dict[str, tuple[Any, str]] = {
    "not a JSON Schema": ({"schema": {"type": "objekt"}}, "messages.member.joined.schema"),
    "a bound of the wrong type": ({"schema": {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": "one"}}}}, "messages.member.joined.schema"),
    "not an object at the top": ({"schema": {"type": "array"}}, "messages.member.joined.schema"),
    "no type at the top": ({"schema": {"properties": {}}}, "messages.member.joined.schema"),
    "a $ref to nowhere": ({"schema": {"type": "object", "$ref": "#/$defs/nope"}},
                          "messages.member.joined.schema"),
    "a remote $ref": ({"schema": {"type": "object", "properties": {"a": {
        "$ref": "https://example.com/a.json"}}}}, "messages.member.joined.schema"),
    "no schema": ({"version": 1}, "messages.member.joined.schema"),
    "a bad kind": ({"kind": "query", "schema": {"type": "object"}}, "messages.member.joined.kind"),
    "version 0": ({"version": 0, "schema": {"type": "object"}}, "messages.member.joined.version"),
    "version as a string": ({"version": "1", "schema": {"type": "object"}},
                            "messages.member.joined.version"),
    "an unknown key": ({"schema": {"type": "object"}, "fields": {}}, "messages.member.joined.fields"),
    "not a mapping": ("object", "messages.member.joined"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_a_bad_declaration_is_refused_naming_the_file_and_field(tmp_path: Path, case: str) -> None:
    entry, field = BAD_ENTRIES[case]
    document = loyalty_flow()
    document["messages"]["member.joined"] = entry
    path = write(tmp_path, "loyalty.yaml", document)
    error = refused(tmp_path)
    assert error.source == str(path) and str(path) in str(error)
    assert list(error.errors) == [field], error.errors


def test_a_schema_that_is_not_plain_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dates.yaml"
    path.write_text("messages:\n  member.joined:\n    schema: {type: object, default: 2026-11-22}\n")
    error = refused(tmp_path)
    assert error.errors.keys() == {"messages.member.joined.schema"}
    assert "plain JSON" in str(error)


def test_a_bad_type_name_and_a_section_that_is_no_mapping_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", declaring("Member Joined", {"schema": {"type": "object"}}))
    assert list(refused(tmp_path).errors) == ["messages.Member Joined"]
    write(tmp_path, "a.yaml", {"messages": ["member.joined"]})
    assert list(refused(tmp_path).errors) == ["messages"]


def test_every_bad_entry_of_a_file_is_named_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", {"messages": {"a.joined": {"kind": "query", "schema": {"type": "object"}},
                                            "b.joined": {"schema": {"type": "array"}}}})
    assert set(refused(tmp_path).errors) == {"messages.a.joined.kind", "messages.b.joined.schema"}


# -- the same type and version declared twice ------------------------------------------------------


def redeclared(tmp_path: Path, old: dict[str, Any], new: dict[str, Any]) -> tuple[Path, Path]:
    first = write(tmp_path, "a.yaml", declaring("member.joined", {"schema": old}))
    second = write(tmp_path, "b.yaml", declaring("member.joined", {"schema": new}))
    return first, second


def test_an_identical_redeclaration_is_fine(tmp_path: Path) -> None:
    redeclared(tmp_path, MEMBER_JOINED, copy.deepcopy(MEMBER_JOINED))
    assert load_registry([tmp_path]).knows("member.joined")


def test_adding_an_optional_field_is_accepted_and_the_later_declaration_wins(tmp_path: Path) -> None:
    newer = copy.deepcopy(MEMBER_JOINED)
    newer["properties"]["nickname"] = {"type": "string"}
    redeclared(tmp_path, MEMBER_JOINED, newer)
    registry = load_registry([tmp_path])
    good = {"member_id": "m", "email": "m@example.com"}
    assert registry.validate("member.joined", 1, {**good, "nickname": "M"})
    with pytest.raises(InvalidMessage) as caught:
        registry.validate("member.joined", 1, {**good, "nickname": 7})
    assert set(caught.value.errors) == {"data.nickname"}


def _without(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    node = changed
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return changed


BREAKING: dict[str, Any] = {
    "a field removed": lambda s: _without(s, "properties", "email"),
    "a field retyped": lambda s: {**s, "properties": {**s["properties"], "member_id": {"type": "integer"}}},
    "a field newly required": lambda s: {**s, "required": [*s["required"], "interests"]},
    "a nested field removed": lambda s: _without(s, "properties", "interests", "items", "properties",
                                                 "weight"),
    "a nested field retyped": lambda s: yaml.safe_load(yaml.safe_dump(s).replace(
        "weight:\n          type: number", "weight:\n          type: string")),
}


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_a_breaking_redeclaration_is_refused_naming_both_files(tmp_path: Path, case: str) -> None:
    changed = BREAKING[case](copy.deepcopy(MEMBER_JOINED))
    assert changed != MEMBER_JOINED
    first, second = redeclared(tmp_path, MEMBER_JOINED, changed)
    error = refused(tmp_path)
    assert error.source == str(second)
    why = only(error, "messages.member.joined.schema")
    assert str(first) in why
    assert "removes or retypes a field" in why and "declare version 2" in why


def test_a_new_version_may_change_anything(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", declaring("member.joined", {"schema": MEMBER_JOINED}))
    write(tmp_path, "b.yaml", declaring("member.joined", {"version": 2, "schema": _member()}))
    registry = load_registry([tmp_path])
    assert registry.versions("member.joined") == [1, 2] and registry.latest("member.joined") == 2


def test_a_shipped_type_and_version_cannot_be_redeclared(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", declaring("order.placed", {"schema": {"type": "object"}}))
    error = refused(tmp_path)
    why = only(error, "messages.order.placed.version")
    assert "shipped" in why and "declare version 2" in why


def test_a_type_keeps_its_kind(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", declaring("payment.charged", {"version": 2, "kind": "command",
                                                            "schema": {"type": "object"}}))
    assert list(refused(tmp_path).errors) == ["messages.payment.charged.kind"]


def test_a_commands_failed_answer_stays_an_event(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", {"messages": {
        "account.delete_failed": {"kind": "command", "schema": {"type": "object"}},
        "account.delete": {"kind": "command", "schema": _member()},
    }})
    assert list(refused(tmp_path).errors) == ["messages.account.delete.kind"]


def test_a_declared_failed_answer_is_checked_against_the_default_one(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", {"messages": {
        "account.delete": {"kind": "command", "schema": _member()},
        "account.delete_failed": {"schema": {"type": "object", "properties": {
            "reason": {"type": "string"}, "member_id": {"type": "string"}}, "required": ["reason"]}},
    }})
    assert load_registry([tmp_path]).knows("account.delete_failed")
    write(tmp_path, "a.yaml", {"messages": {
        "account.delete": {"kind": "command", "schema": _member()},
        "account.delete_failed": {"schema": {"type": "object"}},  # no more `reason`
    }})
    assert list(refused(tmp_path).errors) == ["messages.account.delete_failed.schema"]


# -- the registry a participant validates with ----------------------------------------------------


def test_a_participant_binds_no_registry_when_it_is_defined() -> None:
    declared = load_registry([])
    declared.register("member.joined", JsonPayload(MEMBER_JOINED))
    participant = Participant("accounts")
    participant.adopt_registry(declared)  # what run_participant does with the settings' flows
    assert participant.registry is declared


def test_a_participant_with_no_registry_falls_back_to_the_shipped_schemas() -> None:
    participant = Participant("accounts")
    assert participant.registry.knows("order.placed")
    assert participant.registry is participant.registry, "built once"
    assert not participant.registry.knows("member.joined")


def test_a_participants_own_registry_is_kept() -> None:
    own = Registry()
    participant = Participant("accounts", registry=own)
    participant.adopt_registry(load_registry([]))
    assert participant.registry is own


# -- what GET /v1/flows shows of a shipped schema --------------------------------------------------


def test_a_shipped_schema_reads_as_json_schema() -> None:
    converted = as_json_schema(OrderPlaced())
    assert converted["type"] == "object"
    assert set(converted["required"]) == {"order_id", "customer_id", "items", "total_amount", "currency"}
    assert converted["properties"]["items"]["items"]["properties"]["quantity"]["type"] == "integer"
    assert as_json_schema(JsonPayload(MEMBER_JOINED)) == MEMBER_JOINED
