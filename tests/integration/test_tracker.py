"""The tracker in-process, on real Redis and both databases: duplicates, disorder, early events,
dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from config.flows import Catalog, load_catalog
from config.settings import Settings
from contracts import lifecycle_events
from contracts.envelope import Envelope, decode_fields, new_event
from contracts.payloads import Registry
from contracts.registry import default_registry
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.db import migrate, store
from controller.db.tables import messages
from controller.domain import lifecycle
from controller.service import sweep as sweeper
from controller.service.bootstrap import Services
from controller.service.start import StartRequest, start_workflow
from controller.service.track import build_tracker
from participants.runtime.connect import connect
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime
from participants.runtime.tables import outbox as outbox_table
from tests.system import report_facts_as_rebuilt

State = tuple[str, str | None, dict[str, str], dict[str, str]]


def order_input() -> dict[str, Any]:
    return {"order_id": f"ord-{uuid.uuid4().hex[:8]}", "customer_id": "cust-1", "total_amount": 20.0,
            "currency": "EUR", "items": [{"product_id": "SKU-1", "quantity": 2, "unit_price": 10.0}]}


def payload(message_type: str, order_id: str) -> dict[str, Any]:
    data: dict[str, dict[str, Any]] = {
        "inventory.reserved": {"reservations": [
            {"reservation_id": "r-1", "product_id": "SKU-1", "quantity": 2}]},
        "payment.charged": {"payment_id": "p-1", "amount": 20.0, "currency": "EUR"},
        "shipment.scheduled": {"shipment_id": "s-1", "estimated_delivery": "2026-11-25"},
        "notification.sent": {"channel": "email"},
        "inventory.released": {"released_reservations": ["r-1"]},
        "payment.refunded": {"payment_id": "p-1", "amount": 20.0},
        "shipment.cancelled": {"shipment_id": "s-1"},
    }
    return {"order_id": order_id, **data.get(message_type, {"reason": "it did not work"})}


SOURCE = {"inventory": "inventory", "payment": "payment", "shipment": "shipping",
          "notification": "notification"}


@dataclass
class Controller:
    engine: Engine
    client: redis.Redis
    keys: Keys
    catalog: Catalog
    registry: Registry
    runtime: Runtime

    def start(self, cid: str | None = None) -> Envelope:
        """Start a workflow, publish its outbox rows, let the tracker see them; the start event."""
        request = StartRequest("order_fulfillment", order_input(), actor="test",
                               correlation_id=cid or f"wf-{uuid.uuid4().hex[:12]}")
        started = start_workflow(self.services(), request, utcnow())
        assert started.created
        start = started.messages[0]
        assert start.type == "order.placed" and start.correlation_id == started.correlation_id
        self.handle_next()
        return start

    def services(self) -> Services:
        return Services(Settings(stream_prefix=self.keys.prefix), self.engine, self.client,
                        self.catalog, self.registry, self.keys)

    def event(self, message_type: str, start: Envelope) -> Envelope:
        """A participant's event about the workflow `start` began, caused by its start event."""
        return new_event(message_type, payload(message_type, start.data["order_id"]),
                         correlation_id=start.correlation_id, causation_id=start.id,
                         source=SOURCE[message_type.split(".")[0]])

    def xadd(self, envelope: Envelope) -> Envelope:
        self.client.xadd(self.keys.event_stream(envelope.type), envelope.to_fields())  # type: ignore[arg-type]
        return envelope

    def deliver(self, *envelopes: Envelope) -> None:
        """Each envelope on its stream, handled before the next is sent (so order is ours)."""
        for envelope in envelopes:
            self.xadd(envelope)
            self.handle_next()

    def handle_next(self) -> None:
        """Poll until an entry is handled. The tracker writes to no stream it reads (commands and
        announcements go elsewhere), so one entry in means one entry handled, with no idle poll:
        an idle blocking read costs up to a Redis timer tick."""
        for _ in range(20):
            if self.runtime.poll():
                return
        raise AssertionError("the tracker handled nothing")

    def drain(self) -> None:
        for _ in range(50):
            if self.runtime.poll() == 0:
                return
        raise AssertionError("the tracker never went idle")

    def state(self, cid: str) -> State:
        with self.engine.connect() as conn:
            wf = store.load(conn, cid)
        assert wf is not None, f"no workflow {cid}"
        return (wf.status, wf.reason, {n: s.status for n, s in wf.steps.items()},
                {n: c.status for n, c in wf.compensations.items()})

    def timeline(self, cid: str) -> list[tuple[str, str, str]]:
        query = (select(messages.c.id, messages.c.kind, messages.c.type)
                 .where(messages.c.correlation_id == cid).order_by(messages.c.seq))
        with self.engine.connect() as conn:
            return [(r.id, r.kind, r.type) for r in conn.execute(query)]

    def stream(self, key: str) -> list[tuple[str, dict[str, str]]]:
        entries: Any = self.client.xrange(key)
        return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in entries]

    def commands_to(self, participant: str, cid: str) -> list[Envelope]:
        found = [decode_fields(f) for _, f in self.stream(self.keys.command_stream(participant))]
        return [c for c in found if c.correlation_id == cid]

    def announced(self, message_type: str, cid: str) -> list[Envelope]:
        found = [decode_fields(f) for _, f in self.stream(self.keys.event_stream(message_type))]
        return [e for e in found if e.correlation_id == cid]

    def answer(self, command: Envelope, answer_type: str) -> Envelope:
        made = new_event(answer_type, payload(answer_type, command.data["order_id"]),
                         correlation_id=command.correlation_id, causation_id=command.id,
                         source=command.target or "")
        self.deliver(made)
        return made


