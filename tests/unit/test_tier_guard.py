"""The unit tier's guard (tests/unit/conftest.py) refuses what a unit test may not do, through the
clients the code uses, and reports it even where the code under test swallows the error."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import redis
import requests
import sqlalchemy as sa

from tests.unit.conftest import Guard, TierViolation


def test_sockets_are_refused_to_redis_http_and_raw_connects(unit_tier_guard: Guard) -> None:
    with pytest.raises(TierViolation):
        socket.create_connection(("127.0.0.1", 9))
    with socket.socket() as s, pytest.raises(TierViolation):
        s.bind(("127.0.0.1", 0))
    with pytest.raises(TierViolation):
        redis.Redis(port=9, socket_connect_timeout=0.1).ping()
    with pytest.raises(TierViolation):
        requests.get("http://127.0.0.1:9/", timeout=0.1)
    assert len(unit_tier_guard.attempts) == 4
    unit_tier_guard.attempts.clear()  # seen: this test does not fail at teardown


def test_processes_and_databases_are_refused(unit_tier_guard: Guard, tmp_path: object) -> None:
    with pytest.raises(TierViolation):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    for url in ("sqlite://", "postgresql+psycopg://baton@127.0.0.1:9/x"):
        engine = sa.create_engine(url)
        with pytest.raises(TierViolation):
            engine.connect()
        engine.dispose()
    assert unit_tier_guard.attempts == ["start a process", "connect to a database",
                                        "connect to a database"]
    unit_tier_guard.attempts.clear()


def test_every_test_here_is_marked_unit(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None
