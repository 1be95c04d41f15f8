"""The reference participants of `order_fulfillment`, through the runtime, on real Redis and databases."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select, text

from contracts.envelope import COMMAND, Envelope, decode_fields, new_command, new_event
from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.reference import NAMES, build, inventory, notification, payment, shipping
from participants.runtime.connect import connect
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime
from tests.unit.test_reference_participants import FRIDAY


class World:
    """Participants sharing one database and one Redis, under a stream prefix of their own."""

    def __init__(self, engine: Engine, client: redis.Redis, keys: Keys) -> None:
        self.engine, self.client, self.keys = engine, client, keys
        self.runtimes: list[Runtime] = []

    def start(self, *names: str, consumer: str = "c1", read_count: int = 100) -> list[Runtime]:
        started = []
        for name in names:
            options = Options(visibility_timeout=30.0, block_ms=50, linger_ms=0, read_count=read_count)
            rt = Runtime(build(name), self.engine, self.client, self.keys, options, consumer=consumer)
            rt.setup()
            started.append(rt)
        self.runtimes += started
        return started

    def send(self, envelope: Envelope) -> Envelope:
        if envelope.kind == COMMAND:
            stream = self.keys.command_stream(envelope.target or "")
        else:
            stream = self.keys.event_stream(envelope.type)
        self.client.xadd(stream, envelope.to_fields())  # type: ignore[arg-type]
        return envelope

    def drain(self) -> None:
        """Poll every participant until a whole round handles nothing."""
        for _ in range(20):
            if sum(rt.poll() for rt in self.runtimes) == 0:
                return
        raise AssertionError("the participants never went quiet")

    def emitted(self, message_type: str) -> list[Envelope]:
        entries: Any = self.client.xrange(self.keys.event_stream(message_type))
        return [decode_fields(fields) for _, fields in entries]

    def rows(self, query: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

    def stock(self, product_id: str) -> int:
        with self.engine.connect() as conn:
            level = inventory.available(conn, product_id)
        assert level is not None
        return level


@pytest.fixture
def world(database_url: str, redis_url: str) -> Iterator[World]:
    yield from _world(database_url, redis_url)


@pytest.fixture
def pg_world(pg_database_url: str, redis_url: str) -> Iterator[World]:
    """On PostgreSQL alone: two transactions there really run at once (SQLite has one writer)."""
    yield from _world(pg_database_url, redis_url)


def _world(database_url: str, redis_url: str) -> Iterator[World]:
    engine = make_engine(database_url)
    client = connect(redis_url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    try:
        yield World(engine, client, keys)
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()


def placed(items: list[tuple[str, int]], *, customer: str = "cust-gold", total: float | None = None,
           currency: str = "EUR", order_id: str | None = None, cid: str | None = None) -> Envelope:
    lines = [{"product_id": p, "quantity": q, "unit_price": 10.0} for p, q in items]
    data = {
        "order_id": order_id or f"ord-{uuid.uuid4().hex[:8]}", "customer_id": customer, "items": lines,
        "total_amount": total if total is not None else 10.0 * sum(q for _, q in items),
        "currency": currency,
    }
    return new_event("order.placed", data, correlation_id=cid or f"wf-{uuid.uuid4().hex[:12]}",
                     source="test")


def event(message_type: str, data: dict[str, Any], cause: Envelope, *, source: str,
          at: datetime | None = None) -> Envelope:
    made = new_event(message_type, data, correlation_id=cause.correlation_id, causation_id=cause.id,
                     source=source)
    return dataclasses.replace(made, occurred_at=at) if at else made


def command(message_type: str, target: str, data: dict[str, Any], cause: Envelope) -> Envelope:
    return new_command(message_type, data, target=target, correlation_id=cause.correlation_id,
                       causation_id=cause.id, deadline=utcnow() + timedelta(seconds=60),
                       source="controller")


def reserved_for(order: Envelope, units: int, at: datetime = FRIDAY) -> Envelope:
    reservation = {"reservation_id": "res-1", "product_id": "SKU-001", "quantity": units}
    data = {"order_id": order.data["order_id"], "reservations": [reservation]}
    return event("inventory.reserved", data, order, source="inventory", at=at)


def charged_for(order: Envelope, at: datetime = FRIDAY) -> Envelope:
    data = {"order_id": order.data["order_id"], "payment_id": "pay-1", "amount": 30.0,
            "currency": "EUR", "customer_id": "cust-gold"}
    return event("payment.charged", data, order, source="payment", at=at)


def types_in(world: World, *message_types: str) -> dict[str, int]:
    return {t: len(world.emitted(t)) for t in message_types}


# -- the registry of reference participants -------------------------------------------------------


def test_setup_seeds_once_and_never_resets_stock_or_credit(world: World) -> None:
    world.start("inventory", "payment")
    world.send(placed([("SKU-RARE-1", 2)], customer="cust-small", total=20.0))
    world.drain()
    world.start("inventory", "payment", consumer="c2")  # a second process runs setup again
    assert world.stock("SKU-RARE-1") == 3
    assert world.stock("SKU-RARE-2") == 0
    assert world.stock("SKU-020") == inventory.GENEROUS_STOCK
    assert len(world.rows(select(inventory.stock))) == len(inventory.CATALOG) == 22
    used = world.rows(select(payment.accounts.c.used).where(payment.accounts.c.customer_id == "cust-small"))
    assert used == [(2000,)]


# -- the choreographed flow ---------------------------------------------------------------------


def test_an_order_is_reserved_charged_shipped_and_confirmed(world: World) -> None:
    world.start(*NAMES)
    order = world.send(placed([("SKU-001", 2), ("SKU-002", 1)], total=30.0))
    world.drain()

    [reserved] = world.emitted("inventory.reserved")
    assert reserved.causation_id == order.id and reserved.correlation_id == order.correlation_id
    assert reserved.source == "inventory" and reserved.data["order_id"] == order.data["order_id"]
    assert [(r["product_id"], r["quantity"]) for r in reserved.data["reservations"]] == [
        ("SKU-001", 2), ("SKU-002", 1)]
    assert world.stock("SKU-001") == inventory.GENEROUS_STOCK - 2
    assert world.stock("SKU-002") == inventory.GENEROUS_STOCK - 1

    [charged] = world.emitted("payment.charged")
    assert charged.data["amount"] == 30.0 and charged.data["currency"] == "EUR"
    [ledger] = world.rows(select(payment.ledger))
    assert (ledger.kind, ledger.status, ledger.amount, ledger.payment_id) == (
        "charge", "charged", 3000, charged.data["payment_id"])

    [scheduled] = world.emitted("shipment.scheduled")
    basis = max(reserved.occurred_at, charged.occurred_at)
    assert scheduled.data["estimated_delivery"] == shipping.delivery_date(basis).isoformat()
    [shipment] = world.rows(select(shipping.shipments))
    assert (shipment.shipment_id, shipment.units, shipment.status) == (
        scheduled.data["shipment_id"], 3, "scheduled")

    [sent] = world.emitted("notification.sent")
    assert sent.data == {"order_id": order.data["order_id"], "channel": "email",
                         "notification_id": sent.data["notification_id"]}
    [mail] = world.rows(select(notification.messages))
    assert mail.recipient == "cust-gold@customers.example"
    assert types_in(world, "inventory.reservation_failed", "payment.charge_failed",
                    "shipment.scheduling_failed") == dict.fromkeys(
        ["inventory.reservation_failed", "payment.charge_failed", "shipment.scheduling_failed"], 0)


def test_out_of_stock_fails_the_whole_order_and_takes_nothing(world: World) -> None:
    world.start("inventory")
    order = world.send(placed([("SKU-001", 3), ("SKU-RARE-2", 1)]))
    world.drain()
    [failed] = world.emitted("inventory.reservation_failed")
    assert failed.data == {"order_id": order.data["order_id"],
                           "reason": "insufficient stock for SKU-RARE-2: requested 1, available 0"}
    assert world.stock("SKU-001") == inventory.GENEROUS_STOCK
    assert world.rows(select(inventory.reservations)) == []
    assert world.emitted("inventory.reserved") == []


def test_an_unknown_product_fails_the_order(world: World) -> None:
    world.start("inventory")
    world.send(placed([("SKU-404", 1), ("SKU-003", 1)]))
    world.drain()
    [failed] = world.emitted("inventory.reservation_failed")
    assert failed.data["reason"] == "unknown product SKU-404"
    assert world.stock("SKU-003") == inventory.GENEROUS_STOCK


def test_scarce_stock_runs_out_after_a_few_orders(world: World) -> None:
    world.start("inventory")
    for _ in range(3):
        world.send(placed([("SKU-RARE-1", 2)]))
    world.drain()
    assert len(world.emitted("inventory.reserved")) == 2
    [failed] = world.emitted("inventory.reservation_failed")
    assert failed.data["reason"] == "insufficient stock for SKU-RARE-1: requested 2, available 1"
    assert world.stock("SKU-RARE-1") == 1


def test_two_consumers_at_once_never_oversell(world: World) -> None:
    runtimes = world.start("inventory", consumer="c1", read_count=1)
    runtimes += world.start("inventory", consumer="c2", read_count=1)
    for _ in range(8):
        world.send(placed([("SKU-RARE-1", 1)]))

    def answered() -> int:
        return len(world.emitted("inventory.reserved")) + len(world.emitted("inventory.reservation_failed"))

    def work(rt: Runtime) -> None:
        deadline = time.monotonic() + 20
        while answered() < 8 and time.monotonic() < deadline:
            rt.poll()

    threads = [threading.Thread(target=work, args=(rt,)) for rt in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert types_in(world, "inventory.reserved", "inventory.reservation_failed") == {
        "inventory.reserved": 5, "inventory.reservation_failed": 3}
    assert world.stock("SKU-RARE-1") == 0


def test_a_repeated_order_placed_answers_the_same_reservation_and_charge(world: World) -> None:
    world.start("inventory", "payment")
    first = world.send(placed([("SKU-RARE-1", 2)], total=25.5))
    world.send(first)  # the same entry delivered twice
    world.send(dataclasses.replace(first, id=str(uuid.uuid4())))  # re-emitted with a new id
    world.drain()
    one, two = world.emitted("inventory.reserved")
    assert one.data["reservations"] == two.data["reservations"]
    assert world.stock("SKU-RARE-1") == 3
    c1, c2 = world.emitted("payment.charged")
    assert c1.data["payment_id"] == c2.data["payment_id"]
    assert len(world.rows(select(payment.ledger))) == 1


def handled_at_once(world: World, name: str, order: Envelope, held: Any) -> None:
    """Two copies of `order` under two ids, each read by a runtime of its own and handled at the
    same time in two transactions: both are let go together from a row lock (`held`) the test
    takes first, so that neither can see what the other did before it decides."""
    runtimes = world.start(name, consumer="c1", read_count=1) + world.start(name, consumer="c2", read_count=1)
    world.send(order)
    world.send(dataclasses.replace(order, id=str(uuid.uuid4())))  # `retry` re-emits with a new id
    threads = [threading.Thread(target=rt.poll) for rt in runtimes]
    with world.engine.connect() as holder:
        holder.execute(held)
        for waiting, thread in enumerate(threads, start=1):
            thread.start()
            wait_for_lock_waiters(world.engine, waiting)
        holder.rollback()
    for thread in threads:
        thread.join(timeout=30)
    world.drain()


def wait_for_lock_waiters(engine: Engine, count: int) -> None:
    """Until `count` connections of this test's schema wait on a lock."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                 "AND application_name = current_setting('application_name')")
    deadline = time.monotonic() + 20
    with engine.connect() as conn:
        while conn.execute(query).scalar_one() < count:
            conn.rollback()  # a new snapshot of pg_stat_activity
            assert time.monotonic() < deadline, f"{count} transactions never waited on a lock"
            time.sleep(0.01)


