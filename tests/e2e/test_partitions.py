"""Partitioned streams with real processes: replicas of one participant share the partitions of a
partitioned type, a replica added takes its share, a replica killed with SIGKILL gives its share
up after the lease's TTL, and through both each key's messages are handled once, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, select

from contracts.envelope import new_event
from contracts.streams import Keys, Partitioning
from tests.e2e import partition_probe

ROOT = Path(__file__).parents[2]
KEYS, PER_KEY = 24, 25


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env(tmp_path: Path, database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    flows = tmp_path / "flows"
    flows.mkdir(exist_ok=True)
    (flows / "probe.yaml").write_text(partition_probe.PROBE_FLOW)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BATON_") and k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "BATON_PARTICIPANT_DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{tmp_path}/unused.db",
            "BATON_STREAM_PREFIX": prefix, "BATON_DATA_DIR": str(tmp_path / "data"),
            "BATON_FLOWS_DIRS": str(flows), "BATON_VISIBILITY_TIMEOUT": "1",
            "BATON_BLOCK_MS": "100", "BATON_LOG_FORMAT": "console", "BATON_READ_COUNT": "10",
            "PROBE_SLEEP": "0.02"}


def _start(env: dict[str, str], tmp_path: Path, name: str,
           replicas: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.partition_probe"], env=env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    replicas.append(proc)
    return proc


def _rows(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        try:
            return list(conn.execute(select(partition_probe.handled).order_by(
                partition_probe.handled.c.n)).all())
        except Exception:  # the table is made by the first replica's setup
            return []


def _wait(engine: Any, count: int, timeout: float, tmp_path: Path) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(rows := _rows(engine)) < count:
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("*.log"))
            raise AssertionError(f"{len(rows)} of {count} handled within {timeout} s\n{logs}")
        time.sleep(0.05)
    return rows


@pytest.mark.slow
def test_order_per_key_holds_as_a_replica_joins_and_another_is_killed(
        pg_participant_url: str, redis_url: str, tmp_path: Path,
        replicas: list[subprocess.Popen[bytes]]) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}", {"probe.changed": Partitioning("key", 8)})
    client = redis.Redis.from_url(redis_url)
    engine = create_engine(pg_participant_url)
    env = _env(tmp_path, pg_participant_url, redis_url, keys.prefix)
    try:
        pipe = client.pipeline(transaction=False)
        for seq in range(PER_KEY):  # interleaved: each partition holds several keys' entries
            for k in range(KEYS):
                data = {"key": f"SKU-{k}", "seq": seq}
                event = new_event("probe.changed", data, correlation_id=f"c{k}", source="test")
                pipe.xadd(keys.stream_of("probe.changed", data), event.to_fields())  # type: ignore[arg-type]
        pipe.execute()
        total = KEYS * PER_KEY
        first = _start(env, tmp_path, "first", replicas)
        _wait(engine, total // 6, 60, tmp_path)
        _start(env, tmp_path, "second", replicas)
        _start(env, tmp_path, "third", replicas)
        deadline = time.monotonic() + 30  # until a newcomer has taken its share and handled some
        while len({r.consumer for r in _rows(engine)}) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        rows = _wait(engine, total, 90, tmp_path)
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()
    assert len(rows) == total, "each message handled once (the killed batch rolled back)"
    assert len({r.consumer for r in rows}) >= 3, "the newcomers took their shares"
    for k in range(KEYS):
        seqs = [r.seq for r in rows if r.key == f"SKU-{k}"]
        assert seqs == list(range(PER_KEY)), f"SKU-{k} handled out of order: {seqs}"