@pytest.fixture
def controller(database_url: str, redis_url: str) -> Iterator[Controller]:
    engine = make_engine(database_url)
    client = connect(redis_url)
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    try:
        migrate.upgrade(engine)
        registry = default_registry()
        catalog = load_catalog(registry)
        runtime = Runtime(build_tracker(catalog, registry), engine, client, keys,
                          Options(block_ms=20, linger_ms=0, visibility_timeout=0.5), consumer="tracker-1")
        runtime.setup()
        yield Controller(engine, client, keys, catalog, registry, runtime)
        report_facts_as_rebuilt(engine)  # whatever the test did, the report's facts kept up
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()


HAPPY = ("inventory.reserved", "payment.charged", "shipment.scheduled", "notification.sent")
ALL_DONE: State = ("completed", None, dict.fromkeys(
    ["reserve_inventory", "charge_payment", "schedule_shipment", "send_confirmation"], "done"), {})


def test_a_workflow_completes_from_its_participants_events(controller: Controller) -> None:
    start = controller.start()
    cid = start.correlation_id
    assert controller.state(cid) == ("running", None, {
        "reserve_inventory": "active", "charge_payment": "active", "schedule_shipment": "pending",
        "send_confirmation": "pending"}, {})
    sent = [controller.event(t, start) for t in HAPPY]
    controller.deliver(*sent)
    assert controller.state(cid) == ALL_DONE
    assert controller.timeline(cid) == [(start.id, "event", "order.placed")] + [
        (e.id, "event", e.type) for e in sent]
    [completed] = controller.announced(lifecycle_events.COMPLETED, cid)
    assert completed.data["status"] == "completed" and completed.causation_id == start.id


# -- at least once: duplicates change nothing ------------------------------------------------------


def test_duplicate_delivery_of_every_event_changes_nothing(controller: Controller) -> None:
    start = controller.start()
    cid = start.correlation_id
    sent = [controller.event(t, start) for t in HAPPY]
    controller.deliver(*sent)
    state, timeline = controller.state(cid), controller.timeline(cid)
    controller.deliver(start, *sent)  # every entry again, the start event too
    for envelope in sent:  # and a burst of copies in one batch
        controller.xadd(envelope)
        controller.xadd(envelope)
    controller.drain()
    assert controller.state(cid) == state == ALL_DONE
    assert controller.timeline(cid) == timeline
    assert len(controller.announced(lifecycle_events.COMPLETED, cid)) == 1


