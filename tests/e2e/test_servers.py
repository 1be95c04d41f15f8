"""The Redis server helper (participants/runtime/redis_server.py) with real server processes: start,
ensure and stop, one server per data dir, a dead one restarted."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import redis

from participants.runtime import redis_server


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
