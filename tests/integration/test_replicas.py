"""What lets several replicas of a process share one Redis: the clock's lease (one active clock,
taken over within its TTL when the holder dies), consumers left behind by dead replicas forgotten
only when they own nothing pending, and two clocks ticking against one queue."""

from __future__ import annotations

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
        assert time.monotonic() - began < 2.0, "the standby never took the lease"
        time.sleep(0.02)
    assert time.monotonic() - began < 0.6
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
    queue = Queue(services.keys.rq_queue("sweeps"), connection=services.redis,
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