def test_duplicate_failures_and_answers_issue_one_compensation(controller: Controller) -> None:
    start = controller.start()
    cid = start.correlation_id
    reserved = controller.event("inventory.reserved", start)
    failed = controller.event("payment.charge_failed", start)
    controller.deliver(reserved, failed, failed, reserved)
    [release] = controller.commands_to("inventory", cid)
    released = controller.answer(release, "inventory.released")
    state, timeline = controller.state(cid), controller.timeline(cid)
    assert state == ("compensated", "step_failed", {
        "reserve_inventory": "compensated", "charge_payment": "failed", "schedule_shipment": "pending",
        "send_confirmation": "pending"}, {"reserve_inventory": "done"})
    controller.deliver(start, reserved, failed, released, released)
    assert controller.state(cid) == state
    assert controller.timeline(cid) == timeline
    assert len(controller.commands_to("inventory", cid)) == 1
    assert len(controller.announced(lifecycle_events.COMPENSATED, cid)) == 1
    assert len(controller.announced(lifecycle_events.COMPENSATING, cid)) == 1


def test_the_one_load_query_loads_what_the_four_portable_ones_do(controller: Controller) -> None:
    """PostgreSQL loads a batch's workflows in one query (steps, compensations and first events as
    JSON): every field, times and results included, as the four per-table queries load them."""
    done, open_, compensated = controller.start(), controller.start(), controller.start()
    controller.deliver(*(controller.event(t, done) for t in HAPPY))
    controller.deliver(controller.event("inventory.reserved", open_))
    controller.deliver(controller.event("inventory.reserved", compensated),
                       controller.event("payment.charge_failed", compensated))
    [release] = controller.commands_to("inventory", compensated.correlation_id)
    controller.answer(release, "inventory.released")
    cids = sorted(m.correlation_id for m in (done, open_, compensated))
    with controller.engine.connect() as conn:
        one, four = store.load_many(conn, [*cids, "no-such-workflow"]), store.load_by_table(conn, cids)
    assert sorted(one) == cids and one == four
    assert one[compensated.correlation_id].compensations and one[done.correlation_id].seen
    assert all(s.started_at is None or s.started_at.utcoffset() == timedelta(0)
               for wf in one.values() for s in wf.steps.values())


# -- disorder: the same final state whatever the arrival order ------------------------------------


ORDERS = [
    ("inventory.reserved", "payment.charged", "shipment.scheduled", "notification.sent"),
    ("payment.charged", "inventory.reserved", "shipment.scheduled", "notification.sent"),
    ("shipment.scheduled", "inventory.reserved", "payment.charged", "notification.sent"),
    ("shipment.scheduled", "payment.charged", "notification.sent", "inventory.reserved"),
    ("notification.sent", "shipment.scheduled", "payment.charged", "inventory.reserved"),
]


def test_out_of_order_arrival_gives_the_same_final_state(controller: Controller) -> None:
    for order in ORDERS:
        start = controller.start()
        sent = [controller.event(t, start) for t in order]
        controller.deliver(*sent)
        assert controller.state(start.correlation_id) == ALL_DONE, order
        assert [t for _, _, t in controller.timeline(start.correlation_id)] == ["order.placed", *order]
        assert len(controller.announced(lifecycle_events.COMPLETED, start.correlation_id)) == 1


def test_a_failure_arriving_before_the_dones_compensates_them_all(controller: Controller) -> None:
    start = controller.start()
    cid = start.correlation_id
    controller.deliver(controller.event("shipment.scheduling_failed", start),
                       controller.event("inventory.reserved", start),
                       controller.event("payment.charged", start))
    [release] = controller.commands_to("inventory", cid)
    assert controller.commands_to("payment", cid) == []  # one at a time
    controller.answer(release, "inventory.released")
    [refund] = controller.commands_to("payment", cid)
    controller.answer(refund, "payment.refunded")
    status, reason, steps, compensations = controller.state(cid)
    assert (status, reason, compensations) == (
        "compensated", "step_failed", {"reserve_inventory": "done", "charge_payment": "done"})
    assert (steps["reserve_inventory"], steps["charge_payment"], steps["schedule_shipment"]) == (
        "compensated", "compensated", "failed")


# -- events before the start -----------------------------------------------------------------------


