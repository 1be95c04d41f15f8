"""`POST /v1/workflows/actions`: one intervention on every workflow matching a filter. A dry run
touches nothing and lists what a real run would touch, newest first; a real run touches exactly
that set, at most `limit` of it, and answers each workflow's own result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.timefmt import format_ts, parse_ts, utcnow
from tests.integration.test_interventions import (
    OPERATOR,
    ORDER,
    STARTER,
    VIEWER,
    Baton,
    assert_problem,
    build,
    open_baton,
    order_input,
)

# order_fulfillment whose steps are due one second after they start: stalled soon enough to test.
HASTY_FLOW = """
name: hasty_order
version: 1
start_event: order.placed
search_attributes: [order_id, customer_id]
step_sla_seconds: 1
steps:
  - name: reserve_inventory
    participant: inventory
    reacts_to: [order.placed]
    done_on: inventory.reserved
    failed_on: inventory.reservation_failed
  - name: charge_payment
    participant: payment
    reacts_to: [order.placed]
    done_on: payment.charged
    failed_on: payment.charge_failed
"""


@pytest.fixture
def baton(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Baton]:
    with open_baton(database_url, redis_url, tmp_path, {"hasty_order": HASTY_FLOW}) as b:
        yield b


def after_clock_moves(b: Baton) -> None:
    """The next start gets a later `started_at` (millisecond precision): newest first is defined."""
    latest = b.get("/v1/workflows", limit=1).get_json()["items"]
    if latest:
        while format_ts(utcnow()) <= latest[0]["started_at"]:
            time.sleep(0.001)


def start_many(b: Baton, n: int, flow: str = "order_fulfillment", **inputs: Any) -> list[str]:
    """`n` running workflows, oldest first."""
    cids = []
    for _ in range(n):
        after_clock_moves(b)
        cids.append(b.start(flow, input=order_input(**inputs)))
    return cids


def bulk(b: Baton, token: str | None = OPERATOR, **body: Any) -> Any:
    body.setdefault("reason", "bulk test")
    body.setdefault("filter", {})
    return b.post("/v1/workflows/actions", body, token)


def ok(b: Baton, **body: Any) -> dict[str, Any]:
    response = bulk(b, **body)
    assert response.status_code == 200, response.get_data(as_text=True)
    result: dict[str, Any] = response.get_json()
    return result


def everything(b: Baton) -> dict[str, Any]:
    """Every workflow's state, audit, timeline and every stream: what a dry run must not touch."""
    items = b.get("/v1/workflows", limit=500).get_json()["items"]
    return {"streams": b.streams(),
            **{w["correlation_id"]: b.state(w["correlation_id"]) for w in items}}


def own(b: Baton, cid: str) -> dict[str, Any]:
    """A workflow's own state: itself, its audit and its timeline (streams are shared)."""
    state = b.state(cid)
    del state["streams"]
    return state


@pytest.fixture
def seven(baton: Baton) -> dict[str, list[str]]:
    """Seven running orders among others: two completed, one of another flow, one paused."""
    done = [build(baton, "completed", ORDER) for _ in range(2)]
    other = start_many(baton, 1, "gated_order")
    paused = [build(baton, "paused", ORDER)]
    running = start_many(baton, 7)
    return {"running": running, "completed": done, "other": other, "paused": paused}


RUNNING_ORDERS = {"flow": "order_fulfillment", "status": "running"}


def test_a_dry_run_lists_the_matching_set_newest_first_and_touches_nothing(
        baton: Baton, seven: dict[str, list[str]]) -> None:
    before = everything(baton)
    for action in ("cancel", "pause", "compensate", "retry"):
        result = ok(baton, action=action, filter=RUNNING_ORDERS, dry_run=True)
        assert result["dry_run"] is True
        assert result["matched"] == seven["running"][::-1]
        assert result["results"] == []
    assert everything(baton) == before
    assert all(before[cid]["audit"] == [] for cid in seven["running"])


def test_a_real_run_touches_exactly_the_dry_runs_set(baton: Baton, seven: dict[str, list[str]]) -> None:
    dry = ok(baton, action="cancel", filter=RUNNING_ORDERS, dry_run=True)
    untouched = {cid: own(baton, cid) for group in ("completed", "other", "paused")
                 for cid in seven[group]}
    real = ok(baton, action="cancel", filter=RUNNING_ORDERS, reason="recall of SKU-001")
    assert real["dry_run"] is False
    assert real["matched"] == dry["matched"]
    assert [r["correlation_id"] for r in real["results"]] == dry["matched"]
    assert all(r["status"] == 200 for r in real["results"]), real["results"]
    for cid in dry["matched"]:
        wf = baton.workflow(cid)
        assert (wf["status"], wf["reason"]) in {("compensated", "cancelled"), ("compensating", "cancelled")}
        [entry] = baton.audit(cid)
        assert (entry["actor"], entry["action"], entry["reason"]) == ("olga", "cancel",
                                                                     "recall of SKU-001")
    for cid, state in untouched.items():
        assert own(baton, cid) == state


