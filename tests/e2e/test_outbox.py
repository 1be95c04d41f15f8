"""The outbox and its relay with real processes killed at named points: a writer killed between
commit and XADD, and a relay killed between XADD and marking sent (the outbox in-process:
tests/integration/test_outbox.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from contracts.envelope import decode_fields
from controller.db.tables import workflows
from participants.reference import build, payment
from participants.runtime.loop import Options, Runtime
from tests.integration import test_outbox as inproc
from tests.integration.test_outbox import ORDER, Bench, placed

bench = inproc.bench  # the outbox on a real database and Redis, as in-process

BATON = Path(sys.executable).with_name("baton")

# The start endpoint's "commit, then publish", killed in between.
START_THEN_CRASH = """
import sys
import uuid
from dataclasses import replace
import orjson
from config.settings import load_settings
from contracts.timefmt import utcnow
from controller.service.bootstrap import build_services
from controller.service.start import StartRequest, start_workflow

cid = f"wf-{uuid.uuid4().hex[:12]}"
print(cid, flush=True)
settings = replace(load_settings(), crash_points=frozenset({"outbox.before_xadd"}))
request = StartRequest(flow="order_fulfillment", input=orjson.loads(sys.argv[1]), actor="alice",
                       correlation_id=cid)
start_workflow(build_services(settings), request, utcnow())
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
    wait_for(lambda: bench.rows()[0].sent_at is not None, 60, "the relay publishes the start event")
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
    wait_for(lambda: bench.rows()[0].sent_at is not None, 60, "the restarted relay publishes again")
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