def test_events_that_arrive_before_the_workflow_starts_are_attached_to_it(controller: Controller) -> None:
    cid = f"wf-early-{uuid.uuid4().hex[:8]}"
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    early = [
        new_event(t, payload(t, order_id), correlation_id=cid, causation_id=str(uuid.uuid4()),
                  source=SOURCE[t.split(".")[0]])
        for t in ("payment.charged", "inventory.reserved")
    ]
    controller.deliver(*early)
    assert [i for i, _, _ in controller.timeline(cid)] == [e.id for e in early]  # recorded, not lost
    with controller.engine.connect() as conn:
        assert store.load(conn, cid) is None

    start = controller.start(cid)
    status, _, steps, _ = controller.state(cid)
    assert status == "running"
    assert steps == {"reserve_inventory": "done", "charge_payment": "done",
                     "schedule_shipment": "active", "send_confirmation": "active"}
    controller.deliver(controller.event("shipment.scheduled", start))
    assert controller.state(cid)[0] == "completed"
    types = [t for _, _, t in controller.timeline(cid)]
    assert types == ["payment.charged", "inventory.reserved", "order.placed", "shipment.scheduled"]


def test_an_early_failure_compensates_at_start(controller: Controller) -> None:
    cid = f"wf-early-{uuid.uuid4().hex[:8]}"
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    early = [
        new_event(t, payload(t, order_id), correlation_id=cid, causation_id=str(uuid.uuid4()),
                  source=SOURCE[t.split(".")[0]])
        for t in ("inventory.reserved", "payment.charge_failed")
    ]
    controller.deliver(*early)
    controller.start(cid)
    [release] = controller.commands_to("inventory", cid)
    assert (release.type, release.causation_id) == ("inventory.release", early[0].id)
    assert controller.state(cid)[:2] == ("compensating", "step_failed")
    controller.answer(release, "inventory.released")
    assert controller.state(cid)[:2] == ("compensated", "step_failed")


# -- malformed entries go to the dead-letter stream, and the rest flows on -----------------------


def _good_fields(cid: str, **overrides: str) -> dict[str, str]:
    fields = new_event("inventory.reserved", payload("inventory.reserved", "ord-x"), correlation_id=cid,
                       causation_id=str(uuid.uuid4()), source="inventory").to_fields()
    fields.update(overrides)
    return fields


def _malformed(cid: str, changes: dict[str, str | None]) -> dict[str, str]:
    bad = _good_fields(cid)
    for name, value in changes.items():
        if value is None:
            del bad[name]
        else:
            bad[name] = value
    return bad


# case -> (changes to a good inventory.reserved entry, a part of the dead letter's reason)
MALFORMED: dict[str, tuple[dict[str, str | None], str]] = {
    "bad_json": ({"data": "{not json"}, "data"),
    "data_not_an_object": ({"data": "[1, 2]"}, "data"),
    "missing_field": ({"correlation_id": None}, "correlation_id"),
    "bad_id": ({"id": "not-a-uuid"}, "id"),
    "unknown_type": ({"type": "inventory.teleported"}, "inventory.teleported"),
    "wrong_version": ({"version": "2"}, "no schema version 2"),
    "invalid_payload": ({"data": '{"order_id": "o", "reservations": "none"}'}, "data.reservations"),
    "command_on_an_event_stream": (
        {"kind": "command", "target": "inventory", "attempt": "1", "deadline": "2026-11-22T10:00:00Z"},
        "does not belong"),
}


def test_malformed_entries_are_dead_lettered_and_the_entries_behind_them_are_processed(
        controller: Controller) -> None:
    start = controller.start()
    cid = start.correlation_id
    stream = controller.keys.event_stream("inventory.reserved")
    bad: dict[str, tuple[dict[str, str], str]] = {}
    for changes, reason_part in MALFORMED.values():
        fields = _malformed(cid, changes)
        entry_id: Any = controller.client.xadd(stream, fields)  # type: ignore[arg-type]
        bad[entry_id.decode()] = (fields, reason_part)
    utf8_stream = controller.keys.event_stream("payment.charged")
    raw = {k.encode(): v.encode() for k, v in _good_fields(cid, type="payment.charged").items()}
    raw[b"source"] = b"\xff\xfe"
    utf8_entry: Any = controller.client.xadd(utf8_stream, raw)  # type: ignore[arg-type]
    reserved = controller.xadd(controller.event("inventory.reserved", start))
    charged = controller.xadd(controller.event("payment.charged", start))
    controller.drain()

    dead: Any = controller.client.xrange(controller.keys.dead_stream("controller"))
    # entry ids are unique per stream only
    letters = {(f[b"dead_stream"].decode(), f[b"dead_entry_id"].decode()): f for _, f in dead}
    assert set(letters) == {*((stream, i) for i in bad), (utf8_stream, utf8_entry.decode())}
    for entry_id, (fields, reason_part) in bad.items():
        letter = {k.decode(): v.decode() for k, v in letters[stream, entry_id].items()}
        assert letter["dead_participant"] == "controller"
        assert reason_part in letter["dead_reason"], (fields, letter["dead_reason"])
        assert {k: v for k, v in letter.items() if not k.startswith("dead_")} == fields  # verbatim
    assert b"UTF-8" in letters[utf8_stream, utf8_entry.decode()][b"dead_reason"]
    for key in (stream, utf8_stream):
        pending: Any = controller.client.xpending(key, "controller")
        assert pending["pending"] == 0  # acknowledged, not redelivered forever
    steps = controller.state(cid)[2]
    assert (steps["reserve_inventory"], steps["charge_payment"]) == ("done", "done")
    assert [i for i, _, _ in controller.timeline(cid)] == [start.id, reserved.id, charged.id]


