"""End to end: the Procfile's real processes, a real Redis and a real database, driven through the
REST API, asserting on workflow state and on the participants' own ledgers."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.system import PARTICIPANTS, TOKENS, System, order_input, wait_until

pytestmark = pytest.mark.slow
FLOW_FILE = Path(__file__).parents[2] / "config" / "flows" / "order_fulfillment.yaml"


SECRET = f"pw-{uuid.uuid4().hex}"  # the test server trusts loopback: any password connects


def with_password(url: str) -> str:
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


@pytest.fixture
def system(tmp_path: Path, pg_database_url: str, pg_participant_url: str,
           redis_url: str) -> Iterator[System]:
    sys_ = System(tmp_path, with_password(pg_database_url), redis_url,
                  with_password(pg_participant_url))
    try:
        yield sys_
    finally:
        sys_.close_cleanly()
        for log in (tmp_path / "logs").iterdir():  # no password, no bearer token in any log
            text = log.read_text(errors="replace")
            assert SECRET not in text, log.name
            assert not any(token in text for token in TOKENS.values()), log.name


def test_each_outcome_of_an_order_on_one_system(system: System) -> None:
    """Four orders at once on one system (a system costs about 10 CPU s to start): one completes,
    a declined card releases the reservation, an out-of-stock item refunds the payment, and a
    shipment over the parcel limit compensates in reverse order of completion."""
    system.start()
    happy = system.start_order(input=order_input(order_id="ord-happy"))
    declined = system.start_order(input=order_input(
        customer="cust-broke", items=[{"product_id": "SKU-003", "quantity": 2, "unit_price": 10.0}]))
    out_of_stock = system.start_order(input=order_input(
        order_id="ord-oos", items=[{"product_id": "SKU-RARE-2", "quantity": 1, "unit_price": 5.0}]))
    unshippable = system.start_order(input=order_input(
        items=[{"product_id": "SKU-002", "quantity": 150, "unit_price": 1.0}]))
    _happy_path_completes_every_step(system, happy)
    _declined_card_releases_the_reservation(system, declined)
    _out_of_stock_refunds_the_payment(system, out_of_stock)
    _shipping_failure_compensates_in_reverse_completion_order(system, unshippable)


def _happy_path_completes_every_step(system: System, cid: str) -> None:
    system.wait_status(cid, "completed")
    wf = wait_until(lambda: (w := system.workflow(cid)) and
                    system.steps(w)["send_confirmation"] == "done" and w, what="confirmation")
    assert system.steps(wf) == {"reserve_inventory": "done", "charge_payment": "done",
                                "schedule_shipment": "done", "send_confirmation": "done"}
    assert wf["reason"] is None and wf["finished_at"]
    timeline = system.timeline(cid)
    by_type = {m["type"]: m for m in timeline}
    start = by_type["order.placed"]
    assert start["causation_id"] == start["id"]
    assert by_type["inventory.reserved"]["causation_id"] == start["id"]
    assert by_type["payment.charged"]["causation_id"] == start["id"]
    assert by_type["shipment.scheduled"]["causation_id"] in (
        by_type["inventory.reserved"]["id"], by_type["payment.charged"]["id"])
    charges = system.query("payment", "SELECT count(*) FROM payment_ledger WHERE order_id = :o",
                           o="ord-happy")
    assert charges[0][0] == 1


def _declined_card_releases_the_reservation(system: System, cid: str) -> None:
    wf = system.wait_status(cid, "compensated")
    assert wf["reason"] == "step_failed"
    steps = system.steps(wf)
    assert steps["charge_payment"] == "failed"
    assert steps["reserve_inventory"] == "compensated"
    assert [(c["step"], c["command"], c["status"]) for c in wf["compensations"]] == [
        ("reserve_inventory", "inventory.release", "done")]
    stock = system.query("inventory", "SELECT available FROM inventory_stock WHERE product_id='SKU-003'")
    assert stock[0][0] == 1_000_000  # reserved, then given back


def _out_of_stock_refunds_the_payment(system: System, cid: str) -> None:
    wf = system.wait_status(cid, "compensated")
    steps = system.steps(wf)
    assert steps["reserve_inventory"] == "failed"
    assert steps["charge_payment"] == "compensated"
    refunds = system.query("payment", "SELECT kind, status FROM payment_ledger WHERE order_id = :o "
                           "ORDER BY kind", o="ord-oos")
    assert [tuple(r) for r in refunds] == [("charge", "refunded"), ("refund", "refunded")] or \
        sorted(r[0] for r in refunds) == ["charge", "refund"]


def _shipping_failure_compensates_in_reverse_completion_order(system: System, cid: str) -> None:
    wf = system.wait_status(cid, "compensated")
    assert system.steps(wf)["schedule_shipment"] == "failed"
    timeline = system.timeline(cid)
    step_of = {"inventory.reserved": "reserve_inventory", "payment.charged": "charge_payment"}
    completed = [step_of[m["type"]] for m in timeline if m["type"] in step_of]  # received order
    assert [c["step"] for c in wf["compensations"]] == completed[::-1]
    command_of = {"reserve_inventory": "inventory.release", "charge_payment": "payment.refund"}
    commands = [m["type"] for m in timeline if m["kind"] == "command"]
    assert commands == [command_of[s] for s in completed[::-1]]
    answers = [m["type"] for m in timeline if m["type"] in ("inventory.released", "payment.refunded")]
    # each compensation waited for the previous one's answer
    assert answers == [{"inventory.release": "inventory.released",
                        "payment.refund": "payment.refunded"}[c] for c in commands]


def test_sla_breach_compensates_and_a_late_shipment_is_cancelled(system: System) -> None:
    system.start("web", "tracker", "relay", "clock", "worker", "alerts",
                 "inventory", "payment", "notification")
    cid = system.start_order(sla_seconds=2)
    wf = system.wait_status(cid, "compensated", timeout=30)
    assert wf["reason"] == "sla_breached"
    assert {c["step"] for c in wf["compensations"]} == {"reserve_inventory", "charge_payment"}
    assert all(c["status"] == "done" for c in wf["compensations"])
    system.start("shipping")  # catches up: schedules late, and the controller cancels it
    wait_until(lambda: system.steps(system.workflow(cid))["schedule_shipment"] == "compensated",
               30, "the late shipment to be cancelled")
    wf = system.wait_status(cid, "compensated")
    cancelled = system.query("shipping", "SELECT status FROM shipping_shipments WHERE "
                             "correlation_id = :c", c=cid)
    assert [r[0] for r in cancelled] == ["cancelled"]


def test_an_orchestrated_link(tmp_path: Path, pg_database_url: str, pg_participant_url: str,
                              redis_url: str) -> None:
    """order_fulfillment v2 with charge_payment switched to kind `command`: the controller's
    command drives the step, is re-sent with the same id when unanswered, and charges once."""
    flows = tmp_path / "flows"
    flows.mkdir()
    text = FLOW_FILE.read_text().replace("version: 1", "version: 2").replace(
        "  - name: charge_payment\n    kind: event\n",
        "  - name: charge_payment\n    kind: command\n    command: payment.charge\n")
    (flows / "order_fulfillment_v2.yaml").write_text(text + "command_timeout_seconds: 1\n")
    system = System(tmp_path, pg_database_url, redis_url, pg_participant_url,
                    extra_env={"BATON_FLOWS_DIRS": str(flows)})
    try:
        system.start()
        # Everything up: the payment participant reacts to order.placed as well (it does not know
        # the flow); its charge is per order, so answering the command too charges nothing more.
        cid = system.start_order(input=order_input(order_id="ord-both"))
        wf = system.wait_status(cid, "completed")
        assert wf["flow_version"] == 2
        [command] = wait_until(lambda: [m for m in system.timeline(cid) if m["kind"] == "command"])
        assert command["type"] == "payment.charge"
        placed = next(m for m in system.timeline(cid) if m["type"] == "order.placed")
        wait_until(lambda: {m["causation_id"] for m in system.timeline(cid) if m["type"] ==
                            "payment.charged"} == {placed["id"], command["id"]}, 30, "both answers")
        assert charges(system, "ord-both") == 1

        # Payment down: the command goes unanswered and is sent again after its timeout.
        system.procs.stop("payment")
        cid = system.start_order(input=order_input(order_id="ord-command"))
        sent = wait_until(lambda: (c := [e for e in system.commands("payment")
                                         if e["correlation_id"] == cid])[1:] and c, 30, "a retry")
        assert [(c["type"], c["attempt"]) for c in sent[:2]] == [("payment.charge", "1"),
                                                                ("payment.charge", "2")]
        assert sent[0]["id"] == sent[1]["id"]
        assert sent[1]["occurred_at"] >= sent[0]["deadline"]  # re-sent once the first timed out
        assert system.steps(system.workflow(cid))["charge_payment"] == "active"
        # From here on payment takes charges by command only: its group on order.placed moves past
        # this order, so the controller's command is the one way the charge can happen.
        system.redis.xgroup_setid(system.keys.event_stream("order.placed"), "payment", "$")
        system.procs.start("payment")
        wf = system.wait_status(cid, "completed")
        assert system.steps(wf)["charge_payment"] == "done"
        timeline = system.timeline(cid)
        charged = [m for m in timeline if m["type"] == "payment.charged"]
        assert charged and all(m["causation_id"] == sent[0]["id"] for m in charged)
        assert [m["id"] for m in timeline if m["kind"] == "command"] == [sent[0]["id"]]
        assert charges(system, "ord-command") == 1
    finally:
        system.close_cleanly()


def charges(system: System, order_id: str) -> int:
    rows = system.query("payment", "SELECT count(*) FROM payment_ledger WHERE order_id = :o "
                        "AND kind = 'charge'", o=order_id)
    count: int = rows[0][0]
    return count


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_step_deadline_breach_and_refunds_that_fail_or_go_unanswered(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_url: str) -> None:
    """A flow whose schedule_shipment has a 3 s deadline of its own, shipping never running:
    - with every other participant up, the step's deadline (not the workflow's 300 s) is breached and
      the done steps are compensated in reverse order of completion;
    - with payment down (the test charges in its place, over raw Redis), a refund that goes
      unanswered, and one answered `payment.refund_failed` at every attempt, each end
      needs_attention after exactly the configured 3 attempts, and the alert webhook (a real HTTP
      server) receives both workflows."""
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flows = tmp_path / "flows"
    flows.mkdir()
    hook = f"http://127.0.0.1:{server.server_port}/alerts"
    text = FLOW_FILE.read_text().replace("version: 1", "version: 3").replace(
        "  - name: schedule_shipment\n    kind: event\n",
        "  - name: schedule_shipment\n    kind: event\n    sla_seconds: 3\n")
    (flows / "order_fulfillment_v3.yaml").write_text(text + (
        f"alert_webhook: {hook}\ncommand_timeout_seconds: 0.3\ncommand_max_attempts: 3\n"))
    system = System(tmp_path, pg_database_url, redis_url, pg_participant_url,
                    extra_env={"BATON_FLOWS_DIRS": str(flows)})
    try:
        system.start("web", "tracker", "relay", "clock", "worker", "alerts", "inventory", "payment")
        late = system.start_order(input=order_input(order_id="ord-step-late"))
        wf = system.wait_status(late, "compensated", timeout=30)
        assert wf["reason"] == "sla_breached" and wf["flow_version"] == 3
        ship = next(s for s in wf["steps"] if s["name"] == "schedule_shipment")
        assert ts(ship["deadline"]) - ts(ship["started_at"]) == timedelta(seconds=3)
        assert ts(wf["deadline"]) - ts(wf["started_at"]) == timedelta(seconds=300)
        assert ts(ship["deadline"]) <= ts(wf["finished_at"]) < ts(wf["deadline"])
        step_of = {"inventory.reserved": "reserve_inventory", "payment.charged": "charge_payment"}
        timeline = system.timeline(late)
        completed = [step_of[m["type"]] for m in timeline if m["type"] in step_of]
        assert [(c["step"], c["status"]) for c in wf["compensations"]] == [
            (step, "done") for step in completed[::-1]]
        assert [m["type"] for m in timeline if m["kind"] == "command"] == [
            {"reserve_inventory": "inventory.release", "charge_payment": "payment.refund"}[step]
            for step in completed[::-1]]
        assert system.steps(wf) == {"reserve_inventory": "compensated", "charge_payment": "compensated",
                                    "schedule_shipment": "active", "send_confirmation": "active"}
        assert _Hook.received == []  # compensated: nobody is alerted

        system.procs.stop("payment")
        unanswered = system.start_order(input=order_input(order_id="ord-unanswered"))
        refused = system.start_order(input=order_input(order_id="ord-refund-fails"))
        for cid, order_id in ((unanswered, "ord-unanswered"), (refused, "ord-refund-fails")):
            wait_until(lambda: system.steps(system.workflow(cid))["reserve_inventory"] == "done")  # noqa: B023
            placed = next(m for m in system.timeline(cid) if m["type"] == "order.placed")
            publish(system, "payment.charged", cid, placed["id"], {  # charged last: refunded first
                "order_id": order_id, "payment_id": f"pay-{order_id}", "amount": 20.0, "currency": "EUR"})
        answered: list[dict[str, str]] = []

        def refuse_refunds() -> bool:
            for command in system.commands("payment"):
                if command["correlation_id"] == refused and command not in answered:
                    answered.append(command)
                    publish(system, "payment.refund_failed", refused, command["id"],
                            {"order_id": "ord-refund-fails", "reason": "the card was closed"})
            return all(system.workflow(c)["status"] == "needs_attention" for c in (unanswered, refused))
        wait_until(refuse_refunds, 40, "both workflows to need attention")

        for cid in (unanswered, refused):
            wf = system.workflow(cid)
            assert wf["reason"] == "sla_breached"
            assert [(c["command"], c["status"], c["attempts"]) for c in wf["compensations"]] == [
                ("payment.refund", "failed", 3), ("inventory.release", "pending", 0)]
            sent = [c for c in system.commands("payment") if c["correlation_id"] == cid]
            assert [(c["type"], c["attempt"]) for c in sent] == [
                ("payment.refund", "1"), ("payment.refund", "2"), ("payment.refund", "3")]
            assert len({c["id"] for c in sent}) == 1  # retries keep the id
        assert answered == [c for c in system.commands("payment") if c["correlation_id"] == refused]
        refusals = [m for m in system.timeline(refused) if m["type"] == "payment.refund_failed"]
        assert len(refusals) == 3
        wait_until(lambda: len(_Hook.received) >= 2, 30, "the alert webhook")
        assert sorted((a["workflow"]["correlation_id"], a["workflow"]["status"]) for a in _Hook.received) \
            == sorted([(unanswered, "needs_attention"), (refused, "needs_attention")])
    finally:
        server.shutdown()
        server.server_close()
        system.close_cleanly()


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def publish(system: System, message_type: str, cid: str, causation_id: str, data: dict[str, Any]) -> None:
    """An event from `payment` as any participant writes it: the contract's wire format, by hand."""
    system.redis.xadd(system.keys.event_stream(message_type), {
        "id": str(uuid.uuid4()), "kind": "event", "type": message_type, "version": "1",
        "correlation_id": cid, "causation_id": causation_id,
        "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": "payment", "data": json.dumps(data)})


@pytest.mark.parametrize("victim", ["inventory"])
def test_kill_9_of_a_participant_mid_handler_is_processed_once(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_url: str,
        victim: str) -> None:
    system = System(tmp_path, pg_database_url, redis_url, pg_participant_url)
    try:
        system.start("web", "tracker", "relay", "clock", "worker", "alerts",
                     *(p for p in PARTICIPANTS if p != victim))
        system.procs.start(victim, {"BATON_CRASH_POINTS": "runtime.in_handler"})
        cid = system.start_order(input=order_input(order_id="ord-crash"))
        wait_until(lambda: system.procs.running[victim].poll() is not None, 30, "the crash")
        system.procs.running.pop(victim)
        system.procs.start(victim)  # a new consumer reclaims the entry after the visibility timeout
        system.wait_status(cid, "completed", timeout=40)
        rows = system.query("inventory", "SELECT count(*) FROM inventory_reservations "
                            "WHERE order_id = 'ord-crash'")
        assert rows[0][0] == 1
    finally:
        system.close_cleanly()