def test_two_concurrent_duplicates_of_an_order_reserve_it_once(pg_world: World) -> None:
    order = placed([("SKU-RARE-1", 2)])
    held = select(inventory.stock).where(inventory.stock.c.product_id == "SKU-RARE-1").with_for_update()
    handled_at_once(pg_world, "inventory", order, held)
    one, two = pg_world.emitted("inventory.reserved")
    assert one.data["reservations"] == two.data["reservations"]
    assert pg_world.stock("SKU-RARE-1") == 3
    assert len(pg_world.rows(select(inventory.reservations))) == 1


def test_two_concurrent_duplicates_of_an_order_charge_it_once(pg_world: World) -> None:
    order = placed([("SKU-001", 1)], total=40.0)
    held = select(payment.accounts).where(payment.accounts.c.customer_id == "cust-gold").with_for_update()
    handled_at_once(pg_world, "payment", order, held)
    one, two = pg_world.emitted("payment.charged")
    assert one.data["payment_id"] == two.data["payment_id"]
    assert len(pg_world.rows(select(payment.ledger))) == 1
    used = pg_world.rows(select(payment.accounts.c.used).where(payment.accounts.c.customer_id == "cust-gold"))
    assert used == [(4000,)]


def test_a_declined_card_fails_the_charge(world: World) -> None:
    world.start("payment")
    order = world.send(placed([("SKU-001", 1)], customer="cust-small", total=62.0))
    world.send(placed([("SKU-001", 1)], customer="cust-broke", total=0.01, currency="USD"))
    world.drain()
    small, broke = world.emitted("payment.charge_failed")
    assert small.data == {"order_id": order.data["order_id"],
                          "reason": "card declined: credit limit 50.00 EUR exceeded by 12.00"}
    assert broke.data["reason"] == "card declined: credit limit 0.00 USD exceeded by 0.01"
    assert world.rows(select(payment.ledger)) == []
    assert world.emitted("payment.charged") == []


