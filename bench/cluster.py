"""Throughput of the whole system on a Redis Cluster next to one Redis server, in the same run.

    python -m bench.cluster [--seconds 20] [--window 200] [--rounds 1] [--json out.json]

Starts PostgreSQL and one Redis (bench/servers.py) and a Redis Cluster of 3 primaries on this
machine (tests/cluster.py), then runs bench.throughput's `baton-pg` scenario (the Procfile's
processes, closed loop) on the single server and on the cluster (RQ on the single server: it does
not support Redis Cluster), alternating for --rounds. Every primary runs on the same cores as
everything else, so the ratio says what the cluster's extra round trips cost (one XREADGROUP per
hash slot, per-node pipelines), not what more machines would give. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster

from bench import throughput as tp
from bench.load import Watcher
from bench.servers import HOST, Servers, make_servers
from config import redis_urls
from tests.cluster import Cluster


class SlotWatcher(Watcher):
    """bench.load's Watcher, reading its streams one at a time (a cluster refuses a read across
    hash slots)."""

    async def _run(self) -> None:
        parsed = redis_urls.parse_cluster(self.url)
        client = AsyncCluster(startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes])
        try:
            while not self._halt:
                found = False
                for stream in list(self.streams):
                    reply: Any = await client.xread({stream: self.streams[stream]}, count=5000)
                    found = self._record(reply or [], time.perf_counter()) or found
                if not found:
                    await asyncio.sleep(0.02)
        except Exception as exc:  # surfaced by the harness
            self.error = exc
        finally:
            await client.aclose()

    def _record(self, reply: list[Any], now: float) -> bool:
        for stream_b, entries in reply:
            stream = stream_b.decode()
            self.streams[stream] = entries[-1][0]
            for _, fields in entries:
                self._seen(fields.get(b"correlation_id", b"").decode(), stream, now)
        return bool(reply)


@dataclass
class OnCluster(tp.BatonScenario):
    """`baton-pg` with REDIS_URL a cluster (its `servers.redis_url`), RQ on the single server;
    the cluster's nodes count as `redis` in the CPU figures."""

    node_pids: tuple[int, ...] = ()

    def _common_kinds(self) -> None:
        super()._common_kinds()
        for pid in self.node_pids:
            self.kinds.add("redis", pid)

    def make_watcher(self) -> Watcher:
        return SlotWatcher(self.servers.redis_url, self.done_streams(), self.fail_streams())


def measure(name: str, servers: Servers, cfg: tp.Settings, cluster: Cluster | None) -> dict[str, Any]:
    """One closed-loop run of the whole system (bench.throughput's run_scenario); its figures."""
    def on_cluster(name: str, servers: Servers, tmp: Path, **options: Any) -> OnCluster:
        assert cluster is not None
        env = {**options.pop("extra_env", {}), "BATON_RQ_REDIS_URL": servers.redis_url}
        return OnCluster(name, dataclasses.replace(servers, redis_url=cluster.url), tmp,
                         extra_env=env, node_pids=tuple(p.pid for p in cluster.procs.values()),
                         **options)

    tp.FACTORIES[name] = on_cluster if cluster else tp.BatonScenario
    try:
        result = tp.run_scenario(name, servers, cfg, with_open=False)
    finally:
        _drop_databases(servers)
    if "error" in result or not result["phases"]:
        raise RuntimeError(f"{name}: {result.get('error', 'no phase measured')}")
    return {**result["phases"][0], "scenario": name}


def _drop_databases(servers: Servers) -> None:
    """The next run creates them afresh (bench.throughput runs `baton-pg` once per command)."""
    assert servers.pg_bin is not None
    for name in servers.created_dbs:
        subprocess.run([str(servers.pg_bin / "dropdb"), "-h", HOST, "-p", str(servers.pg_port),
                        "-U", "baton", "--force", name], check=True, capture_output=True)
    servers.created_dbs.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--window", type=int, default=200, help="workflows in flight")
    parser.add_argument("--rounds", type=int, default=1, help="single, cluster: this many times")
    parser.add_argument("--json", type=Path, help="where to write the figures")
    args = parser.parse_args(argv)
    cfg = tp.Settings(quick=True, warmup=args.warmup, closed_seconds=args.seconds, open_seconds=0,
                      rates=(), window=args.window, drain_timeout=60)
    servers = make_servers()
    results: list[dict[str, Any]] = []
    try:
        servers.start_redis()
        servers.start_postgres()
        with Cluster(servers.tmp / "cluster", binary=os.environ.get("BATON_TEST_REDIS_SERVER")) as cl:
            for n in range(args.rounds):
                results.append(measure(f"single-{n}", servers, cfg, None))
                results.append(measure(f"cluster-{n}", servers, cfg, cl))
    finally:
        servers.close()
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _table(results: list[dict[str, Any]]) -> str:
    lines = ["| run | workflows/s | p50 ms | p99 ms | CPU s per 1k workflows |", "|---|---|---|---|---|"]
    for r in results:
        lat = r["latency_ms"]
        lines.append(f"| {r['scenario']} | {r['workflows_per_s']} | {lat['p50']} | {lat['p99']} | "
                     f"{r['cpu_s_per_1k']} |")
    single = [r["workflows_per_s"] or 0 for r in results if r["scenario"].startswith("single")]
    on_cluster = [r["workflows_per_s"] or 0 for r in results if r["scenario"].startswith("cluster")]
    if sum(single):
        lines.append(f"\ncluster / single throughput: {sum(on_cluster) / sum(single):.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
