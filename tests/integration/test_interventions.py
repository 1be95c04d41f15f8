"""Operator interventions through the REST API, table-driven: every intervention on every workflow
status, 200 with the workflow as GET shows it and an audit entry where it applies, 409 with nothing
changed where it does not. Workflows are driven in-process: started through the API, moved along by
events the tracker consumes from a real Redis, and by the SLA sweeper with a `now` in the future.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from contracts.envelope import decode_fields, new_event
from contracts.streams import Keys
from contracts.timefmt import format_ts, parse_ts, utcnow
from controller.service.bootstrap import Services
from controller.service.sweep import sweep_once
from participants.runtime.loop import Options, Runtime
from tests.harness import running_app
from tests.system import report_facts_as_rebuilt, wait_until

TOKENS = "olga:operator:t-olga,vic:viewer:t-vic,stan:starter:t-stan"
OPERATOR, VIEWER, STARTER = "t-olga", "t-vic", "t-stan"
PROBLEM = "application/problem+json"

# order_fulfillment whose commands get one attempt: an unanswered compensation needs attention at
# the first sweep past its timeout.
FRAGILE_FLOW = """
name: fragile_order
version: 1
start_event: order.placed
search_attributes: [order_id, customer_id]
completes_when: [schedule_shipment]
command_max_attempts: 1
command_timeout_seconds: 1
steps:
  - name: reserve_inventory
    participant: inventory
    reacts_to: [order.placed]
    done_on: inventory.reserved
    failed_on: inventory.reservation_failed
    compensation: {command: inventory.release, answer: inventory.released}
  - name: charge_payment
    participant: payment
    reacts_to: [order.placed]
    done_on: payment.charged
    failed_on: payment.charge_failed
    compensation: {command: payment.refund, answer: payment.refunded}
  - name: schedule_shipment
    participant: shipping
    reacts_to: [inventory.reserved, payment.charged]
    done_on: shipment.scheduled
    failed_on: shipment.scheduling_failed
    compensation: {command: shipment.cancel, answer: shipment.cancelled}
"""

# A human gate after the reservation. Its outcome events borrow registered order_fulfillment types:
# approving emits notification.sent (needs `channel`), rejecting shipment.scheduling_failed (`reason`).
GATED_FLOW = """
name: gated_order
version: 1
start_event: order.placed
search_attributes: [order_id, customer_id]
command_max_attempts: 1
command_timeout_seconds: 1
steps:
  - name: reserve_inventory
    participant: inventory
    reacts_to: [order.placed]
    done_on: inventory.reserved
    failed_on: inventory.reservation_failed
    compensation: {command: inventory.release, answer: inventory.released}
  - name: manager_approval
    kind: approval
    participant: manager
    reacts_to: [inventory.reserved]
    done_on: notification.sent
    failed_on: shipment.scheduling_failed
    sla_seconds: 120
"""


def order_input(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": f"ord-{uuid.uuid4().hex[:8]}", "customer_id": "cust-gold",
        "items": [{"product_id": "SKU-001", "quantity": 2, "unit_price": 5.0}],
        "total_amount": 10.0, "currency": "EUR",
    }
    data.update(overrides)
    return data


def payload(message_type: str, order_id: str) -> dict[str, Any]:
    """A valid payload of an order_fulfillment event, as its participant would send it."""
    known: dict[str, dict[str, Any]] = {
        "inventory.reserved": {"reservations": [
            {"reservation_id": "res-1", "product_id": "SKU-001", "quantity": 2}]},
        "payment.charged": {"payment_id": "pay-1", "amount": 10.0, "currency": "EUR"},
        "shipment.scheduled": {"shipment_id": "shp-1", "estimated_delivery": "2030-01-02"},
        "notification.sent": {"channel": "email"},
        "inventory.released": {"released_reservations": ["res-1"]},
        "payment.refunded": {"payment_id": "pay-1", "amount": 10.0},
        "shipment.cancelled": {"shipment_id": "shp-1"},
    }
    extra = known.get(message_type, {"reason": "declined by the test"})
    return {"order_id": order_id, **extra}


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class Baton:
    """The API in-process on real Redis and a real database, with the tracker and the sweeper."""

    client: FlaskClient
    services: Services
    keys: Keys
    raw: redis.Redis
    tracker: Runtime

    def post(self, path: str, body: Any, token: str | None = OPERATOR) -> TestResponse:
        return self.client.post(path, json=body, headers=auth(token))

    def get(self, path: str, token: str | None = OPERATOR, **query: Any) -> TestResponse:
        return self.client.get(path, headers=auth(token), query_string=query)

    def start(self, flow: str = "order_fulfillment", token: str = OPERATOR, **body: Any) -> str:
        body.setdefault("input", order_input())
        response = self.post("/v1/workflows", {"flow": flow, **body}, token)
        assert response.status_code == 201, response.get_json()
        cid: str = response.get_json()["correlation_id"]
        self.drain()
        return cid

    def workflow(self, cid: str) -> dict[str, Any]:
        response = self.get(f"/v1/workflows/{cid}")
        assert response.status_code == 200, response.get_json()
        found: dict[str, Any] = response.get_json()
        return found

    def audit(self, cid: str) -> list[dict[str, Any]]:
        response = self.get(f"/v1/workflows/{cid}/audit", limit=1000)
        assert response.status_code == 200, response.get_json()
        items: list[dict[str, Any]] = response.get_json()["items"]
        return items

    def timeline(self, cid: str) -> list[dict[str, Any]]:
        response = self.get(f"/v1/workflows/{cid}/timeline", limit=1000)
        assert response.status_code == 200, response.get_json()
        items: list[dict[str, Any]] = response.get_json()["items"]
        return items

    def emit(self, message_type: str, cid: str, source: str = "test") -> None:
        """A participant's event on its stream, then the tracker consumes it."""
        order_id = self.workflow(cid)["input"]["order_id"]
        start_id = self.timeline(cid)[0]["id"]
        event = new_event(message_type, payload(message_type, order_id), correlation_id=cid,
                          causation_id=start_id, source=source)
        self.raw.xadd(self.keys.event_stream(message_type), event.to_fields())  # type: ignore[arg-type]
        self.drain()

    def drain(self) -> None:
        for _ in range(50):
            if self.tracker.poll() == 0:
                return
        raise AssertionError("the tracker never went quiet")

    def sweep(self, now: datetime) -> int:
        acted = sweep_once(self.services, now)
        self.drain()
        return acted

    def streams(self) -> dict[str, int]:
        """The length of every stream under this test's prefix: what was sent to anyone."""
        found: Any = self.raw.scan_iter(match=f"{self.keys.prefix}:*")
        return {k.decode(): int(self.raw.xlen(k)) for k in found if self.raw.type(k) == b"stream"}

    def entries(self, stream: str) -> list[dict[str, Any]]:
        found: Any = self.raw.xrange(stream)
        return [decode_fields(f).__dict__ for _, f in found]

    def state(self, cid: str) -> dict[str, Any]:
        """Everything an intervention could change, as clients and participants see it."""
        return {"workflow": self.workflow(cid), "audit": self.audit(cid),
                "timeline": self.timeline(cid), "streams": self.streams()}