def test_an_unknown_customer_gets_the_default_limit(world: World) -> None:
    world.start("payment")
    world.send(placed([("SKU-001", 1)], customer="cust-new", total=9000.0))
    world.send(placed([("SKU-001", 1)], customer="cust-new", total=2000.0))
    world.drain()
    assert len(world.emitted("payment.charged")) == 1
    [failed] = world.emitted("payment.charge_failed")
    assert failed.data["reason"] == "card declined: credit limit 10000.00 EUR exceeded by 1000.00"


def test_more_than_a_parcel_fails_the_shipment(world: World) -> None:
    world.start("inventory", "payment", "shipping")
    order = world.send(placed([("SKU-001", 60), ("SKU-002", 41)], total=101.0))
    world.drain()
    assert len(world.emitted("inventory.reserved")) == len(world.emitted("payment.charged")) == 1
    [failed] = world.emitted("shipment.scheduling_failed")
    assert failed.data == {"order_id": order.data["order_id"],
                           "reason": "parcel limit exceeded: 101 units, at most 100"}
    assert world.rows(select(shipping.shipments)) == []


# -- the join -------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["inventory.reserved", "payment.charged"])
def test_the_join_ships_once_whatever_the_order_and_duplicates(world: World, first: str) -> None:
    world.start("shipping")
    order = placed([("SKU-001", 3)])
    halves = {"inventory.reserved": reserved_for(order, 3),
              "payment.charged": charged_for(order, at=FRIDAY - timedelta(hours=30))}
    second = next(t for t in halves if t != first)
    world.send(halves[first])
    world.drain()
    assert world.emitted("shipment.scheduled") == []
    world.send(halves[first])  # delivered again
    world.send(dataclasses.replace(halves[first], id=str(uuid.uuid4())))  # re-emitted
    world.send(halves[second])
    world.drain()
    world.send(halves[second])
    world.drain()
    [scheduled] = world.emitted("shipment.scheduled")
    assert scheduled.data["estimated_delivery"] == "2026-11-25"  # the later event: Friday, + 3 days
    assert scheduled.causation_id == halves[second].id
    assert len(world.rows(select(shipping.shipments))) == 1