def test_an_unparsable_version_is_dead_lettered_too(controller: Controller) -> None:
    start = controller.start()
    stream = controller.keys.event_stream("inventory.reserved")
    # "\u00b2" is a digit to str.isdigit() but not to int(): it must not crash the consumer
    entry_id: Any = controller.client.xadd(
        stream, _good_fields(start.correlation_id, version="\u00b2"))  # type: ignore[arg-type]
    controller.xadd(controller.event("inventory.reserved", start))
    controller.drain()
    dead: Any = controller.client.xrange(controller.keys.dead_stream("controller"))
    assert [f[b"dead_entry_id"] for _, f in dead] == [entry_id]
    assert b"version" in dead[0][1][b"dead_reason"]
    assert controller.state(start.correlation_id)[2]["reserve_inventory"] == "done"


# -- compensation commands through the outbox ------------------------------------------------------


def test_a_failure_issues_the_compensation_command_through_the_outbox(controller: Controller) -> None:
    start = controller.start()
    cid = start.correlation_id
    reserved = controller.event("inventory.reserved", start)
    controller.deliver(reserved, controller.event("payment.charge_failed", start))

    [release] = controller.commands_to("inventory", cid)
    expected_id = lifecycle.command_id(cid, "comp:reserve_inventory")
    assert (release.id, release.kind, release.type, release.target, release.attempt) == (
        expected_id, "command", "inventory.release", "inventory", 1)
    assert (release.source, release.causation_id) == ("controller", reserved.id)
    assert release.data["order_id"] == start.data["order_id"]
    assert release.data["reason"] == "step_failed"
    assert release.deadline is not None and release.deadline > release.occurred_at

    def row() -> Any:
        with controller.engine.connect() as conn:
            return conn.execute(select(outbox_table).where(outbox_table.c.message_id == expected_id)).one()

    assert row().stream == controller.keys.command_stream("inventory")
    assert row().sent_at is None  # published right after the commit, marked sent with the next batch
    controller.drain()  # or before the tracker waits on an empty stream
    assert row().sent_at is not None
    assert (expected_id, "command", "inventory.release") in controller.timeline(cid)
    assert controller.state(cid)[3] == {"reserve_inventory": "sent"}
    [compensating] = controller.announced(lifecycle_events.COMPENSATING, cid)
    assert (compensating.data["status"], compensating.data["reason"]) == ("compensating", "step_failed")

    controller.answer(release, "inventory.released")
    assert controller.state(cid)[:2] == ("compensated", "step_failed")
    assert len(controller.announced(lifecycle_events.COMPENSATED, cid)) == 1
    assert controller.commands_to("payment", cid) == []  # nothing was charged: nothing to refund


# -- any permutation and duplication, through the real tracker ------------------------------------

SCENARIOS = {
    "happy": HAPPY,
    "declined": ("inventory.reserved", "payment.charge_failed"),
    "out_of_stock": ("payment.charged", "notification.sent", "inventory.reservation_failed"),
    "no_courier": ("inventory.reserved", "payment.charged", "notification.sent",
                   "shipment.scheduling_failed"),
}
ANSWERS = {"inventory.release": "inventory.released", "payment.refund": "payment.refunded",
           "shipment.cancel": "shipment.cancelled"}


