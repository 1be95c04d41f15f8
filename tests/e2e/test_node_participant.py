"""End to end with a participant in another language: the Procfile's controller processes and the
Python reference participants, with `payment` replaced by examples/node-payment (Node.js on a plain
Redis client, written from docs/wire-format.md alone), driven through the REST API and checked on
the workflows and on the Node participant's own ledger."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.cli.procfile import ROOT
from tests.system import System, order_input, wait_until

pytestmark = pytest.mark.slow
EXAMPLE = ROOT / "examples" / "node-payment"
WAIT = 60.0  # two shared cores: generous, and polled
# The streams whose entries the test reads as node wrote them: a group of the test's own that
# reads nothing keeps the clock's trimming (every 30 s) from removing them first.
OBSERVED = ("order.placed", "payment.charged", "payment.refunded")


def node_line() -> str:
    """The Procfile line that runs the example; fails (never skips) when it cannot run."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: examples/node-payment needs Node.js 18 or later "
                    "(bash scripts/test.sh installs it with apt-get when run as root)", pytrace=False)
    if not (EXAMPLE / "node_modules" / "ioredis" / "package.json").is_file():
        pytest.fail("examples/node-payment/node_modules is missing: run "
                    "`npm ci --prefix examples/node-payment` (bash scripts/test.sh does)", pytrace=False)
    return f"{node} examples/node-payment/index.js"


@pytest.fixture
def system(tmp_path: Path, pg_database_url: str, pg_participant_url: str,
           redis_url: str) -> Iterator[System]:
    sys_ = System(tmp_path, pg_database_url, redis_url, pg_participant_url,
                  lines={"payment": node_line()})
    try:
        for event_type in OBSERVED:  # the clock trims what every group acknowledged: keep them
            sys_.redis.xgroup_create(sys_.keys.event_stream(event_type), "observer", id="0",
                                     mkstream=True)
        sys_.start()  # the controller's processes, inventory, shipping, notification and node payment
        wait_until(lambda: "payment" in groups(sys_, "order.placed"), WAIT, "node payment's groups")
        yield sys_
    finally:
        sys_.close_cleanly()  # node too must stop on SIGTERM with exit code 0


def groups(system: System, event_type: str) -> set[str]:
    found: Any = system.redis.xinfo_groups(system.keys.event_stream(event_type))
    return {g["name"] for g in found}


def ledger(system: System, order_id: str) -> list[dict[str, Any]]:
    """The Node participant's append-only ledger lines for one order."""
    lines: Any = system.redis.lrange(f"{system.prefix}:payment:ledger", 0, -1)
    return [entry for entry in map(json.loads, lines) if entry["order_id"] == order_id]


def events(system: System, event_type: str, cid: str) -> list[dict[str, str]]:
    found: Any = system.redis.xrange(system.keys.event_stream(event_type))
    return [fields for _, fields in found if fields["correlation_id"] == cid]


def append(system: System, stream: str, fields: dict[str, str]) -> str:
    """XADD an entry, as any writer on the wire does."""
    entry_id: Any = system.redis.xadd(stream, dict[Any, Any](fields))
    return str(entry_id)


def post(system: System, body: dict[str, Any], key: str) -> tuple[int, str]:
    r = system.http.post(f"{system.base}/v1/workflows", json=body,
                         headers={"Idempotency-Key": key}, timeout=10)
    assert r.status_code in (200, 201), r.text
    return r.status_code, r.json()["correlation_id"]


TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def assert_envelope(fields: dict[str, str], cause: dict[str, Any]) -> None:
    """Every field of an answer, as the wire format asks for (section 5)."""
    assert UUID4.fullmatch(fields["id"]), fields
    assert (fields["kind"], fields["version"], fields["source"]) == ("event", "1", "payment")
    assert fields["causation_id"] == cause["id"]
    assert TIME.fullmatch(fields["occurred_at"]), fields
    assert isinstance(json.loads(fields["data"]), dict)