# -- compensations --------------------------------------------------------------------------------


def test_release_gives_the_stock_back_once(world: World) -> None:
    world.start("inventory")
    order = world.send(placed([("SKU-RARE-1", 2), ("SKU-003", 5)]))
    world.drain()
    [reserved] = world.emitted("inventory.reserved")
    assert world.stock("SKU-RARE-1") == 3
    release = command("inventory.release", "inventory", {"order_id": order.data["order_id"]}, reserved)
    again = dataclasses.replace(release, id=str(uuid.uuid4()))
    world.send(release)
    world.send(release)  # the same command delivered twice: handled once
    world.send(again)  # the same intent sent again as a new message: answered again, no new effect
    world.drain()
    answers = world.emitted("inventory.released")
    assert [a.causation_id for a in answers] == [release.id, again.id]
    ids = [r["reservation_id"] for r in reserved.data["reservations"]]
    assert [a.data["released_reservations"] for a in answers] == [ids, ids]
    assert world.stock("SKU-RARE-1") == 5
    assert world.stock("SKU-003") == inventory.GENEROUS_STOCK
    assert {r.status for r in world.rows(select(inventory.reservations))} == {"released"}


def test_an_order_reserved_and_released_or_charged_and_refunded_in_one_batch(world: World) -> None:
    """The rows a batch inserts and releases (refunds) at once are written released (refunded), in
    one statement with the levels on PostgreSQL: nothing is taken when the batch is done."""
    world.start("inventory", "payment")
    order = world.send(placed([("SKU-RARE-1", 2)], customer="cust-small", total=20.0))
    world.send(command("inventory.release", "inventory", {"order_id": order.data["order_id"]}, order))
    refund = {"order_id": order.data["order_id"], "reason": "cancelled"}
    world.send(command("payment.refund", "payment", refund, order))
    world.drain()
    [reserved], [released] = world.emitted("inventory.reserved"), world.emitted("inventory.released")
    ids = [r["reservation_id"] for r in reserved.data["reservations"]]
    assert released.data["released_reservations"] == ids
    assert world.stock("SKU-RARE-1") == 5
    assert {r.status for r in world.rows(select(inventory.reservations))} == {"released"}
    [charged], [refunded] = world.emitted("payment.charged"), world.emitted("payment.refunded")
    assert refunded.data["payment_id"] == charged.data["payment_id"]
    entries = world.rows(select(payment.ledger).order_by(payment.ledger.c.kind))
    assert [(e.kind, e.status, e.note) for e in entries] == [("charge", "refunded", None),
                                                             ("refund", "refunded", "cancelled")]
    used = world.rows(select(payment.accounts.c.used).where(payment.accounts.c.customer_id == "cust-small"))
    assert used == [(0,)]


