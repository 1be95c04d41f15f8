"""A `kill -9` of the web while concurrent single POSTs share group commits loses nothing it
accepted: every start answered 201 is in the database with its start event in the outbox. A worker
killed alone is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
import sqlalchemy as sa

from participants.runtime.tables import outbox
from tests.system import TOKENS, System, order_input, wait_until

THREADS = 16


@pytest.fixture
def system(tmp_path: Path, pg_database_url: str, redis_url: str) -> Iterator[System]:
    sys_ = System(tmp_path, pg_database_url, redis_url)
    try:
        yield sys_
    finally:
        sys_.close()


def test_a_kill_of_the_web_mid_group_loses_no_accepted_start(system: System) -> None:
    system.start("web")  # after the schema, as the release line would
    accepted: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def kick() -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {TOKENS['starter']}"
            while not stop.is_set():
                cid = f"x-{uuid.uuid4().hex[:16]}"
                try:
                    r = http.post(f"{system.base}/v1/workflows", timeout=10, json={
                        "flow": "order_fulfillment", "input": order_input(), "correlation_id": cid})
                except requests.RequestException:
                    continue  # the web is gone: no answer, nothing promised
                if r.status_code == 201:
                    accepted.append(cid)
                else:
                    refused.append(f"{r.status_code} {r.text[:300]}")

    threads = [threading.Thread(target=kick) for _ in range(THREADS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(accepted) >= 150 or refused, 60, "150 starts accepted")
        assert not refused, (refused[:3], system.logs("web")[-3000:])
        system.procs.kill("web")  # kill -9 of the master and its workers, groups in flight
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    engine = sa.create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT correlation_id FROM workflows")).scalars())
            events = {row.fields.get("correlation_id") for row in conn.execute(sa.select(outbox.c.fields))}
    finally:
        engine.dispose()
    missing = set(accepted) - stored
    assert not missing, f"{len(missing)} of {len(accepted)} accepted starts lost"
    assert not set(accepted) - events, "an accepted start's event is not in the outbox"


def test_a_worker_killed_is_replaced_and_the_web_serves_on(system: System) -> None:
    """gunicorn's master starts another worker; the other serves meanwhile."""
    system.start("web")  # after the schema, as the release line would
    master = psutil.Process(system.procs.running["web"].pid)
    workers = {p.pid for p in master.children()}
    assert len(workers) == 2, workers
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len({p.pid for p in master.children()} - {victim}) >= 2, 30,
               "a new worker")
    assert master.is_running() and system.procs.running["web"].poll() is None
    wait_until(system.api.ready, 30, "the API to be ready again")
    system.start_order()