@contextmanager
def open_baton(database_url: str, redis_url: str, tmp_path: Path,
               flows: dict[str, str] | None = None) -> Iterator[Baton]:
    """The app on a migrated database, its tracker, and extra flow definitions by name."""
    flows = {"fragile_order": FRAGILE_FLOW, "gated_order": GATED_FLOW, **(flows or {})}
    with running_app(database_url, redis_url, tmp_path, TOKENS, flows=flows) as app:
        tracker = app.runtime_of("controller", Options(block_ms=20, linger_ms=0), "interventions-test")
        yield Baton(app.client, app.services, app.keys, app.raw, tracker)
        report_facts_as_rebuilt(app.services.engine)  # every intervention kept the report's facts


@pytest.fixture
def baton(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Baton]:
    with open_baton(database_url, redis_url, tmp_path) as b:
        yield b


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = orjson.loads(response.get_data())
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


# -- building each status --------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """How participants move a workflow of `flow` along."""

    flow: str
    first: tuple[str, ...]  # after these the workflow is running with something done
    finish: tuple[str, ...]  # these complete it
    fail: str  # this fails an active step: compensation begins
    answer: str  # the answer to the compensation command that `fail` causes


ORDER = Script("order_fulfillment", ("inventory.reserved",), ("payment.charged", "shipment.scheduled"),
               "payment.charge_failed", "inventory.released")
FRAGILE = Script("fragile_order", ORDER.first, ORDER.finish, ORDER.fail, ORDER.answer)
GATED = Script("gated_order", ("inventory.reserved",), ("notification.sent",),
               "shipment.scheduling_failed", "inventory.released")


def build_running(b: Baton, s: Script) -> str:
    cid = b.start(s.flow)
    for t in s.first:
        b.emit(t, cid)
    return cid


def build_paused(b: Baton, s: Script) -> str:
    cid = build_running(b, s)
    assert b.post(f"/v1/workflows/{cid}/pause", {"reason": "set up"}).status_code == 200
    return cid


def build_completed(b: Baton, s: Script) -> str:
    cid = build_running(b, s)
    for t in s.finish:
        b.emit(t, cid)
    return cid


def build_compensating(b: Baton, s: Script) -> str:
    cid = build_running(b, s)
    b.emit(s.fail, cid)
    return cid


def build_compensated(b: Baton, s: Script) -> str:
    cid = build_compensating(b, s)
    b.emit(s.answer, cid)
    return cid


def build_needs_attention(b: Baton, s: Script) -> str:
    cid = build_compensating(b, s)
    b.sweep(utcnow() + timedelta(hours=1))  # the compensation's only attempt times out
    return cid


BUILDERS: dict[str, Callable[[Baton, Script], str]] = {
    "running": build_running, "paused": build_paused, "completed": build_completed,
    "compensating": build_compensating, "compensated": build_compensated,
    "needs_attention": build_needs_attention,
}
STATUSES = list(BUILDERS)


def build(b: Baton, status: str, script: Script) -> str:
    if status == "needs_attention" and script.flow == "order_fulfillment":
        script = FRAGILE  # five attempts would take five sweeps; the same flow with one
    cid = BUILDERS[status](b, script)
    assert b.workflow(cid)["status"] == status
    return cid