def test_an_order_placed_again_after_its_compensation_is_neither_reserved_nor_charged_again(
        world: World) -> None:
    world.start("inventory", "payment")
    order = world.send(placed([("SKU-RARE-1", 2)], total=20.0))
    world.drain()
    [reserved], [charged] = world.emitted("inventory.reserved"), world.emitted("payment.charged")
    world.send(command("inventory.release", "inventory", {"order_id": order.data["order_id"]}, reserved))
    world.send(command("payment.refund", "payment", {**charged.data, "reason": "sla"}, charged))
    world.drain()
    world.send(dataclasses.replace(order, id=str(uuid.uuid4())))  # a late re-emitted copy
    world.drain()
    [not_reserved] = world.emitted("inventory.reservation_failed")
    assert not_reserved.data["reason"] == (f"order {order.data['order_id']} was reserved and released; "
                                           "it is not reserved again")
    [not_charged] = world.emitted("payment.charge_failed")
    assert "was charged and refunded; it is not charged again" in not_charged.data["reason"]
    assert world.stock("SKU-RARE-1") == 5
    assert len(world.rows(select(payment.ledger))) == 2  # the charge and its refund


def test_releasing_an_order_without_reservations_answers_with_none(world: World) -> None:
    world.start("inventory")
    order = placed([("SKU-001", 1)])
    world.send(command("inventory.release", "inventory", {"order_id": order.data["order_id"]}, order))
    world.drain()
    [released] = world.emitted("inventory.released")
    assert released.data == {"order_id": order.data["order_id"], "released_reservations": []}
    assert world.stock("SKU-001") == inventory.GENEROUS_STOCK


