"""The transactional outbox and its relay on real Redis and real databases, crashes included:
a writer killed between commit and XADD, and a relay killed between XADD and marking sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import Engine, select

from contracts.envelope import Envelope, decode_fields, new_command, new_event
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.db import migrate
from controller.db.tables import workflows
from participants.reference import build, payment
from participants.runtime import outbox
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime
from participants.runtime.tables import outbox as outbox_table

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
    client = redis.Redis.from_url(redis_url)
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


def test_two_relays_at_once_never_publish_a_row_twice(pg_database_url: str, redis_url: str) -> None:
    engine = make_engine(pg_database_url)
    migrate.upgrade(engine)
    client = redis.Redis.from_url(redis_url)
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


# -- real processes ---------------------------------------------------------------------------------


BATON = Path(sys.executable).with_name("baton")

# The start endpoint's "commit, then publish", killed in between.
START_THEN_CRASH = """
import sys
import orjson
from config.settings import load_settings
from contracts.timefmt import utcnow
from controller.service.bootstrap import build_services
from controller.service.start import StartRequest, start_workflow
from participants.runtime import outbox

services = build_services(load_settings())
request = StartRequest(flow="order_fulfillment", input=orjson.loads(sys.argv[1]), actor="alice")
started = start_workflow(services.engine, services.catalog, services.registry, services.keys,
                         request, utcnow())
print(started.correlation_id, flush=True)
outbox.publish(services.engine, services.redis, started.pending, crash_points={"outbox.before_xadd"})
print("published", flush=True)
"""


@dataclass
class Processes:
    tmp_path: Path
    bench: Bench
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BATON_") and k not in ("DATABASE_URL", "REDIS_URL")}
        env.update({
            "DATABASE_URL": self.bench.database_url, "REDIS_URL": self.bench.redis_url,
            "BATON_STREAM_PREFIX": self.bench.keys.prefix, "BATON_RELAY_INTERVAL": "0.1",
            "BATON_DATA_DIR": str(self.tmp_path / "data"), "BATON_LOG_FORMAT": "console", **extra,
        })
        return env

    def start(self, args: list[str], log_name: str, **extra: str) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / log_name, "wb") as log:
            proc = subprocess.Popen(args, env=self.env(**extra), cwd=self.tmp_path, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def relay(self, log_name: str, **extra: str) -> subprocess.Popen[bytes]:
        return self.start([str(BATON), "relay"], log_name, **extra)

    def log(self, log_name: str) -> str:
        return (self.tmp_path / log_name).read_text(errors="replace")[-3000:]

    def stop(self, proc: subprocess.Popen[bytes], log_name: str) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, self.log(log_name)


@pytest.fixture
def processes(tmp_path: Path, bench: Bench) -> Iterator[Processes]:
    made = Processes(tmp_path, bench)
    try:
        yield made
    finally:
        for proc in made.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_start_killed_between_commit_and_xadd_is_published_once_by_the_relay(
        bench: Bench, processes: Processes) -> None:
    writer = processes.start([sys.executable, "-c", START_THEN_CRASH, orjson.dumps(ORDER).decode()],
                             "writer.log")
    assert writer.wait(timeout=30) == -signal.SIGKILL, processes.log("writer.log")
    lines = processes.log("writer.log").split()
    assert "published" not in lines
    cid = lines[-1]
    with bench.engine.connect() as conn:
        workflow = conn.execute(select(workflows).where(workflows.c.correlation_id == cid)).one()
    [row] = bench.rows()
    assert row.message_id == workflow.start_message_id and row.sent_at is None, "committed, not sent"
    stream = bench.keys.event_stream("order.placed")
    assert bench.entries(stream) == []

    relay = processes.relay("relay.log")
    wait_for(lambda: bench.rows()[0].sent_at is not None, 20, "the relay publishes the start event")
    processes.stop(relay, "relay.log")
    [entry] = bench.entries(stream)
    assert entry["id"] == row.message_id
    assert entry["correlation_id"] == cid
    assert entry["causation_id"] == entry["id"], "a start event is its own cause"
    start = decode_fields(entry)
    assert start.type == "order.placed" and start.data["order_id"] == ORDER["order_id"]


@pytest.mark.slow
def test_a_relay_killed_after_xadd_republishes_the_same_id_and_consumers_dedupe(
        bench: Bench, processes: Processes) -> None:
    start = placed()
    bench.enqueue([start], age=timedelta(seconds=30))
    stream = bench.keys.event_stream("order.placed")
    crashed = processes.relay("relay-1.log", BATON_CRASH_POINTS="relay.after_xadd")
    assert crashed.wait(timeout=30) == -signal.SIGKILL, processes.log("relay-1.log")
    assert [e["id"] for e in bench.entries(stream)] == [start.id]
    assert bench.rows()[0].sent_at is None, "the mark was lost with the process"

    relay = processes.relay("relay-2.log")
    wait_for(lambda: bench.rows()[0].sent_at is not None, 20, "the restarted relay publishes again")
    processes.stop(relay, "relay-2.log")
    assert [e["id"] for e in bench.entries(stream)] == [start.id, start.id]

    consumer = Runtime(build("payment"), bench.engine, bench.client, bench.keys,
                       Options(visibility_timeout=30.0, block_ms=1, linger_ms=0), consumer="c1")
    consumer.setup()
    for _ in range(10):
        if consumer.poll() == 0:
            break
    charged = bench.entries(bench.keys.event_stream("payment.charged"))
    assert [e["causation_id"] for e in charged] == [start.id], "handled once, by id"
    with bench.engine.connect() as conn:
        charges = conn.execute(select(payment.ledger).where(payment.ledger.c.kind == "charge")).all()
    assert len(charges) == 1