def test_the_builders_make_what_they_say(baton: Baton) -> None:
    """The preconditions of the table below, spelled out once."""
    cid = build(baton, "needs_attention", ORDER)  # first: its sweep would breach the others
    assert [(c["step"], c["status"]) for c in baton.workflow(cid)["compensations"]] == [
        ("reserve_inventory", "failed")]
    cid = build(baton, "running", ORDER)
    wf = baton.workflow(cid)
    steps = {s["name"]: s["status"] for s in wf["steps"]}
    assert steps == {"reserve_inventory": "done", "charge_payment": "active",
                     "schedule_shipment": "pending", "send_confirmation": "pending"}
    cid = build(baton, "compensating", ORDER)
    wf = baton.workflow(cid)
    assert wf["reason"] == "step_failed"
    assert [(c["step"], c["status"], c["attempts"]) for c in wf["compensations"]] == [
        ("reserve_inventory", "sent", 1)]
    cid = build(baton, "running", GATED)
    steps = {s["name"]: s["status"] for s in baton.workflow(cid)["steps"]}
    assert steps == {"reserve_inventory": "done", "manager_approval": "active"}


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    key: str
    name: str  # the audit's action
    path: str  # after /v1/workflows/<cid>/
    body: Callable[[dict[str, Any]], dict[str, Any]]  # from the workflow as it was
    applies: dict[str, str]  # status before -> status after
    script: Script = ORDER