def test_refund_restores_the_credit_once(world: World) -> None:
    world.start("payment")
    order = world.send(placed([("SKU-001", 1)], customer="cust-small", total=40.0))
    world.drain()
    [charged] = world.emitted("payment.charged")
    data = {"order_id": order.data["order_id"], "reason": "shipment.scheduling_failed"}
    refund = command("payment.refund", "payment", data, charged)
    world.send(refund)
    world.send(refund)
    world.send(dataclasses.replace(refund, id=str(uuid.uuid4())))
    world.drain()
    answers = world.emitted("payment.refunded")
    assert [a.data for a in answers] == [
        {"order_id": order.data["order_id"], "payment_id": charged.data["payment_id"], "amount": 40.0}] * 2
    entries = world.rows(select(payment.ledger).order_by(payment.ledger.c.created_at))
    assert [(e.kind, e.status, e.amount) for e in entries] == [
        ("charge", "refunded", 4000), ("refund", "refunded", 4000)]
    assert entries[1].note == "shipment.scheduling_failed"
    used = world.rows(select(payment.accounts.c.used).where(payment.accounts.c.customer_id == "cust-small"))
    assert used == [(0,)]


def test_refunding_an_order_never_charged_fails(world: World) -> None:
    world.start("payment")
    order = placed([("SKU-001", 1)])
    data = {"order_id": order.data["order_id"], "reason": "cancelled"}
    world.send(command("payment.refund", "payment", data, order))
    world.drain()
    [failed] = world.emitted("payment.refund_failed")
    assert failed.data["reason"] == f"no charge to refund for order {order.data['order_id']}"
    assert world.emitted("payment.refunded") == []


def test_cancel_cancels_the_shipment_once(world: World) -> None:
    world.start("shipping")
    order = placed([("SKU-001", 3)])
    world.send(reserved_for(order, 3))
    world.send(charged_for(order))
    world.drain()
    [scheduled] = world.emitted("shipment.scheduled")
    cancel = command("shipment.cancel", "shipping", {"order_id": order.data["order_id"]}, scheduled)
    world.send(cancel)
    world.send(cancel)
    world.send(dataclasses.replace(cancel, id=str(uuid.uuid4())))
    other = placed([("SKU-001", 1)])
    world.send(command("shipment.cancel", "shipping", {"order_id": other.data["order_id"]}, other))
    world.drain()
    answers = world.emitted("shipment.cancelled")
    assert [a.data["shipment_id"] for a in answers] == [scheduled.data["shipment_id"]] * 2
    [failed] = world.emitted("shipment.cancel_failed")
    assert failed.data["reason"] == f"no shipment to cancel for order {other.data['order_id']}"
    [shipment] = world.rows(select(shipping.shipments))
    assert shipment.status == "cancelled" and shipment.cancelled_at is not None


# -- the orchestrated variants --------------------------------------------------------------------