def test_the_limit_is_a_batch_of_the_newest(baton: Baton, seven: dict[str, list[str]]) -> None:
    dry = ok(baton, action="pause", filter=RUNNING_ORDERS, dry_run=True, limit=3)
    newest = seven["running"][::-1]
    assert dry["matched"] == newest[:3]
    rest = {cid: own(baton, cid) for cid in newest[3:]}
    real = ok(baton, action="pause", filter=RUNNING_ORDERS, limit=3)
    assert real["matched"] == newest[:3]
    assert [(r["correlation_id"], r["status"]) for r in real["results"]] == [(c, 200) for c in newest[:3]]
    assert [baton.workflow(c)["status"] for c in newest[:3]] == ["paused"] * 3
    for cid, state in rest.items():
        assert own(baton, cid) == state
    # The next batch: those paused no longer match, the next three do.
    assert ok(baton, action="pause", filter=RUNNING_ORDERS, limit=3)["matched"] == newest[3:6]
    assert ok(baton, action="pause", filter=RUNNING_ORDERS, limit=3)["matched"] == newest[6:]


def test_each_workflow_gets_its_own_result_and_a_refusal_changes_nothing(
        baton: Baton, seven: dict[str, list[str]]) -> None:
    refused = seven["completed"] + seven["paused"]
    before = {cid: own(baton, cid) for cid in refused}
    result = ok(baton, action="pause", filter={"flow": "order_fulfillment"})
    statuses = {r["correlation_id"]: r["status"] for r in result["results"]}
    assert set(statuses) == set(seven["running"] + refused)
    assert {statuses[c] for c in seven["running"]} == {200}
    assert {statuses[c] for c in refused} == {409}
    assert all(r["detail"] for r in result["results"])
    for cid in refused:
        assert own(baton, cid) == before[cid]


def test_a_bulk_deadline_extends_each_by_the_same_amount(baton: Baton) -> None:
    cids = start_many(baton, 3)
    deadlines = {c: parse_ts(baton.workflow(c)["deadline"]) for c in cids}
    result = ok(baton, action="deadline", extend_seconds=900, filter={"status": "running"})
    assert sorted(result["matched"]) == sorted(cids)
    for cid in cids:
        assert parse_ts(baton.workflow(cid)["deadline"]) - deadlines[cid] == timedelta(seconds=900)


def matched(b: Baton, **filters: Any) -> list[str]:
    found: list[str] = ok(b, action="cancel", dry_run=True, filter=filters)["matched"]
    return found


def test_every_filter_selects_what_it_says(baton: Baton) -> None:
    gold = start_many(baton, 2, customer_id="cust-gold")
    after_clock_moves(baton)
    middle = format_ts(utcnow())
    silver = start_many(baton, 2, customer_id="cust-silver")
    gated = start_many(baton, 1, "gated_order", customer_id="cust-silver")
    after_clock_moves(baton)
    done = build(baton, "completed", ORDER)
    everyone = [*gold, *silver, *gated, done][::-1]

    assert matched(baton) == everyone
    assert matched(baton, flow="gated_order") == gated
    assert matched(baton, status="completed") == [done]
    assert matched(baton, started_before=middle) == gold[::-1]
    assert matched(baton, started_after=middle) == [*silver, *gated, done][::-1]
    assert matched(baton, started_after=middle, started_before=middle) == []
    assert matched(baton, attributes={"customer_id": "cust-silver"}) == [*silver, *gated][::-1]
    order_id = baton.workflow(silver[0])["input"]["order_id"]
    assert matched(baton, attributes={"order_id": order_id}) == [silver[0]]
    assert matched(baton, attributes={"order_id": order_id, "customer_id": "cust-gold"}) == []
    assert matched(baton, flow="gated_order", attributes={"customer_id": "cust-silver"},
                   status="running") == gated


def test_the_stalled_step_filter_finds_steps_active_past_their_deadline(baton: Baton) -> None:
    stalled, answered = start_many(baton, 2, "hasty_order")
    fresh = start_many(baton, 1)  # order_fulfillment: a minute before its steps are due
    baton.emit("payment.charged", answered)
    due = max(parse_ts(s["deadline"]) for c in (stalled, answered)
              for s in baton.workflow(c)["steps"])
    while utcnow() <= due:  # the wall clock is what "stalled" is measured against
        time.sleep(0.02)
    assert matched(baton, stalled_step="charge_payment") == [stalled]
    assert matched(baton, stalled_step="reserve_inventory") == [answered, stalled]
    assert matched(baton, stalled_step="no_such_step") == []
    assert fresh[0] not in matched(baton, stalled_step="charge_payment")
    result = ok(baton, action="retry", step="charge_payment", filter={"stalled_step": "charge_payment"})
    assert [(r["correlation_id"], r["status"]) for r in result["results"]] == [(stalled, 200)]
    assert [a["action"] for a in baton.audit(stalled)] == ["retry"]
    assert baton.audit(answered) == []


BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-action": ({"action": "explode", "filter": {}}, "action"),
    "skip-is-not-a-bulk-action": ({"action": "skip", "filter": {}}, "action"),
    "unknown-filter-field": ({"action": "cancel", "filter": {"colour": "red"}}, "filter.colour"),
    "undeclared-attribute": ({"action": "cancel", "filter": {"attributes": {"colour": "red"}}},
                             "filter.attributes.colour"),
    "attribute-not-a-string": ({"action": "cancel", "filter": {"attributes": {"order_id": 7}}},
                               "filter.attributes.order_id"),
    "bad-status": ({"action": "cancel", "filter": {"status": "sleeping"}}, "filter.status"),
    "bad-time": ({"action": "cancel", "filter": {"started_before": "yesterday"}},
                 "filter.started_before"),
    "no-filter": ({"action": "cancel", "filter": None}, "filter"),
    "unknown-field": ({"action": "cancel", "filter": {}, "force": True}, "force"),
    "limit-zero": ({"action": "cancel", "filter": {}, "limit": 0}, "limit"),
    "limit-too-big": ({"action": "cancel", "filter": {}, "limit": 100_000}, "limit"),
    "no-reason": ({"action": "cancel", "filter": {}, "reason": None}, "reason"),
    "blank-reason": ({"action": "cancel", "filter": {}, "reason": " \t\n "}, "reason"),
    "no-action": ({"filter": {}}, "action"),
    "deadline-without-extension": ({"action": "deadline", "filter": {}}, "extend_seconds"),
    "deadline-moved-to-a-time": ({"action": "deadline", "filter": {},
                                  "deadline": "2030-01-01T00:00:00Z"}, "deadline"),
    "extension-for-another-action": ({"action": "pause", "filter": {}, "extend_seconds": 60},
                                     "extend_seconds"),
    "step-for-another-action": ({"action": "cancel", "filter": {}, "step": "charge_payment"},
                                "step"),
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_a_bad_bulk_request_answers_422_naming_the_field(baton: Baton, case: str) -> None:
    cid = baton.start()
    before = baton.state(cid)
    body, field = BAD_BODIES[case]
    body = {"reason": "r", **body}
    if body["reason"] is None:
        del body["reason"]
    if body.get("filter", {}) is None:
        del body["filter"]
    problem = assert_problem(baton.post("/v1/workflows/actions", body), 422)
    assert field in problem["errors"], problem
    assert baton.state(cid) == before


def test_only_an_operator_may_act_in_bulk(baton: Baton) -> None:
    cid = baton.start(token=STARTER)
    before = baton.state(cid)
    for token in (VIEWER, STARTER):
        assert_problem(bulk(baton, token, action="cancel", dry_run=True), 403)
        assert_problem(bulk(baton, token, action="cancel"), 403)
    assert_problem(bulk(baton, None, action="cancel"), 401)
    assert_problem(bulk(baton, "not-a-token", action="cancel"), 401)
    assert baton.state(cid) == before


# Every single intervention, with a body it would accept but for its reason.
INTERVENTIONS: dict[str, dict[str, Any]] = {
    "cancel": {}, "compensate": {}, "retry": {}, "steps/charge_payment/skip": {}, "pause": {},
    "resume": {}, "deadline": {"extend_seconds": 60}, "signals/approve": {"data": {"channel": "ops"}},
}


def test_a_blank_reason_is_refused_by_every_intervention(baton: Baton) -> None:
    """The audit keeps why: blanks say nothing, so they are a 422 naming `reason`."""
    cid = baton.start()
    before = baton.state(cid)
    failures = []
    for action, body in INTERVENTIONS.items():
        for blank in ("", " ", "\t\n  "):
            response = baton.post(f"/v1/workflows/{cid}/{action}", {"reason": blank, **body})
            if response.status_code != 422 or "reason" not in response.get_json()["errors"]:
                failures.append(f"{action} {blank!r}: {response.status_code}")
    assert failures == []
    assert baton.state(cid) == before


@pytest.mark.parametrize("body", [{}, {"deadline": "2030-01-01T00:00:00Z", "extend_seconds": 60}],
                         ids=["neither", "both"])
def test_a_single_deadline_takes_exactly_one_of_deadline_and_extend_seconds(
        baton: Baton, body: dict[str, Any]) -> None:
    cid = baton.start()
    before = baton.state(cid)
    problem = assert_problem(baton.post(f"/v1/workflows/{cid}/deadline", {"reason": "r", **body}), 422)
    assert set(problem["errors"]) == {"deadline", "extend_seconds"}, problem
    assert baton.state(cid) == before
