"""Processes started before their database or Redis (a machine booting, `honcho start` racing the
servers) wait for them instead of exiting, and a SIGTERM meanwhile stops them cleanly: one Redis
server, or a Redis Cluster no node of which answers yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from contracts.envelope import decode_fields, new_event
from contracts.streams import Keys
from controller.cli.procfile import ROOT
from participants.runtime.connect import connect
from participants.runtime.redis_server import start_server, stop_server
from tests.cluster import Cluster
from tests.system import free_port, order_input, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
WAITING = "unavailable at start: retrying"


def spawn(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{args[0]}.log"
    base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
            "BATON_DATA_DIR": str(tmp_path / "data"), "BATON_BLOCK_MS": "200"}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "baton"), *args], env={**base, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, log.read_text()


def test_a_participant_started_before_redis_waits_for_it_then_works(tmp_path: Path) -> None:
    port = free_port()
    keys = Keys(f"s{uuid.uuid4().hex[:8]}")
    proc, log = spawn(tmp_path, ["participant", "inventory"], REDIS_URL=f"redis://127.0.0.1:{port}/0",
                      BATON_STREAM_PREFIX=keys.prefix)
    try:
        wait_until(lambda: WAITING in log.read_text(), 30, "the participant to wait for Redis")
        assert proc.poll() is None, log.read_text()
        url = start_server(tmp_path / "redis", port=port, appendonly=False,
                           binary=os.environ.get("BATON_TEST_REDIS_SERVER"))
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            placed = keys.event_stream("order.placed")
            wait_until(lambda: client.exists(placed) and client.xinfo_groups(placed), 30,
                       "its consumer group, once Redis is up")
            order = new_event("order.placed", order_input(), correlation_id=f"wf-{uuid.uuid4().hex}",
                              source="test")
            client.xadd(placed, order.to_fields())  # type: ignore[arg-type]
            reserved = keys.event_stream("inventory.reserved")
            entries = wait_until(lambda: client.xrange(reserved), 30, "the reservation")
            assert decode_fields(entries[0][1]).causation_id == order.id
            stop(proc, log)
        finally:
            client.close()
            stop_server(tmp_path / "redis")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_controller_process_started_before_its_database_waits_and_stops_cleanly(
        tmp_path: Path, redis_url: str) -> None:
    dead = f"postgresql+psycopg://baton@127.0.0.1:{free_port()}/baton"
    proc, log = spawn(tmp_path, ["tracker"], DATABASE_URL=dead, REDIS_URL=redis_url,
                      BATON_STREAM_PREFIX=f"s{uuid.uuid4().hex[:8]}")
    try:
        wait_until(lambda: log.read_text().count(WAITING) >= 2, 30, "the tracker to wait, twice")
        assert "the database" in log.read_text()
        stop(proc, log)  # SIGTERM while waiting: exit 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


NO_NODE = "no node of the Redis Cluster answers: retrying"


def test_a_participant_started_before_its_redis_cluster_waits_for_a_node_then_works(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")  # its ports chosen, no node started yet
    keys = Keys(f"s{uuid.uuid4().hex[:8]}")
    proc, log = spawn(tmp_path, ["participant", "inventory"], REDIS_URL=cluster.url,
                      BATON_RQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                      BATON_STREAM_PREFIX=keys.prefix)
    try:
        wait_until(lambda: log.read_text().count(NO_NODE) >= 2, 30, "the participant to wait, twice")
        assert proc.poll() is None, log.read_text()
        assert all(f"127.0.0.1:{port}" in log.read_text() for port in cluster.ports)  # its nodes
        with cluster:
            client = connect(cluster.url, decode_responses=True)
            try:
                placed = keys.event_stream("order.placed")
                wait_until(lambda: client.exists(placed) and client.xinfo_groups(placed), 60,
                           "its consumer group, once the cluster is up")
                order = new_event("order.placed", order_input(),
                                  correlation_id=f"wf-{uuid.uuid4().hex}", source="test")
                client.xadd(placed, order.to_fields())  # type: ignore[arg-type]
                entries = wait_until(lambda: client.xrange(keys.event_stream("inventory.reserved")),
                                     30, "the reservation")
                assert decode_fields(entries[0][1]).causation_id == order.id
                stop(proc, log)
            finally:
                client.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_controller_process_waiting_for_its_redis_cluster_stops_cleanly_on_sigterm(
        tmp_path: Path) -> None:
    nodes = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    proc, log = spawn(tmp_path, ["tracker"], REDIS_URL=f"redis+cluster://{nodes}",
                      BATON_RQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                      DATABASE_URL=f"postgresql+psycopg://baton@127.0.0.1:{free_port()}/baton",
                      BATON_STREAM_PREFIX=f"s{uuid.uuid4().hex[:8]}")
    try:
        wait_until(lambda: log.read_text().count(NO_NODE) >= 2, 30, "the tracker to wait, twice")
        stop(proc, log)  # SIGTERM while waiting: exit 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("credentials, reason", [
    ("", "not part of a cluster"),
    ("{user}:wrong@", "refused the credentials"),
])
def test_a_redis_cluster_url_that_no_wait_can_mend_stops_the_process_with_the_reason(
        tmp_path: Path, redis_url: str, credentials: str, reason: str) -> None:
    """`redis+cluster://` naming a server that answers but refuses the password, or is not part of
    a cluster, is a configuration error: exit 2 at once with REDIS_URL named, not a wait forever."""
    admin = redis.Redis.from_url(redis_url)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(user, enabled=True, passwords=["+right"], keys=["~*"], commands=["+@all"])
    port = admin.connection_pool.connection_kwargs["port"]
    url = f"redis+cluster://{credentials.format(user=user)}127.0.0.1:{port}"
    try:
        proc, log = spawn(tmp_path, ["tracker"], REDIS_URL=url,
                          BATON_RQ_REDIS_URL=redis_url,
                          DATABASE_URL=f"sqlite:///{tmp_path}/baton.db",
                          BATON_STREAM_PREFIX=f"s{uuid.uuid4().hex[:8]}")
        try:
            assert proc.wait(timeout=30) == 2, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        text = log.read_text()
        assert "configuration error: REDIS_URL:" in text and reason in text, text
        assert "Traceback" not in text and NO_NODE not in text, text
        assert "right" not in text and "wrong" not in text, "the password is never logged"
    finally:
        admin.acl_deluser(user)
        admin.close()
