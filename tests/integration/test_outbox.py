"""The transactional outbox and its relay on real Redis and real databases, in-process (crashes of
real processes: tests/e2e/test_outbox.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select

from contracts.envelope import Envelope, new_command, new_event
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.db import migrate
from participants.runtime import outbox
from participants.runtime.connect import connect
from participants.runtime.db import make_engine
from participants.runtime.tables import outbox as outbox_table
from tests.cluster import plain_redis_only

ORDER = {"order_id": "ord-1", "customer_id": "cust-gold",
         "items": [{"product_id": "SKU-001", "quantity": 2, "unit_price": 5.0}],
         "total_amount": 10.0, "currency": "EUR"}


@dataclass
class Bench:
    database_url: str
    redis_url: str
    engine: Engine
    client: redis.Redis
    keys: Keys

    def rows(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(outbox_table).order_by(outbox_table.c.seq)).all())

    def entries(self, stream: str) -> list[dict[str, str]]:
        found: Any = self.client.xrange(stream)
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in found]

    def enqueue(self, envelopes: list[Envelope], age: timedelta = timedelta(0)) -> list[outbox.Pending]:
        with self.engine.begin() as conn:
            return outbox.enqueue(conn, self.keys, envelopes, utcnow() - age)


@pytest.fixture
def bench(database_url: str, redis_url: str) -> Iterator[Bench]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    client = connect(redis_url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    try:
        yield Bench(database_url, redis_url, engine, client, keys)
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()


def placed(cid: str | None = None) -> Envelope:
    return new_event("order.placed", ORDER, correlation_id=cid or f"wf-{uuid.uuid4().hex[:12]}",
                     source="controller")


def refund(cause: Envelope) -> Envelope:
    return new_command("payment.refund", {"order_id": "ord-1", "reason": "cancelled"},
                       target="payment", correlation_id=cause.correlation_id, causation_id=cause.id,
                       deadline=utcnow() + timedelta(seconds=60), source="controller")


# -- in process -----------------------------------------------------------------------------------


def test_publish_sends_what_was_enqueued_and_marks_it_sent(bench: Bench) -> None:
    start = placed()
    command = refund(start)
    pending = bench.enqueue([start, command])
    assert [r.sent_at for r in bench.rows()] == [None, None], "enqueued rows wait to be sent"
    assert [r.message_id for r in bench.rows()] == [start.id, command.id]
    outbox.publish(bench.engine, bench.client, pending)
    assert bench.entries(bench.keys.event_stream("order.placed")) == [start.to_fields()]
    assert bench.entries(bench.keys.command_stream("payment")) == [command.to_fields()]
    assert all(r.sent_at is not None for r in bench.rows())
    assert outbox.relay_once(bench.engine, bench.client, grace=timedelta(0)) == 0, "sent rows stay sent"
    assert len(bench.entries(bench.keys.event_stream("order.placed"))) == 1


def test_a_rolled_back_transaction_enqueues_nothing(bench: Bench) -> None:
    with pytest.raises(RuntimeError), bench.engine.begin() as conn:
        outbox.enqueue(conn, bench.keys, [placed()], utcnow())
        raise RuntimeError("the effect failed")
    assert bench.rows() == []


def test_the_relay_publishes_only_rows_older_than_the_grace_period(bench: Bench) -> None:
    old, young = placed(), placed()
    bench.enqueue([old], age=timedelta(seconds=30))  # its writer crashed long ago
    bench.enqueue([young])  # its writer is publishing it right now
    assert outbox.relay_once(bench.engine, bench.client, grace=timedelta(seconds=10)) == 1
    stream = bench.keys.event_stream("order.placed")
    assert [e["id"] for e in bench.entries(stream)] == [old.id]
    sent = {r.message_id: r.sent_at for r in bench.rows()}
    assert sent[old.id] is not None and sent[young.id] is None
    assert outbox.relay_once(bench.engine, bench.client, grace=timedelta(seconds=10)) == 0
    assert outbox.relay_once(bench.engine, bench.client, grace=timedelta(0)) == 1
    assert [e["id"] for e in bench.entries(stream)] == [old.id, young.id]
    assert bench.entries(stream)[0] == old.to_fields(), "the fields go out exactly as enqueued"


class HeldClient(redis.Redis):
    """A client whose pipelines wait, before they execute, until `release` is set."""

    arrived: threading.Event
    release: threading.Event

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _HeldPipeline(super().pipeline(*args, **kwargs), self)


class _HeldPipeline:
    def __init__(self, inner: Any, owner: HeldClient) -> None:
        self._inner, self._owner = inner, owner

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._owner.arrived.set()
        self._owner.release.wait(timeout=10)
        return self._inner.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@plain_redis_only
def test_two_relays_at_once_never_publish_a_row_twice(pg_database_url: str, redis_url: str) -> None:
    engine = make_engine(pg_database_url)
    migrate.upgrade(engine)
    client = connect(redis_url)
    held: Any = HeldClient.from_url(redis_url)
    held.arrived, held.release = threading.Event(), threading.Event()
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    try:
        bench = Bench(pg_database_url, redis_url, engine, client, keys)
        bench.enqueue([placed() for _ in range(30)], age=timedelta(seconds=30))
        counts: dict[str, int] = {}

        def relay(name: str, via: redis.Redis) -> None:
            counts[name] = outbox.relay_once(engine, via, grace=timedelta(seconds=1), limit=20)

        first = threading.Thread(target=relay, args=("first", held))
        first.start()
        assert held.arrived.wait(timeout=10), "the first relay reached XADD"
        # The first relay holds its rows, mid-publish, while the second makes its whole pass.
        second = threading.Thread(target=relay, args=("second", client))
        second.start()
        second.join(timeout=10)
        held.release.set()
        first.join(timeout=10)
        assert not first.is_alive() and not second.is_alive()
        assert counts == {"first": 20, "second": 10}
        ids = [e["id"] for e in bench.entries(keys.event_stream("order.placed"))]
        assert len(ids) == len(set(ids)) == 30
        assert all(r.sent_at is not None for r in bench.rows())
    finally:
        held.release.set()
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        held.close()
        client.close()
        engine.dispose()
