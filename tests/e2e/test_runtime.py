"""The participant runtime with real processes: the reference `payment` participant run as a process
and killed in its handler, and a Redis server restarted from its AOF under a runtime (the runtime
in-process: tests/integration/test_runtime.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from contracts.streams import Keys
from participants.reference import payment
from tests.integration import test_runtime as inproc
from tests.integration.test_runtime import FAST, Bench, Probe, drain, order, poll_until

bench = inproc.bench  # the runtime's test bench on a real database and Redis, as in-process

BATON = Path(sys.executable).with_name("baton")


def _participant_env(tmp_path: Path, database_url: str, redis_url: str, keys: Keys,
                     **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BATON_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({
        "DATABASE_URL": f"sqlite:///{tmp_path}/unused.db",
        "BATON_PARTICIPANT_DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BATON_STREAM_PREFIX": keys.prefix,
        "BATON_DATA_DIR": str(tmp_path / "data"),
        "BATON_VISIBILITY_TIMEOUT": "1",
        "BATON_BLOCK_MS": "100",
        "BATON_LOG_FORMAT": "console",
        **extra,
    })
    return env


@dataclass
class Processes:
    tmp_path: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, env: dict[str, str], log_name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / log_name, "wb") as log:
            proc = subprocess.Popen([str(BATON), *args], env=env, cwd=self.tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    def log(self, log_name: str) -> str:
        return (self.tmp_path / log_name).read_text(errors="replace")[-3000:]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    made = Processes(tmp_path)
    try:
        yield made
    finally:
        for proc in made.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def pending_count(client: redis.Redis, stream: str, group: str = "payment") -> int:
    info: Any = client.xpending(stream, group)
    return int(info["pending"])


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_participant_killed_in_its_handler_is_reclaimed_and_charges_once(
        bench: Bench, processes: Processes, tmp_path: Path) -> None:
    placed = order()
    stream = bench.keys.event_stream("order.placed")
    bench.send(placed)
    env = _participant_env(tmp_path, bench.database_url, bench.redis_url, bench.keys)
    first = processes.start({**env, "BATON_CRASH_POINTS": "runtime.in_handler"}, "first.log",
                            "participant", "payment")
    assert first.wait(timeout=30) == -signal.SIGKILL, processes.log("first.log")
    engine = bench.engine()

    def charges() -> list[Any]:
        query = select(payment.ledger).where(payment.ledger.c.correlation_id == placed.correlation_id,
                                             payment.ledger.c.kind == "charge")
        with engine.connect() as conn:
            return list(conn.execute(query).all())

    assert charges() == [], "the killed transaction left nothing behind"
    assert bench.emitted("payment.charged") == []
    assert pending_count(bench.client, stream) == 1, "what the dead process read is still pending"

    second = processes.start(env, "second.log", "participant", "payment")
    wait_for(lambda: len(bench.emitted("payment.charged")) >= 1 and
             pending_count(bench.client, stream) == 0,
             60, "the second process reclaims, charges and acknowledges the order")
    second.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    assert second.wait(timeout=20) == 0, processes.log("second.log")
    # 0.97 s in a probe on a quiet machine (the default 2 s block); 5.4 s once at load average 19.
    assert time.monotonic() - asked < 15, "SIGTERM stops the process within seconds"
    [answer] = bench.emitted("payment.charged")
    assert answer.correlation_id == placed.correlation_id
    assert answer.causation_id == placed.id
    assert len(charges()) == 1


@pytest.mark.slow
def test_a_lost_payment_charged_is_published_again_when_payment_starts_after_the_loss(
        bench: Bench, processes: Processes, tmp_path: Path) -> None:
    """`payment` charges and stops; Redis loses everything while it is down; the `payment` process
    started next publishes the lost `payment.charged` again, with its id, and charges no more."""
    placed = order()
    bench.send(placed)
    env = _participant_env(tmp_path, bench.database_url, bench.redis_url, bench.keys)
    first = processes.start(env, "first.log", "participant", "payment")
    # Each wait includes a process start: 20 s was not enough once, with four pytest workers.
    wait_for(lambda: len(bench.emitted("payment.charged")) == 1, 60, "the charge")
    [charged] = bench.emitted("payment.charged")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0, processes.log("first.log")
    for key in bench.client.scan_iter(match=f"{bench.keys.prefix}:*"):
        bench.client.delete(key)  # a host reboot without AOF: streams, groups, the epoch marker

    processes.start(env, "second.log", "participant", "payment")
    wait_for(lambda: len(bench.emitted("payment.charged")) == 1, 60, "the lost charge published again")
    assert bench.emitted("payment.charged")[0].id == charged.id
    # The warning comes once the outbox is re-published, so it can follow the charge seen above.
    wait_for(lambda: "Redis lost its data" in processes.log("second.log"), 60,
             "the loss logged")
    with bench.engine().connect() as conn:
        charges = conn.execute(select(payment.ledger).where(
            payment.ledger.c.correlation_id == placed.correlation_id,
            payment.ledger.c.kind == "charge")).all()
    assert len(charges) == 1


def test_after_redis_restarts_from_its_aof_the_last_moments_are_published_again(
        database_url: str, tmp_path: Path) -> None:
    """With `appendfsync everysec`, a Redis that crashes loses the last second of writes, and the
    epoch marker, being older, survives: the restart itself (a new run id) is the sign. The
    runtime publishes again what it sent just before, with the same ids. The lost write is
    simulated by deleting the entry before a clean restart on the same files."""
    from urllib.parse import urlparse

    from participants.runtime.redis_server import start_server, stop_server

    binary = os.environ.get("BATON_TEST_REDIS_SERVER")
    data = tmp_path / "redis"
    url = start_server(data, appendonly=True, binary=binary)
    port = urlparse(url).port
    client = redis.Redis.from_url(url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    bench = Bench(database_url, url, client, keys, Probe())
    try:
        rt = bench.runtime()
        bench.send(order())
        drain(rt)
        [charged] = bench.entries(keys.event_stream("payment.charged"))
        client.xdel(keys.event_stream("payment.charged"), charged[0])  # the write the crash lost
        client.close()
        stop_server(data)
        start_server(data, port=port, appendonly=True, binary=binary)
        time.sleep(FAST.visibility_timeout)  # the check runs every half visibility timeout
        poll_until(rt, lambda: len(bench.entries(keys.event_stream("payment.charged"))) == 1,
                   what="the lost event published again")
        [again] = bench.entries(keys.event_stream("payment.charged"))
        assert again[1]["id"] == charged[1]["id"]
        assert bench.entries(keys.event_stream("order.placed"))  # the rest of the data survived
    finally:
        client.close()
        for engine in bench.engines:
            engine.dispose()
        stop_server(data)