def play_through(controller: Controller, order: list[str], copies: list[int]) -> State:
    """Start a workflow, deliver its events in `order` (the indexes in `copies` delivered again,
    the same entry), answer each compensation command as it comes; the final state."""
    start = controller.start()
    cid = start.correlation_id
    sent = [controller.event(t, start) for t in order]
    controller.deliver(*sent, *(sent[i % len(sent)] for i in copies))
    answered: set[str] = set()
    while True:
        owed = [c for p in ("inventory", "payment", "shipping") for c in controller.commands_to(p, cid)
                if c.id not in answered]
        if not owed:
            break
        for command in owed:
            answered.add(command.id)
            controller.answer(command, ANSWERS[command.type])
    timeline = controller.timeline(cid)
    assert len({i for i, _, _ in timeline}) == len(timeline)  # each message recorded once
    assert sum(kind == "event" for _, kind, _ in timeline) == 1 + len(order) + len(answered)
    return controller.state(cid)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_permutation_and_duplication_of_a_workflows_events_gives_the_same_final_state(
        controller: Controller, scenario: str, data: st.DataObject) -> None:
    events = list(SCENARIOS[scenario])
    rnd = data.draw(st.randoms(use_true_random=False), label="shuffle")
    order = rnd.sample(events, len(events))
    copies = [rnd.randrange(len(events)) for _ in range(rnd.randrange(5))]
    assert play_through(controller, order, copies) == play_through(controller, events, [])


# -- lifecycle events: what others react to, without polling ---------------------------------------


def test_lifecycle_events_carry_the_flow_the_correlation_id_and_the_reason(controller: Controller) -> None:
    """completed; compensating then compensated; compensating then needs_attention (the release is
    answered `inventory.release_failed` at every attempt: the sweeper re-sends it when due)."""
    def announced(cid: str) -> dict[str, dict[str, Any]]:
        found = {t: controller.announced(t, cid) for t in (
            lifecycle_events.COMPLETED, lifecycle_events.COMPENSATING, lifecycle_events.COMPENSATED,
            lifecycle_events.NEEDS_ATTENTION)}
        assert all(e.source == "controller" and e.correlation_id == cid for es in found.values() for e in es)
        return {t: es[0].data for t, es in found.items() if es}

    def change(cid: str, status: str, reason: str | None) -> dict[str, Any]:
        return {"flow": "order_fulfillment", "flow_version": 1, "correlation_id": cid,
                "status": status, "reason": reason}

    happy = controller.start()
    controller.deliver(*(controller.event(t, happy) for t in HAPPY))
    cid = happy.correlation_id
    assert announced(cid) == {lifecycle_events.COMPLETED: change(cid, "completed", None)}

    declined = controller.start()
    controller.deliver(controller.event("inventory.reserved", declined),
                       controller.event("payment.charge_failed", declined))
    cid = declined.correlation_id
    [release] = controller.commands_to("inventory", cid)
    controller.answer(release, "inventory.released")
    assert announced(cid) == {lifecycle_events.COMPENSATING: change(cid, "compensating", "step_failed"),
                              lifecycle_events.COMPENSATED: change(cid, "compensated", "step_failed")}

    stuck = controller.start()
    controller.deliver(controller.event("inventory.reserved", stuck),
                       controller.event("payment.charge_failed", stuck))
    cid = stuck.correlation_id
    services = Services(Settings(stream_prefix=controller.keys.prefix), controller.engine,
                        controller.client, controller.catalog, controller.registry, controller.keys)
    flow = controller.catalog.get("order_fulfillment", 1)
    for attempt in range(1, flow.command_max_attempts + 1):
        if attempt > 1:  # the next attempt is due after the backoff: a sweep an hour on sends it
            assert sweeper.sweep_once(services, utcnow() + timedelta(hours=attempt)) == 1
        release = controller.commands_to("inventory", cid)[-1]
        assert release.attempt == attempt
        controller.answer(release, "inventory.release_failed")
    assert controller.state(cid)[:2] == ("needs_attention", "step_failed")
    assert announced(cid) == {
        lifecycle_events.COMPENSATING: change(cid, "compensating", "step_failed"),
        lifecycle_events.NEEDS_ATTENTION: change(cid, "needs_attention", "step_failed")}
