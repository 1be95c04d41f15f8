"""The `price_change` reference flow, pure: its rules, its definition and payloads, its participants
by name (the flow in-process on real Redis and both databases: tests/integration/test_price_change.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from config.flows import load_catalog
from contracts.errors import InvalidMessage
from contracts.flows import APPROVAL_STEP, COMMAND_STEP, EVENT_STEP
from contracts.registry import default_registry
from participants.reference import NAMES, build
from participants.reference.pricing import Proposal, evaluate

PARTICIPANTS = ("pricing", "catalog", "search")


def change(product_id: str | None = None, current: float = 10.0, proposed: float = 11.0,
           unit_cost: float = 6.0, competitor: float | None = None, currency: str = "EUR",
           change_id: str | None = None) -> dict[str, Any]:
    """A proposal; by default a clean one (+10 %, well above the margin floor)."""
    data: dict[str, Any] = {
        "change_id": change_id or f"chg-{uuid.uuid4().hex[:8]}",
        "product_id": product_id or f"P-{uuid.uuid4().hex[:8]}",
        "current_price": current, "proposed_price": proposed, "unit_cost": unit_cost,
        "currency": currency,
    }
    if competitor is not None:
        data["competitor_price"] = competitor
    return data


def rules(current: float, proposed: float, unit_cost: float, competitor: float | None = None,
          listed: tuple[int, str] | None = None) -> tuple[str, list[str]]:
    verdict, violations = evaluate(Proposal.of(change(current=current, proposed=proposed,
                                                      unit_cost=unit_cost, competitor=competitor)),
                                   listed)
    return verdict, [v["rule"] for v in violations]


@pytest.mark.parametrize(("current", "proposed", "unit_cost", "competitor", "listed", "expected"), [
    (10.0, 11.0, 6.0, None, None, ("accept", [])),
    (10.0, 9.0, 6.0, 9.5, None, ("accept", [])),                # a decrease below the competitor
    (10.0, 10.5, 10.0, None, None, ("accept", [])),             # exactly on the margin floor
    (10.0, 10.49, 10.0, None, None, ("reject", ["margin_floor"])),
    (10.0, 4.0, 5.0, None, None, ("reject", ["margin_floor"])),
    (10.0, 12.0, 6.0, None, None, ("accept", [])),              # exactly +20 %
    (10.0, 12.01, 6.0, None, None, ("review", ["increase_limit"])),
    (10.0, 11.0, 6.0, 10.0, None, ("accept", [])),              # exactly competitor + 10 %
    (10.0, 11.01, 6.0, 10.0, None, ("review", ["above_competitor"])),
    (10.0, 15.0, 6.0, 12.0, None, ("review", ["increase_limit", "above_competitor"])),
    (10.0, 15.0, 14.5, 12.0, None, ("reject", ["margin_floor", "increase_limit", "above_competitor"])),
    (10.0, 11.0, 6.0, None, (1000, "EUR"), ("accept", [])),     # the list agrees
    (10.0, 11.0, 6.0, None, (1050, "EUR"), ("reject", ["stale_price"])),
    (10.0, 11.0, 6.0, None, (1000, "USD"), ("reject", ["stale_price"])),
])
def test_the_rules(current: float, proposed: float, unit_cost: float, competitor: float | None,
                   listed: tuple[int, str] | None, expected: tuple[str, list[str]]) -> None:
    assert rules(current, proposed, unit_cost, competitor, listed) == expected


def test_a_violation_says_what_was_crossed() -> None:
    _, violations = evaluate(Proposal.of(change(current=10.0, proposed=4.0, unit_cost=5.0)))
    assert violations == [{"rule": "margin_floor", "severity": "hard",
                           "detail": "4.00 EUR is below the margin floor 5.25 EUR "
                                     "(unit cost 5.00 EUR + 5 %)"}]
    _, violations = evaluate(Proposal.of(change(current=10.0, proposed=13.0, competitor=11.0)))
    assert [v["detail"] for v in violations] == [
        "an increase of 30.0 % over 10.00 EUR is above 20 %",
        "13.00 EUR is more than 10 % above the competitor's 11.00 EUR"]


def test_the_flow_orchestrates_the_core_and_choreographs_the_edges() -> None:
    flow = load_catalog(default_registry()).latest("price_change")
    assert (flow.version, flow.start_event) == (1, "price.change_proposed")
    assert flow.search_attributes == ("change_id", "product_id")
    assert flow.completes_when == ("update_catalog", "update_search")
    shape = [(s.name, s.kind, s.participant, s.done_on, s.failed_on) for s in flow.steps]
    assert shape == [
        ("evaluate_rules", COMMAND_STEP, "pricing", "price.evaluated", "price.evaluate_failed"),
        ("approve", APPROVAL_STEP, "operator", "price.approved", "price.rejected"),
        ("publish_price", COMMAND_STEP, "pricing", "price.published", "price.publish_failed"),
        ("update_catalog", EVENT_STEP, "catalog", "catalog.price_updated",
         "catalog.price_update_failed"),
        ("update_search", EVENT_STEP, "search", "search.price_indexed", None),
    ]
    assert flow.step("evaluate_rules").fails_when == (("verdict", "reject"),)
    assert flow.step("approve").when == (("verdict", "review"),)
    comp = flow.step("publish_price").compensation
    assert comp is not None and (comp.command, comp.answer) == ("price.revert", "price.reverted")


def test_payloads_are_tolerant_readers_of_typed_fields() -> None:
    registry = default_registry()
    data = {**change(competitor=9.0), "campaign": "black-friday"}  # an unknown field passes
    assert registry.validate("price.change_proposed", 1, data)["campaign"] == "black-friday"
    for bad in ({"proposed_price": "11.00"}, {"proposed_price": 0}, {"currency": "euro"},
                {"unit_cost": -1.0}, {"competitor_price": True}):
        with pytest.raises(InvalidMessage):
            registry.validate("price.change_proposed", 1, {**data, **bad})
    with pytest.raises(InvalidMessage) as missing:
        registry.validate("price.evaluated", 1, {"change_id": "c", "product_id": "p",
                                                 "verdict": "maybe", "violations": []})
    assert set(missing.value.errors) == {"data.verdict"}


def test_the_participants_are_registered_by_name() -> None:
    assert NAMES[-3:] == PARTICIPANTS
    for name in PARTICIPANTS:
        assert build(name).name == name
    bulk = {"repricing.evaluate", "repricing.publish_canary", "repricing.publish_rest",
            "repricing.revert_canary"}  # and bulk_repricing's (tests/integration/test_bulk_repricing.py)
    assert set(build("pricing").commands) == {"price.evaluate", "price.publish", "price.revert", *bulk}
    per_sku = {"sku_price.published", "sku_price.reverted"}
    assert set(build("catalog").events) == {"price.published", "price.reverted", *per_sku}
    assert set(build("search").events) == {"price.published", "price.reverted", *per_sku}