def _reason(**more: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda wf: {"reason": "operator test: " + uuid.uuid4().hex[:6], **more}


def _new_deadline(wf: dict[str, Any]) -> dict[str, Any]:
    at = parse_ts(wf["started_at"]) + timedelta(hours=3, milliseconds=250)
    return {"reason": "customer asked for more time", "deadline": format_ts(at)}


ACTIONS: dict[str, Action] = {a.key: a for a in [
    Action("cancel", "cancel", "cancel", _reason(), {"running": "compensating", "paused": "compensating"}),
    Action("compensate", "compensate", "compensate", _reason(),
           {"running": "compensating", "paused": "compensating", "needs_attention": "compensating"}),
    Action("retry", "retry", "retry", _reason(),
           {"running": "running", "compensating": "compensating", "needs_attention": "compensating"}),
    Action("skip", "skip", "steps/charge_payment/skip", _reason(),
           {"running": "running", "paused": "paused"}),
    Action("pause", "pause", "pause", _reason(), {"running": "paused"}),
    Action("resume", "resume", "resume", _reason(), {"paused": "running"}),
    Action("deadline-at", "deadline", "deadline", _new_deadline,
           {"running": "running", "paused": "paused"}),
    Action("deadline-extend", "deadline", "deadline", _reason(extend_seconds=600),
           {"running": "running", "paused": "paused"}),
    Action("approve", "signal", "signals/approve", _reason(data={"channel": "ops-console"}),
           {"running": "completed"}, GATED),
    Action("reject", "signal", "signals/reject", _reason(data={"reason": "over budget"}),
           {"running": "compensating"}, GATED),
]}
CASES = [(key, status) for key in ACTIONS for status in STATUSES]


def _url(cid: str, action: Action) -> str:
    return f"/v1/workflows/{cid}/{action.path}"


@pytest.fixture
def pg_baton(pg_database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Baton]:
    """The production database only: the table is long, and every other test here runs on both."""
    with open_baton(pg_database_url, redis_url, tmp_path) as b:
        yield b


@pytest.mark.parametrize(("key", "status"), CASES, ids=[f"{k}-on-{s}" for k, s in CASES])
def test_every_intervention_on_every_status(pg_baton: Baton, key: str, status: str) -> None:
    baton = pg_baton
    action = ACTIONS[key]
    cid = build(baton, status, action.script)
    before = baton.state(cid)
    body = action.body(before["workflow"])
    t0 = utcnow()
    response = baton.post(_url(cid, action), body)
    t1 = utcnow()
    if status not in action.applies:
        problem = assert_problem(response, 409)
        assert status in problem["detail"], problem
        assert baton.state(cid) == before, f"a refused {key} changed something"
        return

    assert response.status_code == 200, response.get_json()
    after = baton.state(cid)
    assert response.mimetype == "application/json"
    assert response.get_json() == after["workflow"], "200 answers the workflow as GET shows it"
    assert after["workflow"]["status"] == action.applies[status]
    [entry] = after["audit"][len(before["audit"]):]
    assert after["audit"][:len(before["audit"])] == before["audit"]
    assert entry["actor"] == "olga"
    assert entry["action"] == action.name
    assert entry["reason"] == body["reason"]
    assert t0 <= parse_ts(entry["at"]) <= t1
    assert isinstance(entry["result"], str) and action.applies[status] in entry["result"]
    EFFECTS[key](baton, cid, status, before, after, body)


# -- what each intervention did, where it applied ---------------------------------------------------


State = dict[str, Any]
Check = Callable[[Baton, str, str, State, State, dict[str, Any]], None]


def _steps(state: State) -> dict[str, str]:
    return {s["name"]: s["status"] for s in state["workflow"]["steps"]}


def _comps(state: State) -> list[tuple[str, str, int]]:
    return [(c["step"], c["status"], c["attempts"]) for c in state["workflow"]["compensations"]]


def _new_messages(before: State, after: State) -> list[dict[str, Any]]:
    known = {m["id"] for m in before["timeline"]}
    return [m for m in after["timeline"] if m["id"] not in known]


def _commands(b: Baton, participant: str) -> list[dict[str, Any]]:
    return b.entries(b.keys.command_stream(participant))


def check_cancel(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    assert after["workflow"]["reason"] == "cancelled"
    assert _comps(after) == [("reserve_inventory", "sent", 1)]  # only the done step is undone
    [release] = _commands(b, "inventory")
    assert release["type"] == "inventory.release" and release["attempt"] == 1


def check_compensate(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    if status == "needs_attention":
        assert after["workflow"]["reason"] == "step_failed"  # why it left running stays
        assert _comps(after) == [("reserve_inventory", "sent", 2)]
        assert [c["attempt"] for c in _commands(b, "inventory")] == [1, 2]
        return
    assert after["workflow"]["reason"] == "cancelled"
    assert _comps(after) == [("reserve_inventory", "sent", 1)]
    assert [c["type"] for c in _commands(b, "inventory")] == ["inventory.release"]


def check_retry(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    if status == "running":  # charge_payment waits for payment.charged: its trigger again
        [again] = _new_messages(before, after)
        start = before["timeline"][0]
        assert (again["type"], again["kind"]) == ("order.placed", "event")
        assert again["causation_id"] == start["id"], "the re-emitted trigger keeps its causation"
        assert again["data"] == start["data"]
        placed = b.entries(b.keys.event_stream("order.placed"))
        assert [p["id"] for p in placed] == [start["id"], again["id"]]
        assert _steps(after) == _steps(before)
        return
    # compensating: the unanswered release again; needs_attention: the failed one again
    assert _comps(after) == [("reserve_inventory", "sent", 2)]
    releases = _commands(b, "inventory")
    assert [c["attempt"] for c in releases] == [1, 2]
    assert releases[0]["id"] == releases[1]["id"], "the same command, the next attempt"


def check_skip(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    steps = _steps(after)
    assert steps["charge_payment"] == "skipped"
    assert steps["reserve_inventory"] == "done"
    if status == "running":  # what waited for the skipped step goes on
        assert steps["schedule_shipment"] == "active"
    else:
        assert steps["schedule_shipment"] == "pending", "nothing moves while paused"
    assert after["streams"] == before["streams"], "a skip sends nothing to the participant"


def check_pause(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    assert after["workflow"]["deadline"] == before["workflow"]["deadline"]
    assert after["streams"] == before["streams"]


def check_resume(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    paused_at = parse_ts(before["audit"][-1]["at"])
    resumed_at = parse_ts(after["audit"][-1]["at"])
    moved = parse_ts(after["workflow"]["deadline"]) - parse_ts(before["workflow"]["deadline"])
    assert moved == resumed_at - paused_at
    assert after["streams"] == before["streams"]


def check_deadline(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    if "deadline" in body:
        assert after["workflow"]["deadline"] == body["deadline"]
    else:
        moved = parse_ts(after["workflow"]["deadline"]) - parse_ts(before["workflow"]["deadline"])
        assert moved == timedelta(seconds=body["extend_seconds"])
    assert _steps(after) == _steps(before)
    assert after["streams"] == before["streams"]


def check_approve(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    assert _steps(after) == {"reserve_inventory": "done", "manager_approval": "done"}
    [sent] = b.entries(b.keys.event_stream("notification.sent"))
    assert sent["source"] == "controller" and sent["correlation_id"] == cid
    assert sent["data"]["channel"] == "ops-console"
    assert sent["data"]["order_id"] == before["workflow"]["input"]["order_id"]
    assert sent["id"] in {m["id"] for m in after["timeline"]}


def check_reject(b: Baton, cid: str, status: str, before: State, after: State, body: Any) -> None:
    assert _steps(after)["manager_approval"] == "failed"
    assert after["workflow"]["reason"] == "step_failed"
    assert _comps(after) == [("reserve_inventory", "sent", 1)]
    [rejected] = b.entries(b.keys.event_stream("shipment.scheduling_failed"))
    assert rejected["data"]["reason"] == "over budget"


EFFECTS: dict[str, Check] = {
    "cancel": check_cancel, "compensate": check_compensate, "retry": check_retry, "skip": check_skip,
    "pause": check_pause, "resume": check_resume,
    "deadline-at": check_deadline, "deadline-extend": check_deadline, "approve": check_approve,
    "reject": check_reject,
}


def test_every_action_of_the_table_has_its_effects_checked() -> None:
    assert set(EFFECTS) == set(ACTIONS)


# -- pause stops the clock ---------------------------------------------------------------------------


def test_a_paused_workflow_is_not_breached_and_nothing_is_issued(baton: Baton) -> None:
    cid = build(baton, "paused", ORDER)
    before = baton.state(cid)
    assert baton.sweep(parse_ts(before["workflow"]["deadline"]) + timedelta(days=1)) == 0
    assert baton.state(cid) == before


def test_resume_moves_every_deadline_by_the_time_spent_paused(baton: Baton) -> None:
    cid = build(baton, "running", ORDER)
    running = baton.workflow(cid)
    step_deadline = parse_ts({s["name"]: s for s in running["steps"]}["charge_payment"]["deadline"])
    assert baton.post(f"/v1/workflows/{cid}/pause", {"reason": "hold"}).status_code == 200
    paused_for = timedelta(milliseconds=400)
    resume_after = utcnow() + paused_for
    while utcnow() < resume_after:  # the wall clock must move: that is what is measured
        baton.raw.ping()
    assert baton.sweep(step_deadline + timedelta(hours=1)) == 0  # the clock is stopped
    resumed = baton.post(f"/v1/workflows/{cid}/resume", {"reason": "go on"}).get_json()
    pause, resume = ([parse_ts(a["at"]) for a in baton.audit(cid)])
    shift = resume - pause
    assert shift >= paused_for
    assert parse_ts(resumed["deadline"]) == parse_ts(running["deadline"]) + shift
    moved = {s["name"]: s["deadline"] for s in resumed["steps"]}
    assert parse_ts(moved["charge_payment"]) == step_deadline + shift
    assert moved["reserve_inventory"] == {s["name"]: s["deadline"] for s in running["steps"]}[
        "reserve_inventory"], "a done step's deadline is history"

    # The step's old deadline has passed but not its new one: still running, then breached.
    assert baton.sweep(step_deadline + shift / 2) == 0
    assert baton.workflow(cid)["status"] == "running"
    baton.sweep(step_deadline + shift + timedelta(milliseconds=1))
    breached = baton.workflow(cid)
    assert (breached["status"], breached["reason"]) == ("compensating", "sla_breached")


def test_skip_while_paused_moves_on_at_resume(baton: Baton) -> None:
    cid = build(baton, "paused", ORDER)
    baton.post(f"/v1/workflows/{cid}/steps/charge_payment/skip", {"reason": "charged by phone"})
    resumed = baton.post(f"/v1/workflows/{cid}/resume", {"reason": "go on"}).get_json()
    steps = {s["name"]: s["status"] for s in resumed["steps"]}
    assert steps["schedule_shipment"] == "active"
    baton.emit("shipment.scheduled", cid)
    assert baton.workflow(cid)["status"] == "completed"


def test_a_skipped_step_still_counts_when_the_rest_of_its_join_arrives_later(baton: Baton) -> None:
    """schedule_shipment waits for inventory.reserved and payment.charged; the charge is skipped
    first, the reservation arrives afterwards, in another transaction."""
    cid = baton.start()
    skipped = baton.post(f"/v1/workflows/{cid}/steps/charge_payment/skip", {"reason": "paid cash"})
    assert {s["name"]: s["status"] for s in skipped.get_json()["steps"]}["schedule_shipment"] == "pending"
    baton.emit("inventory.reserved", cid)
    steps = {s["name"]: s["status"] for s in baton.workflow(cid)["steps"]}
    assert steps["schedule_shipment"] == "active"
    baton.emit("shipment.scheduled", cid)
    assert baton.workflow(cid)["status"] == "completed"


# -- approvals -------------------------------------------------------------------------------------


def test_an_approval_left_unanswered_past_its_sla_breaches(baton: Baton) -> None:
    cid = build(baton, "running", GATED)
    step = {s["name"]: s for s in baton.workflow(cid)["steps"]}["manager_approval"]
    assert parse_ts(step["deadline"]) - parse_ts(step["started_at"]) == timedelta(seconds=120)
    baton.sweep(parse_ts(step["deadline"]) + timedelta(seconds=1))
    wf = baton.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("compensating", "sla_breached")
    assert_problem(baton.post(f"/v1/workflows/{cid}/signals/approve",
                              {"reason": "too late", "data": {"channel": "x"}}), 409)


@pytest.mark.parametrize("name", ["approve", "reject"])
def test_a_signal_with_no_approval_waiting_is_a_conflict(baton: Baton, name: str) -> None:
    for cid in (baton.start("gated_order"), build(baton, "running", ORDER)):
        before = baton.state(cid)
        body = {"reason": "nothing to approve", "data": {"channel": "x", "reason": "y"}}
        assert "approval" in assert_problem(
            baton.post(f"/v1/workflows/{cid}/signals/{name}", body), 409)["detail"]
        assert baton.state(cid) == before


def test_an_unknown_signal_changes_nothing(baton: Baton) -> None:
    cid = build(baton, "running", GATED)
    before = baton.state(cid)
    response = baton.post(f"/v1/workflows/{cid}/signals/maybe", {"reason": "undecided"})
    assert response.status_code in (404, 409, 422), response.get_data(as_text=True)
    assert "maybe" in assert_problem(response, response.status_code)["detail"]
    assert baton.state(cid) == before


def test_approving_without_the_data_its_event_needs_is_422_not_500(baton: Baton) -> None:
    """notification.sent requires `channel`: the outcome event cannot be made from the start data."""
    cid = build(baton, "running", GATED)
    before = baton.state(cid)
    problem = assert_problem(baton.post(f"/v1/workflows/{cid}/signals/approve", {"reason": "ok"}), 422)
    assert any("channel" in field for field in problem.get("errors", {})), problem
    assert baton.state(cid) == before


def test_rejecting_without_data_uses_the_reason_or_answers_422_never_500(baton: Baton) -> None:
    """Every `*_failed` event requires `reason`; the signal has one in its body."""
    cid = build(baton, "running", GATED)
    before = baton.state(cid)
    response = baton.post(f"/v1/workflows/{cid}/signals/reject", {"reason": "over budget"})
    assert response.status_code in (200, 422), response.get_data(as_text=True)
    if response.status_code == 422:
        assert baton.state(cid) == before
        return
    assert response.get_json()["status"] == "compensating"
    [rejected] = baton.entries(baton.keys.event_stream("shipment.scheduling_failed"))
    assert rejected["data"]["reason"] == "over budget"


def test_approval_data_cannot_replace_the_workflow_identity(baton: Baton) -> None:
    cid = build(baton, "running", GATED)
    order_id = baton.workflow(cid)["input"]["order_id"]
    body = {"reason": "ok", "data": {"channel": "ops", "order_id": "someone-else"}}
    response = baton.post(f"/v1/workflows/{cid}/signals/approve", body)
    assert response.status_code in (200, 422), response.get_data(as_text=True)
    if response.status_code == 200:
        [sent] = baton.entries(baton.keys.event_stream("notification.sent"))
        assert sent["correlation_id"] == cid
        assert sent["data"]["order_id"] == order_id, "the outcome names the workflow's own order"


# -- bad requests ----------------------------------------------------------------------------------

EVERY_PATH = ["cancel", "compensate", "retry", "steps/charge_payment/skip", "pause", "resume",
              "deadline", "signals/approve", "signals/reject"]


def _valid_body(path: str) -> dict[str, Any]:
    if path == "deadline":
        return {"reason": "r", "extend_seconds": 60}
    if path.startswith("signals/"):
        return {"reason": "r", "data": {"channel": "c", "reason": "r"}}
    return {"reason": "r"}


@pytest.mark.parametrize("path", EVERY_PATH)
def test_an_intervention_without_a_reason_answers_422(baton: Baton, path: str) -> None:
    cid = build(baton, "running", GATED if path.startswith("signals/") else ORDER)
    before = baton.state(cid)
    for body in ({k: v for k, v in _valid_body(path).items() if k != "reason"},
                 {**_valid_body(path), "reason": ""}, {**_valid_body(path), "reason": None}):
        problem = assert_problem(baton.post(f"/v1/workflows/{cid}/{path}", body), 422)
        assert set(problem["errors"]) == {"reason"}, problem
    assert baton.state(cid) == before


@pytest.mark.parametrize("body", [
    {"reason": "r"},
    {"reason": "r", "deadline": "2030-01-01T00:00:00.000Z", "extend_seconds": 5},
    {"reason": "r", "deadline": "tomorrow"},
    {"reason": "r", "deadline": "2030-01-01T00:00:00"},
    {"reason": "r", "extend_seconds": 0},
    {"reason": "r", "extend_seconds": "60"},
], ids=["neither", "both", "not-a-time", "no-offset", "zero", "string"])
def test_a_bad_deadline_body_answers_422(baton: Baton, body: dict[str, Any]) -> None:
    cid = build(baton, "running", ORDER)
    before = baton.state(cid)
    problem = assert_problem(baton.post(f"/v1/workflows/{cid}/deadline", body), 422)
    assert problem["errors"], problem
    assert baton.state(cid) == before


def test_skipping_an_unknown_step_answers_404(baton: Baton) -> None:
    cid = build(baton, "running", ORDER)
    before = baton.state(cid)
    problem = assert_problem(
        baton.post(f"/v1/workflows/{cid}/steps/no_such_step/skip", {"reason": "r"}), 404)
    assert "no_such_step" in problem["detail"]
    assert baton.state(cid) == before


def test_skipping_a_done_step_is_a_conflict(baton: Baton) -> None:
    cid = build(baton, "running", ORDER)
    before = baton.state(cid)
    assert_problem(baton.post(f"/v1/workflows/{cid}/steps/reserve_inventory/skip", {"reason": "r"}), 409)
    assert baton.state(cid) == before


@pytest.mark.parametrize("path", EVERY_PATH)
def test_an_intervention_on_an_unknown_workflow_answers_404(baton: Baton, path: str) -> None:
    streams = baton.streams()
    assert_problem(baton.post(f"/v1/workflows/nope-{uuid.uuid4().hex[:6]}/{path}", _valid_body(path)),
                   404)
    assert baton.streams() == streams


# -- who may intervene ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EVERY_PATH)
def test_only_an_operator_may_intervene(baton: Baton, path: str) -> None:
    cid = build(baton, "running", GATED if path.startswith("signals/") else ORDER)
    mine = baton.start(token=STARTER)  # a starter may not touch even its own workflow
    for target in (cid, mine):
        before = baton.state(target)
        url = f"/v1/workflows/{target}/{path}"
        for token in (VIEWER, STARTER):
            assert_problem(baton.post(url, _valid_body(path), token), 403)
        assert_problem(baton.post(url, _valid_body(path), None), 401)
        assert_problem(baton.post(url, _valid_body(path), "not-a-token"), 401)
        assert baton.state(target) == before


@pytest.mark.parametrize("path", EVERY_PATH)
def test_authentication_comes_before_validation(baton: Baton, path: str) -> None:
    """Who may not intervene learns nothing about what an intervention needs."""
    cid = build(baton, "running", ORDER)
    url = f"/v1/workflows/{cid}/{path}"
    assert_problem(baton.post(url, {}, None), 401)
    assert_problem(baton.post(url, {}, VIEWER), 403)


def test_the_audit_is_read_like_the_workflow(baton: Baton) -> None:
    cid = build(baton, "paused", ORDER)
    mine = baton.start(token=STARTER)
    assert baton.get(f"/v1/workflows/{cid}/audit", VIEWER).get_json()["items"] == baton.audit(cid)
    assert baton.get(f"/v1/workflows/{mine}/audit", STARTER).status_code == 200
    assert_problem(baton.get(f"/v1/workflows/{cid}/audit", STARTER), 404)
    assert_problem(baton.get(f"/v1/workflows/{cid}/audit", None), 401)
    assert_problem(baton.get("/v1/workflows/nope/audit"), 404)


def test_the_audit_pages_with_a_cursor(baton: Baton) -> None:
    cid = build(baton, "running", ORDER)
    for n in range(3):
        baton.post(f"/v1/workflows/{cid}/deadline", {"reason": f"r{n}", "extend_seconds": 1})
    first = baton.get(f"/v1/workflows/{cid}/audit", limit=2).get_json()
    assert [a["reason"] for a in first["items"]] == ["r0", "r1"] and first["next_cursor"]
    rest = baton.get(f"/v1/workflows/{cid}/audit", limit=2, cursor=first["next_cursor"]).get_json()
    assert [a["reason"] for a in rest["items"]] == ["r2"] and rest["next_cursor"] is None


# -- retrying an orchestrated step, a late success, finding what is late -----------------------------


def price_change_input() -> dict[str, Any]:
    return {"change_id": f"chg-{uuid.uuid4().hex[:8]}", "product_id": f"P-{uuid.uuid4().hex[:8]}",
            "current_price": 10.0, "proposed_price": 11.0, "unit_cost": 6.0, "currency": "EUR"}


def test_retry_of_a_command_step_resends_its_command_with_the_same_id(baton: Baton) -> None:
    """price_change's `evaluate_rules` is orchestrated: the controller sent `price.evaluate`,
    nobody answered; a retry sends the same command again, `attempt` 2, same cause."""
    cid = baton.start("price_change", input=price_change_input())
    stream = baton.keys.command_stream("pricing")
    [first] = [e for e in baton.entries(stream) if e["correlation_id"] == cid]
    assert (first["type"], first["attempt"]) == ("price.evaluate", 1)
    response = baton.post(f"/v1/workflows/{cid}/retry", {"reason": "pricing was down"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == baton.workflow(cid)
    sent = [e for e in baton.entries(stream) if e["correlation_id"] == cid]
    assert [(e["id"], e["attempt"]) for e in sent] == [(first["id"], 1), (first["id"], 2)]
    assert sent[1]["causation_id"] == first["causation_id"] and sent[1]["data"] == first["data"]
    assert [(a["action"], a["actor"], a["reason"]) for a in baton.audit(cid)] == [
        ("retry", "olga", "pricing was down")]


def test_a_success_after_the_compensation_gave_up_resolves_it(baton: Baton) -> None:
    """The tracker, the store and the lifecycle together: an answer that outran the give-up."""
    cid = build(baton, "needs_attention", ORDER)
    assert [c["status"] for c in baton.workflow(cid)["compensations"]] == ["failed"]
    baton.emit("inventory.released", cid, source="inventory")
    wf = baton.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("compensated", "step_failed")
    assert [(c["step"], c["status"]) for c in wf["compensations"]] == [("reserve_inventory", "done")]
    statuses = {s["name"]: s["status"] for s in wf["steps"]}
    assert statuses["reserve_inventory"] == "compensated"


def test_overdue_and_stalled_step_find_what_is_late(database_url: str, redis_url: str,
                                                   tmp_path: Path) -> None:
    hasty = GATED_FLOW.replace("gated_order", "hasty_gate").replace("sla_seconds: 120",
                                                                    "sla_seconds: 1")
    with open_baton(database_url, redis_url, tmp_path, {"hasty_gate": hasty}) as b:
        late = b.start(sla_seconds=1)  # past its own deadline
        gated = b.start("hasty_gate")
        b.emit("inventory.reserved", gated)  # its approval step will be past the step's deadline
        fine = b.start()
        done = b.start(sla_seconds=1)
        for t in ("inventory.reserved", "payment.charged", "shipment.scheduled"):
            b.emit(t, done)
        ours = {late, gated, fine, done}

        def listed(**query: Any) -> set[str]:
            response = b.get("/v1/workflows", **query)
            assert response.status_code == 200, response.get_json()
            return {w["correlation_id"] for w in response.get_json()["items"]} & ours

        assert wait_until(lambda: listed(overdue="true") == {late, gated}, 10, "the deadlines")
        assert listed(overdue="false") == ours
        assert listed(stalled_step="manager_approval") == {gated}
        assert listed(stalled_step="reserve_inventory") == set()
        dry = b.post("/v1/workflows/actions", {"action": "pause", "reason": "look", "dry_run": True,
                                               "filter": {"overdue": True}})
        assert dry.status_code == 200, dry.get_json()
        assert set(dry.get_json()["matched"]) & ours == {late, gated}


def test_retry_re_emits_only_triggers_that_arrived(baton: Baton) -> None:
    """A step's trigger counts as arrived when the step emitting it was skipped; there is nothing
    of it to re-emit: the retry re-emits what did arrive, or answers 409 when nothing did."""
    cid = baton.start()
    baton.emit("payment.charged", cid)
    skip = {"reason": "done by hand"}
    assert baton.post(f"/v1/workflows/{cid}/steps/reserve_inventory/skip", skip).status_code == 200
    shipping = [s for s in baton.workflow(cid)["steps"] if s["name"] == "schedule_shipment"]
    assert shipping[0]["status"] == "active"
    before = baton.entries(baton.keys.event_stream("inventory.reserved"))
    response = baton.post(f"/v1/workflows/{cid}/retry", {"reason": "nudge", "step": "schedule_shipment"})
    assert response.status_code == 200, response.get_json()
    assert baton.entries(baton.keys.event_stream("inventory.reserved")) == before
    charged = [e for e in baton.entries(baton.keys.event_stream("payment.charged"))
               if e["correlation_id"] == cid]
    assert len(charged) == 2 and charged[1]["causation_id"] == charged[0]["id"]

    other = baton.start()
    for step in ("reserve_inventory", "charge_payment"):
        assert baton.post(f"/v1/workflows/{other}/steps/{step}/skip", skip).status_code == 200
    before_state = baton.state(other)
    assert_problem(baton.post(f"/v1/workflows/{other}/retry",
                              {"reason": "nudge", "step": "schedule_shipment"}), 409)
    assert baton.state(other) == before_state


def test_a_sweep_in_chunks_acts_on_every_due_workflow_in_one_pass(baton: Baton) -> None:
    cids = [baton.start() for _ in range(5)]
    later = utcnow() + timedelta(hours=2)  # every one of them past its SLA
    assert sweep_once(baton.services, later, chunk=2) == 5  # chunks of 2, 2 and 1
    baton.drain()
    for cid in cids:
        wf = baton.workflow(cid)
        assert (wf["status"], wf["reason"]) in {("compensating", "sla_breached"),
                                                ("compensated", "sla_breached")}, wf


def test_a_workflow_the_sweep_cannot_decide_needs_attention_and_the_others_go_on(baton: Baton) -> None:
    """One whose flow version is no longer loaded, one whose compensation command fails
    validation (its step's recorded result lost its fields): each is set aside with a reason an
    operator can read, in the same pass that compensates the good one; GET and list answer."""
    from sqlalchemy import select, update

    from controller.db.tables import steps, workflows

    good, unloaded, invalid = (build(baton, "running", ORDER) for _ in range(3))
    with baton.services.engine.connect() as conn:
        kept = conn.execute(select(steps.c.result).where(
            steps.c.correlation_id == invalid, steps.c.name == "reserve_inventory")).scalar_one()
    with baton.services.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.correlation_id == unloaded)
                     .values(flow_version=99))
        conn.execute(update(steps).where(steps.c.correlation_id == invalid,
                                         steps.c.name == "reserve_inventory")
                     .values(result={"id": "lost", "data": {}}))
    assert baton.sweep(utcnow() + timedelta(hours=2)) == 3  # every one past its SLA, in one chunk
    assert baton.workflow(good)["status"] == "compensating"
    for cid, problem in ((unloaded, "flow order_fulfillment version 99 is not loaded"),
                         (invalid, "InvalidMessage: invalid message: ")):
        wf = baton.workflow(cid)
        assert (wf["status"], wf["reason"]) == ("needs_attention", None), wf
        [set_aside] = baton.audit(cid)
        assert (set_aside["actor"], set_aside["action"]) == ("sweeper", "needs_attention")
        assert set_aside["reason"].startswith(f"the sweeper cannot decide it: {problem}"), set_aside
    releases = baton.entries(baton.keys.command_stream("inventory"))
    assert [e for e in releases if e["correlation_id"] == invalid] == []  # nothing half-decided sent
    listed = baton.get("/v1/workflows", limit=10)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert {good, unloaded, invalid} <= {w["correlation_id"] for w in listed.get_json()["items"]}
    assert baton.sweep(utcnow() + timedelta(hours=3)) <= 1  # nothing is due for the set-aside ones
    # An operator can act on them: the unloaded flow is named (409), the mended one compensates.
    refused = baton.post(f"/v1/workflows/{unloaded}/compensate", {"reason": "try"})
    assert refused.status_code == 409, refused.get_json()
    assert "order_fulfillment v99, which is not loaded" in refused.get_json()["detail"]
    with baton.services.engine.begin() as conn:
        conn.execute(update(steps).where(steps.c.correlation_id == invalid,
                                         steps.c.name == "reserve_inventory").values(result=kept))
    mended = baton.post(f"/v1/workflows/{invalid}/compensate", {"reason": "result restored"})
    assert mended.status_code == 200, mended.get_json()
    assert mended.get_json()["status"] == "compensating"
    assert [e["type"] for e in baton.entries(baton.keys.command_stream("inventory"))
            if e["correlation_id"] == invalid] == ["inventory.release"]


def test_an_intervention_while_redis_is_gone_answers_and_leaves_its_commands_to_the_relay(
        baton: Baton) -> None:
    """The change is committed with its outbox rows; a failed publish is the relay's to finish,
    not a 500 for a change that happened."""
    from participants.runtime import outbox
    from tests.system import free_port

    cid = build(baton, "running", ORDER)
    live = baton.services.redis
    baton.services.redis = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    try:
        response = baton.post(f"/v1/workflows/{cid}/cancel", {"reason": "stop it"})
    finally:
        baton.services.redis.close()
        baton.services.redis = live
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "compensating"
    stream = baton.keys.command_stream("inventory")
    assert baton.entries(stream) == []
    assert outbox.relay_once(baton.services.engine, live, grace=timedelta(0)) >= 1
    [release] = [e for e in baton.entries(stream) if e["correlation_id"] == cid]
    assert (release["type"], release["attempt"]) == ("inventory.release", 1)


def test_a_workflow_the_tracker_cannot_decide_is_set_aside_its_events_recorded_and_the_others_go_on(
        baton: Baton) -> None:
    """An event for a workflow whose flow version is no longer loaded: recorded on its timeline,
    the workflow set aside once (needs_attention, audited by the tracker), later events recorded
    only; another workflow's event goes on being decided."""
    from sqlalchemy import update

    from controller.db.tables import workflows

    good, unloaded = build(baton, "running", ORDER), build(baton, "running", ORDER)
    with baton.services.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.correlation_id == unloaded)
                     .values(flow_version=99))
    baton.emit("payment.charged", unloaded)
    baton.emit("shipment.scheduled", unloaded)
    baton.emit("payment.charged", good)
    baton.emit("shipment.scheduled", good)
    assert baton.workflow(good)["status"] == "completed"
    wf = baton.workflow(unloaded)
    assert wf["status"] == "needs_attention", wf
    [set_aside] = baton.audit(unloaded)
    assert (set_aside["actor"], set_aside["action"]) == ("tracker", "needs_attention")
    assert set_aside["reason"] == ("the tracker cannot decide it: flow order_fulfillment version 99 "
                                   "is not loaded")
    assert {"payment.charged", "shipment.scheduled"} <= {m["type"] for m in baton.timeline(unloaded)}
    dead = baton.entries(baton.keys.dead_stream("controller"))
    assert [e for e in dead if e.get("correlation_id") == unloaded] == []