def test_node_payment_charges_declines_refunds_and_dedupes(system: System) -> None:
    ok = system.start_order(input=order_input(order_id="ord-node-ok"))
    broke = system.start_order(input=order_input(order_id="ord-node-broke", customer="cust-broke"))
    bulky = [{"product_id": "SKU-002", "quantity": 150, "unit_price": 1.0}]  # past the parcel limit
    refunded = system.start_order(input=order_input(order_id="ord-node-refund", items=bulky))
    body = {"flow": "order_fulfillment", "input": order_input(order_id="ord-node-twice")}
    key = f"key-{uuid.uuid4().hex}"
    first, twice = post(system, body, key)
    again, same = post(system, body, key)  # a client's retry of the same start
    assert (first, again, same) == (201, 200, twice)

    # completes: node's payment.charged joins inventory's reservation, and notification reads it
    wf = system.wait_status(ok, "completed", timeout=WAIT)
    assert system.steps(wf)["charge_payment"] == "done"
    placed = next(m for m in system.timeline(ok) if m["type"] == "order.placed")
    [charged] = events(system, "payment.charged", ok)
    assert_envelope(charged, placed)
    assert charged["correlation_id"] == ok
    data = json.loads(charged["data"])
    assert (data["order_id"], data["amount"], data["currency"]) == ("ord-node-ok", 20.0, "EUR")
    assert [(e["kind"], e["status"], e["amount"]) for e in ledger(system, "ord-node-ok")] == [
        ("charge", "charged", 2000)]
    recipient = wait_until(lambda: system.query(
        "notification", "SELECT recipient FROM notification_messages WHERE order_id = 'ord-node-ok'"),
        WAIT, "the confirmation e-mail")
    assert recipient[0][0] == "cust-gold@customers.example"

    # declined: the charge fails, and the reservation is released
    wf = system.wait_status(broke, "compensated", timeout=WAIT)
    assert wf["reason"] == "step_failed"
    assert system.steps(wf)["charge_payment"] == "failed"
    assert system.steps(wf)["reserve_inventory"] == "compensated"
    assert [(c["step"], c["command"], c["status"]) for c in wf["compensations"]] == [
        ("reserve_inventory", "inventory.release", "done")]
    [failed] = [m for m in system.timeline(broke) if m["type"] == "payment.charge_failed"]
    assert failed["source"] == "payment"
    assert failed["data"]["reason"] == "card declined: credit limit 0.00 EUR exceeded by 20.00"
    assert ledger(system, "ord-node-broke") == []

    # charged, then refunded by command when shipping fails
    wf = system.wait_status(refunded, "compensated", timeout=WAIT)
    assert system.steps(wf)["schedule_shipment"] == "failed"
    assert system.steps(wf)["charge_payment"] == "compensated"
    assert ("charge_payment", "payment.refund", "done") in [
        (c["step"], c["command"], c["status"]) for c in wf["compensations"]]
    sent = [c for c in system.commands("payment") if c["correlation_id"] == refunded]
    refund, answers = sent[0], events(system, "payment.refunded", refunded)
    assert len(answers) == len(sent)  # every attempt answered (one, unless the machine crawled)
    assert_envelope(answers[0], refund)
    charge_data = json.loads(events(system, "payment.charged", refunded)[0]["data"])
    assert json.loads(answers[0]["data"]) == {"order_id": "ord-node-refund",
                                              "payment_id": charge_data["payment_id"], "amount": 150.0}
    assert [e["kind"] for e in ledger(system, "ord-node-refund")] == ["charge", "refund"]

    # a retried command: the next attempt of the same refund is answered again, refunding nothing more
    append(system, system.keys.command_stream("payment"), {**refund, "attempt": str(len(sent) + 1)})
    wait_until(lambda: len(events(system, "payment.refunded", refunded)) == len(sent) + 1, WAIT,
               "the retried attempt's answer")
    retried = events(system, "payment.refunded", refunded)[-1]
    assert_envelope(retried, refund)
    assert json.loads(retried["data"]) == json.loads(answers[0]["data"])
    assert [e["kind"] for e in ledger(system, "ord-node-refund")] == ["charge", "refund"]

    # a duplicate start and a redelivered start event: one workflow, charged once
    system.wait_status(twice, "completed", timeout=WAIT)
    starts = [m for m in system.timeline(twice) if m["type"] == "order.placed"]
    assert len(starts) == 1
    [start] = events(system, "order.placed", twice)
    append(system, system.keys.event_stream("order.placed"), start)  # the same entry, delivered again
    wait_until(lambda: len(events(system, "payment.charged", twice)) == 2, WAIT, "the re-sent answer")
    first_answer, resent = events(system, "payment.charged", twice)
    assert resent == first_answer  # the stored answer again, with its id: the controller dedupes it
    assert [e["kind"] for e in ledger(system, "ord-node-twice")] == ["charge"]
    assert system.workflow(twice)["status"] == "completed"
    # the controller validated every answer node sent: none went to its dead letters
    assert system.redis.xlen(system.keys.dead_stream("controller")) == 0


def test_node_payment_dead_letters_a_malformed_entry_and_reclaims_a_stale_one(system: System) -> None:
    stream = system.keys.event_stream("order.placed")
    message_id = str(uuid.uuid4())
    bad = {"id": message_id, "kind": "event", "type": "order.placed", "version": "01",
           "correlation_id": "wf-bad", "causation_id": message_id,
           "occurred_at": "2026-12-01T15:05:11.123Z", "source": "test", "data": "{}"}
    entry_id = append(system, stream, bad)
    dead: Any = wait_until(lambda: system.redis.xrange(system.keys.dead_stream("payment")),
                           WAIT, "the dead letter")
    [(_, fields)] = dead
    assert {k: fields[k] for k in bad} == bad  # the original entry, unchanged
    assert fields["dead_reason"].startswith("invalid message: version: ")
    assert (fields["dead_stream"], fields["dead_entry_id"], fields["dead_participant"],
            fields["dead_deliveries"]) == (stream, entry_id, "payment", "1")
    assert fields["dead_consumer"] and TIME.fullmatch(fields["dead_at"])
    wait_until(lambda: system.redis.xpending(stream, "payment")["pending"] == 0, WAIT, "the ack")

    # an entry read by a consumer that died before acknowledging it: reclaimed at the next start
    assert system.procs.stop("payment") == 0  # SIGTERM: a clean exit
    cid = system.start_order(input=order_input(order_id="ord-node-stale"))

    def read_by_a_dead_consumer() -> bool:
        found: Any = system.redis.xreadgroup("payment", "ghost-1", {stream: ">"}, count=100)
        return any(f["correlation_id"] == cid for _, entries in found for _, f in entries)
    wait_until(read_by_a_dead_consumer, WAIT, "the start event to be read by ghost-1")
    system.procs.start("payment")
    wf = system.wait_status(cid, "completed", timeout=WAIT)
    assert system.steps(wf)["charge_payment"] == "done"
    assert [e["kind"] for e in ledger(system, "ord-node-stale")] == ["charge"]
    wait_until(lambda: system.redis.xpending(stream, "payment")["pending"] == 0, WAIT, "no entry pending")
