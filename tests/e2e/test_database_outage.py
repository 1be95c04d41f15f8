"""PostgreSQL stopped with `pg_ctl stop -m immediate` under a running consumer and a running API: the
consumer acknowledges nothing, dead-letters nothing, and catches up at once when the server is back,
each effect applied once; the API answers 503 with Retry-After, never hangs, and recovers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from structlog.testing import capture_logs

from bench.servers import Servers, make_servers
from config.settings import load_settings
from contracts.streams import Keys
from controller.api.app import create_app
from controller.db import migrate
from controller.service.bootstrap import build_services
from participants.reference import build
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime
from tests.integration.test_api import ALICE, VERA, assert_problem, auth, environment, order_input
from tests.integration.test_runtime import order, stream_of
from tests.system import wait_until

VISIBILITY = 60.0  # far longer than the test: catching up must not wait for a reclaim


@pytest.fixture
def postgres() -> Iterator[Servers]:
    servers = make_servers()
    try:
        servers.start_postgres(durable=True, stat_statements=False)  # fsync on: commits survive
        servers.create_db("outage")
        yield servers
    finally:
        servers.close()


def group_state(client: redis.Redis, stream: str) -> tuple[int, int]:
    """(delivered and not acknowledged, not yet delivered) for the inventory group."""
    for group in client.xinfo_groups(stream):
        info: dict[str, Any] = {k.decode() if isinstance(k, bytes) else k: v for k, v in group.items()}
        if info["name"] in (b"inventory", "inventory"):
            return int(info["pending"]), int(info["lag"] or 0)
    raise AssertionError("no inventory group")


def test_a_consumer_stops_acknowledging_while_the_database_is_down_and_catches_up(
        postgres: Servers, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    engine = make_engine(postgres.pg_url("outage"))
    rt = Runtime(build("inventory"), engine, client, keys,
                 Options(visibility_timeout=VISIBILITY, block_ms=50, linger_ms=0), consumer="outage-test")
    stop = threading.Event()
    worker = threading.Thread(target=rt.run, args=(stop,), daemon=True)
    before, during = [order() for _ in range(3)], [order() for _ in range(5)]
    stream = stream_of(keys, before[0])
    reserved = sa.text("SELECT count(DISTINCT correlation_id) FROM inventory_reservations")
    try:
        rt.setup()  # the group exists before anything is added
        worker.start()
        for envelope in before:
            client.xadd(stream, envelope.to_fields())  # type: ignore[arg-type]
        wait_until(lambda: group_state(client, stream) == (0, 0), 20, "the first orders")

        postgres.stop_postgres("immediate")
        for envelope in during:
            client.xadd(stream, envelope.to_fields())  # type: ignore[arg-type]
        time.sleep(3)  # several rounds of the loop with the database gone
        pending, lag = group_state(client, stream)
        assert pending + lag == len(during), (pending, lag)  # nothing acknowledged
        assert pending <= len(during)
        assert client.xlen(keys.dead_stream("inventory")) == 0
        assert worker.is_alive()

        postgres.restart_postgres()
        wait_until(lambda: group_state(client, stream) == (0, 0), 30, "the consumer to catch up")
        with engine.connect() as conn:
            assert conn.execute(reserved).scalar_one() == len(before) + len(during)
            per_order = conn.execute(sa.text(
                "SELECT correlation_id, count(*) FROM inventory_reservations GROUP BY 1")).all()
        assert all(n == 1 for _, n in per_order), per_order  # each order reserved once
        assert client.xlen(keys.dead_stream("inventory")) == 0
    finally:
        stop.set()
        worker.join(10)
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()
    assert not worker.is_alive()


def test_the_api_answers_503_with_retry_after_while_postgresql_is_down_and_recovers(
        postgres: Servers, redis_url: str, tmp_path: Path) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    url = postgres.pg_url("outage")
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    settings = load_settings(environment(url, redis_url, tmp_path, keys))
    services = build_services(settings)
    try:
        with capture_logs():
            client = create_app(settings, services).test_client()
            body = {"flow": "order_fulfillment", "input": order_input()}
            before = client.post("/v1/workflows", json=body, headers=auth(ALICE))
            assert before.status_code == 201
            postgres.stop_postgres("immediate")  # the pool's connections are dead now
            for request in (
                lambda: client.post("/v1/workflows", json={**body, "input": order_input()},
                                    headers=auth(ALICE)),
                lambda: client.get("/v1/workflows", headers=auth(VERA)),
                lambda: client.get(f"/v1/workflows/{before.get_json()['correlation_id']}",
                                   headers=auth(VERA)),
                lambda: client.get("/readyz"),
            ):
                t0 = time.monotonic()
                answer = request()
                assert time.monotonic() - t0 < 15  # bounded: never hangs
                assert_problem(answer, 503)
                assert int(answer.headers["Retry-After"]) >= 1
            assert client.get("/healthz").status_code == 200  # alive, though not ready

            postgres.restart_postgres()
            after = client.post("/v1/workflows", json={**body, "input": order_input()},
                                headers=auth(ALICE))
            assert after.status_code == 201, after.get_data(as_text=True)
            assert client.get("/readyz").status_code == 200
    finally:
        services.close()
