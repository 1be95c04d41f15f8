"""The test servers and fixtures work, and so does participants/runtime/redis_server.py."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from participants.runtime import redis_server


def test_redis_client_pings_and_roundtrips_a_stream(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    stream = f"t{uuid.uuid4().hex[:8]}:event:test.happened"
    try:
        entry_id = redis_client.xadd(stream, {"id": "m1", "kind": "event"})
        redis_client.xgroup_create(stream, "controller", id="0")
        got = redis_client.xreadgroup("controller", "c1", {stream: ">"}, count=10, block=100)
        # RESP2 answers a list of [stream, entries]; RESP3 a dict {stream: [entries]}
        entries = got[stream][0] if isinstance(got, dict) else got[0][1]
        assert entries == [(entry_id, {"id": "m1", "kind": "event"})] or entries == [
            [entry_id, {"id": "m1", "kind": "event"}]
        ]
        assert redis_client.xack(stream, "controller", entry_id) == 1
    finally:
        redis_client.delete(stream)


def _current_schema(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT current_schema()")).scalar_one())
    finally:
        engine.dispose()


def test_database_url_is_usable(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (n integer)"))
            conn.execute(sa.text("INSERT INTO probe VALUES (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT n FROM probe")).scalar_one() == 1
    finally:
        engine.dispose()
    if database_url.startswith("sqlite"):
        assert Path(database_url.removeprefix("sqlite:///")).is_file()
    else:
        assert _current_schema(database_url).startswith("t_")


def test_pg_schemas_are_isolated(pg_database_url: str) -> None:
    schema = _current_schema(pg_database_url)
    assert schema.startswith("t_")
    engine = sa.create_engine(pg_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (n integer)"))
    finally:
        engine.dispose()
    base = sa.create_engine(os.environ["BATON_TEST_DATABASE_URL"])
    try:
        with base.connect() as conn:
            assert conn.execute(sa.text("SELECT current_schema()")).scalar_one() == "public"
            assert not sa.inspect(conn).has_table("only_here")
            assert sa.inspect(conn).has_table("only_here", schema=schema)
    finally:
        base.dispose()


# -- participants/runtime/redis_server.py ----------------------------------------------------------------


def _binary() -> str | None:
    return os.environ.get("BATON_TEST_REDIS_SERVER") or None


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")  # exited, not reaped yet


def _servers_in(data_dir: Path) -> list[int]:
    """Pids of the processes whose working directory is data_dir (a server chdirs there)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == data_dir.resolve() and not _dead(
                    int(proc.name)
                ):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_server_binary_exists() -> None:
    assert os.access(redis_server.server_binary(), os.X_OK)


def test_start_ensure_stop(tmp_path: Path) -> None:
    url = redis_server.start_server(tmp_path, binary=_binary())
    try:
        state = json.loads((tmp_path / "redis.json").read_text())
        assert state["url"] == url == f"redis://127.0.0.1:{state['port']}/0"
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            assert client.ping() is True
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("save") == {"save": ""}
        finally:
            client.close()
        assert redis_server.ensure_server(tmp_path) == url
        assert _servers_in(tmp_path) == [state["pid"]]
    finally:
        assert redis_server.stop_server(tmp_path) is True
    assert _dead(state["pid"])
    assert not (tmp_path / "redis.json").exists()
    assert redis_server.stop_server(tmp_path) is False


def test_start_refuses_a_served_dir(tmp_path: Path) -> None:
    redis_server.start_server(tmp_path, binary=_binary(), appendonly=False)
    try:
        with pytest.raises(RuntimeError, match="already serves"):
            redis_server.start_server(tmp_path, binary=_binary())
    finally:
        redis_server.stop_server(tmp_path)


def test_concurrent_ensure_starts_one_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    barrier = threading.Barrier(4)
    urls: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait()
            urls.append(redis_server.ensure_server(data_dir, binary=_binary()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(urls) == 4 and len(set(urls)) == 1
        assert len(_servers_in(data_dir)) == 1
    finally:
        assert redis_server.stop_server(data_dir) is True
    assert _servers_in(data_dir) == []


def test_ensure_restarts_a_dead_server(tmp_path: Path) -> None:
    first = redis_server.ensure_server(tmp_path, binary=_binary())
    redis_server.stop_server(tmp_path)
    second = redis_server.ensure_server(tmp_path, binary=_binary())
    try:
        client = redis.Redis.from_url(second)
        try:
            assert client.ping() is True
        finally:
            client.close()
    finally:
        redis_server.stop_server(tmp_path)
    assert first.startswith("redis://127.0.0.1:")
