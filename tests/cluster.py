"""A real Redis Cluster for tests and benchmarks: `redis-server --cluster-enabled yes` on free
loopback ports, joined with `redis-cli --cluster create` (3 primaries; with `replicas=1`, six
nodes, one replica each, for failovers), torn down whatever happens.

    with Cluster(tmp_path) as cluster:          # cluster.url: redis+cluster://127.0.0.1:p1,...
        cluster.kill(cluster.primary_of("some-key"))   # kill -9; its replica takes over
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

HOST = "127.0.0.1"
# BATON_TEST_REDIS_CLUSTER=1: the tests' `redis_url` is a cluster (tests/conftest.py)
ON_CLUSTER = os.environ.get("BATON_TEST_REDIS_CLUSTER") == "1"
# Wraps redis.Redis, a single server's client: deselected (not skipped) when ON_CLUSTER (conftest).
plain_redis_only = pytest.mark.plain_redis_only
NODE_TIMEOUT_MS = 1000  # a failover in about two seconds


def _free_ports(n: int) -> list[int]:
    """n ports free now, and their cluster bus ports (port + 10000) too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class Cluster:
    def __init__(self, directory: Path, *, primaries: int = 3, replicas: int = 0,
                 binary: str | None = None) -> None:
        self.directory = Path(directory)
        self.binary = binary or os.environ.get("BATON_TEST_REDIS_SERVER") or "redis-server"
        cli = shutil.which("redis-cli") or str(Path(self.binary).with_name("redis-cli"))
        if not Path(cli).exists():
            raise RuntimeError("redis-cli not found: a Redis Cluster is created with "
                               "`redis-cli --cluster create` (apt-get install redis-tools)")
        self.cli = cli
        self.replicas = replicas
        self.ports = _free_ports(primaries * (1 + replicas))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports)

    def __enter__(self) -> Cluster:
        try:
            for port in self.ports:
                self._launch(port)
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _launch(self, port: int) -> None:
        node = self.directory / f"node-{port}"
        node.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(port), "--bind", HOST, "--dir", str(node),
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor", "0",  # a replica always may take over
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--logfile", str(node / "redis.log")]
        self.procs[port] = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self._wait(lambda: self.node(port).ping(), f"node {port} to answer")

    def _create(self) -> None:
        nodes = [f"{HOST}:{p}" for p in self.ports]
        subprocess.run([self.cli, "--cluster", "create", *nodes, "--cluster-replicas",
                        str(self.replicas), "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        self._wait(self._ready, "the cluster to be ready")

    def _ready(self) -> bool:
        for port in self.ports:
            info: Any = self.node(port).cluster("info")
            if info.get("cluster_state") != "ok":
                return False
        replicas = [self.node(p).info("replication") for p in self.ports]
        synced = [r for r in replicas if r["role"] == "slave" and r["master_link_status"] == "up"]
        return len(synced) == len(self.ports) - len(self.ports) // (1 + self.replicas)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5)

    def primary_of(self, key: str) -> int:
        """The port of the primary serving `key` now."""
        node = self.node(self.alive()[0])
        slot: int = node.cluster("keyslot", key)
        shards: Any = node.execute_command("CLUSTER", "SLOTS")
        for start, end, primary, *_ in shards:
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"no primary serves slot {slot}")

    def primaries(self) -> list[int]:
        return sorted(p for p in self.alive()
                      if self.node(p).info("replication")["role"] == "master")

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def kill(self, port: int) -> None:
        """kill -9 one node; with replicas, wait for the cluster to be whole again without it."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if self.replicas:
            self._wait(lambda: self._failed_over(port), f"a replica to take over from {port}")

    def shut_down(self, port: int) -> None:
        """Stop one node with SIGTERM, as an operator's restart does (its AOF is flushed)."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    def restart(self, port: int) -> None:
        """Start a stopped node again on its port, from its own files (nodes.conf, the AOF)."""
        self._launch(port)

    def wait_ok(self) -> None:
        """Until every node that runs says the cluster is whole."""
        self._wait(lambda: all(self.node(p).cluster("info").get("cluster_state") == "ok"
                               for p in self.alive()), "the cluster to be whole again")

    def _failed_over(self, dead: int) -> bool:
        """Every node left says the cluster is whole, and none names `dead` a primary of slots."""
        for port in self.alive():
            node = self.node(port)
            info: Any = node.cluster("info")
            shards: Any = node.execute_command("CLUSTER", "SLOTS")
            if info.get("cluster_state") != "ok" or any(int(s[2][1]) == dead for s in shards):
                return False
        return True

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(10)

    @staticmethod
    def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)
