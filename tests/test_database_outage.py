"""A consumer while its PostgreSQL is down (`pg_ctl stop -m immediate`): it acknowledges nothing,
dead-letters nothing, and catches up at once when the server is back, each effect applied once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from bench.servers import Servers, make_servers
from contracts.streams import Keys
from participants.db import make_engine
from participants.reference import build
from participants.runtime import Options, Runtime
from tests.system import wait_until
from tests.test_runtime import order, stream_of

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
                 Options(visibility_timeout=VISIBILITY, block_ms=50), consumer="outage-test")
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
