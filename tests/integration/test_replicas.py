"""What lets several replicas of a process share one Redis: the clock's lease (one active clock,
taken over within its TTL when the holder dies), consumers left behind by dead replicas forgotten
only when they own nothing pending, and two clocks ticking against one queue."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from contracts.streams import Keys
from controller.processes import clock
from controller.processes.lease import Lease
from participants.runtime.consumers import forget_idle
from tests.harness import App, running_app


def _key() -> str:
    return Keys(f"t{uuid.uuid4().hex[:8]}").lease("clock")


def test_one_holder_at_a_time_and_a_clean_handover(redis_client: redis.Redis) -> None:
    key = _key()
    a, b = Lease(redis_client, key, ttl=5), Lease(redis_client, key, ttl=5)
    assert a.hold() and not b.hold()
    assert a.hold() and not b.hold()  # renewed, still its own
    assert a.holder() == a.token
    a.release()
    assert b.hold() and not a.hold()
    assert a.holder() == b.token
    redis_client.delete(key)


def test_a_dead_holders_lease_moves_within_its_ttl(redis_client: redis.Redis) -> None:
    key = _key()
    dead, standby = Lease(redis_client, key, ttl=0.3), Lease(redis_client, key, ttl=0.3)
    assert dead.hold()
    began = time.monotonic()
    while not standby.hold():  # `dead` renews no more, as after a kill -9
        assert time.monotonic() - began < 3.0, "the standby never took the lease"
        time.sleep(0.02)
    # within its TTL, give or take a loaded machine's scheduling
    assert time.monotonic() - began < 0.3 + 1.0
    # the old holder, come back from a stall, neither renews nor drops the new holder's lease
    assert not dead.hold()
    dead.release()
    assert standby.holder() == standby.token
    redis_client.delete(key)


def test_forgets_only_idle_consumers_that_own_nothing_pending(redis_client: redis.Redis) -> None:
    stream = Keys(f"t{uuid.uuid4().hex[:8]}").event_stream("order.placed")
    redis_client.xgroup_create(stream, "inventory", id="0", mkstream=True)
    redis_client.xadd(stream, {"n": "1"})
    redis_client.xreadgroup("inventory", "dead-with-pending", {stream: ">"}, count=1)
    redis_client.xgroup_createconsumer(stream, "inventory", "dead-empty")
    redis_client.xgroup_createconsumer(stream, "inventory", "me")
    time.sleep(0.05)

    assert forget_idle(redis_client, [stream], "inventory", 3600, keep="me") == 0  # none idle long
    assert forget_idle(redis_client, [stream], "inventory", 0.01, keep="me") == 1
    names = {c["name"] for c in redis_client.xinfo_consumers(stream, "inventory")}
    assert names == {"dead-with-pending", "me"}
    assert redis_client.xpending(stream, "inventory")["pending"] == 1  # still there to reclaim
    assert forget_idle(redis_client, [stream + ":none"], "inventory", 0, keep="me") == 0  # no group
    redis_client.delete(stream)


@pytest.fixture
def app(pg_database_url: str, redis_url: str, tmp_path: Path) -> Iterator[App]:
    with running_app(pg_database_url, redis_url, tmp_path, "op:operator:t-op",
                     extra={"BATON_SWEEP_INTERVAL": "0.1"}, quiet=True) as app:
        yield app


def test_two_clocks_one_active_and_the_other_takes_over(app: App) -> None:
    """Two clocks against one queue: only the lease holder enqueues; stopping it (its lease given
    back) or letting its lease lapse moves the work to the other within a tick or a TTL."""
    services = app.services
    queue = Queue(services.keys.rq_queue("sweeps"), connection=services.rq,
                  serializer=JSONSerializer)
    leases = [clock.clock_lease(services), clock.clock_lease(services)]
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=clock.run_clock, args=(services, s, lease), daemon=True)
               for s, lease in zip(stops, leases, strict=True)]
    try:
        for t in threads:
            t.start()
        _wait(lambda: queue.count >= 1, "a sweep to be queued")
        time.sleep(0.5)  # five ticks of each clock
        # a sweep, a trim and a fold: two active clocks would have queued two trims and folds
        jobs = sorted(str(j.func_name).rsplit(".", 1)[-1] for j in queue.get_jobs())
        assert jobs == ["fold_report", "sweep", "trim_streams"], jobs
        assert [lease.held for lease in leases].count(True) == 1
        active = 0 if leases[0].held else 1
        queue.empty()
        stops[active].set()  # a clean stop gives the lease back
        threads[active].join(5)
        _wait(lambda: leases[1 - active].held, "the other clock to take the lease")
        _wait(lambda: queue.count >= 1, "the other clock to queue a sweep")
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(5)
        queue.empty()


def _wait(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_replica_restarted_under_its_name_handles_what_it_left_pending_at_once(
        redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """BATON_CONSUMER (Options.consumer_name) kept across a restart: the entry a killed copy had
    read is handled by its successor at start, not after a visibility timeout (30 s here)."""
    from contracts.envelope import Envelope, new_event
    from participants.runtime.db import make_engine
    from participants.runtime.loop import Options, Runtime
    from participants.runtime.participant import Context, Participant

    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    handled: list[str] = []
    payment = Participant("payment")

    @payment.on_event("order.placed")
    def placed(message: Envelope, ctx: Context) -> list[Envelope]:
        handled.append(message.id)
        return []

    raw = redis.Redis.from_url(redis_url)
    engine = make_engine(f"sqlite:///{tmp_path}/payment.db")
    options = Options(visibility_timeout=30, block_ms=1, linger_ms=0, consumer_name="payment-2")
    try:
        first = Runtime(payment, engine, raw, keys, options)
        assert first.consumer == "payment-2"
        first.setup()
        event = new_event("order.placed", {"order_id": "o-1", "customer_id": "c", "currency": "EUR",
                                           "items": [{"product_id": "p", "quantity": 1, "unit_price": 1}],
                                           "total_amount": 1}, correlation_id="o-1", source="test")
        stream = keys.event_stream("order.placed")
        raw.xadd(stream, event.to_fields())  # type: ignore[arg-type]
        raw.xreadgroup("payment", "payment-2", {stream: ">"}, count=1)  # read, then killed
        other = Runtime(payment, engine, raw, keys, dataclasses.replace(options, consumer_name="x"))
        other._start()  # another name: not its entry, and not idle long enough to reclaim
        assert handled == []
        again = Runtime(payment, engine, raw, keys, options)
        again._start()
        assert handled == [event.id]
        assert redis_client.xpending(stream, "payment")["pending"] == 0
    finally:
        for key in raw.scan_iter(match=f"{keys.prefix}:*"):
            raw.delete(key)
        raw.close()
        engine.dispose()