def test_the_reserve_command_reserves_or_fails(world: World) -> None:
    world.start("inventory")
    good, bad = placed([("SKU-004", 4)]), placed([("SKU-RARE-2", 1)])
    world.send(command("inventory.reserve", "inventory", good.data, good))
    world.send(command("inventory.reserve", "inventory", bad.data, bad))
    world.drain()
    [reserved] = world.emitted("inventory.reserved")
    assert reserved.correlation_id == good.correlation_id
    assert world.stock("SKU-004") == inventory.GENEROUS_STOCK - 4
    [failed] = world.emitted("inventory.reserve_failed")
    assert failed.data == {"order_id": bad.data["order_id"],
                           "reason": "insufficient stock for SKU-RARE-2: requested 1, available 0"}


def test_the_charge_command_charges_or_fails(world: World) -> None:
    world.start("payment")
    good = placed([("SKU-001", 1)], customer="cust-silver", total=99.99)
    bad = placed([("SKU-001", 1)], customer="cust-broke", total=5.0)
    world.send(command("payment.charge", "payment", good.data, good))
    world.send(command("payment.charge", "payment", bad.data, bad))
    world.drain()
    [charged] = world.emitted("payment.charged")
    assert (charged.data["amount"], charged.correlation_id) == (99.99, good.correlation_id)
    [failed] = world.emitted("payment.charge_failed")
    assert failed.data["reason"] == "card declined: credit limit 0.00 EUR exceeded by 5.00"


def test_the_schedule_command_uses_what_shipping_saw(world: World) -> None:
    world.start("shipping")
    small, big, unseen = placed([("SKU-001", 3)]), placed([("SKU-001", 150)]), placed([("SKU-001", 1)])
    world.send(reserved_for(small, 3))
    world.send(reserved_for(big, 150))
    world.drain()
    for order in (small, big, unseen):
        cmd = command("shipment.schedule", "shipping", {"order_id": order.data["order_id"]}, order)
        world.send(dataclasses.replace(cmd, occurred_at=FRIDAY))
    world.drain()
    scheduled = world.emitted("shipment.scheduled")
    assert [s.correlation_id for s in scheduled] == [small.correlation_id, unseen.correlation_id]
    assert {s.data["estimated_delivery"] for s in scheduled} == {"2026-11-25"}
    [failed] = world.emitted("shipment.schedule_failed")
    assert failed.data["reason"] == "parcel limit exceeded: 150 units, at most 100"
    units = {r.order_id: r.units for r in world.rows(select(shipping.shipments))}
    assert units == {small.data["order_id"]: 3, unseen.data["order_id"]: None}


def test_a_confirmation_is_recorded_once_per_order(world: World) -> None:
    world.start("notification")
    order = placed([("SKU-001", 3)])
    charged = charged_for(order)
    world.send(charged)
    world.send(dataclasses.replace(charged, id=str(uuid.uuid4())))
    world.drain()
    one, two = world.emitted("notification.sent")
    assert one.data == two.data
    assert one.data["channel"] == "email"
    [mail] = world.rows(select(notification.messages))
    assert (mail.notification_id, mail.order_id) == (one.data["notification_id"], order.data["order_id"])
    assert mail.subject == f"Your order {order.data['order_id']} is confirmed"


@pytest.mark.parametrize("module", ["payment", "inventory"])
def test_a_table_created_before_its_once_per_order_key_gets_it_at_setup(database_url: str,
                                                                      module: str) -> None:
    """An existing participant database (created before the key) is not altered by create_all:
    the participant's setup adds the unique index that makes a duplicate apply once."""
    import importlib

    import sqlalchemy as sa

    from participants.runtime.db import make_engine

    mod = importlib.import_module(f"participants.reference.{module}")
    index = mod.ONCE_PER_ORDER if module == "payment" else mod.ONCE_PER_LINE
    engine = make_engine(database_url)
    try:
        mod.metadata.create_all(engine)
        with engine.begin() as conn:
            index.drop(conn)  # as a database of the earlier code has it
        with engine.begin() as conn:
            mod.seed(conn)
            mod.seed(conn)  # every start runs it: the second finds the key there
        names = {i["name"] for i in sa.inspect(engine).get_indexes(index.table.name) if i["unique"]}
        assert index.name in names
    finally:
        engine.dispose()
