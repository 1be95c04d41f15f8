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
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import throughput as tp
from bench.load import Watcher, closed_loop
from bench.servers import HOST, Servers, make_servers
from participants.runtime.connect import by_slot, connect
from tests.cluster import Cluster


class SlotWatcher(Watcher):
    """bench.load's Watcher, reading its streams one hash slot at a time (a cluster refuses a
    read across slots)."""

    def run(self) -> None:
        client = connect(self.url)
        try:
            while not self.halt.is_set():
                for streams in by_slot(client, list(self.streams)):
                    reply: Any = client.xread({s: self.streams[s] for s in streams},
                                              count=2000, block=20)
                    self._record(reply or [], time.perf_counter())
        except BaseException as exc:  # surfaced by the harness
            self.error = exc
        finally:
            client.close()

    def _record(self, reply: list[Any], now: float) -> None:
        for stream_b, entries in reply:
            stream = stream_b.decode()
            self.streams[stream] = entries[-1][0]
            for _, fields in entries:
                cid = fields.get(b"correlation_id", b"").decode()
                if cid in self.done or cid in self.failed:
                    continue
                if stream in self.done_streams:
                    self.done[cid] = now
                else:
                    self.failed[cid] = stream
                if self.on_finish and cid in self.kicked:
                    self.on_finish()


class OnCluster(tp.BatonScenario):
    """`baton-pg` with REDIS_URL a cluster (its `servers.redis_url`), RQ on the single server;
    the cluster's nodes count as `redis` in the CPU figures."""

    node_pids: tuple[int, ...] = ()

    def _common_kinds(self) -> None:
        super()._common_kinds()
        for pid in self.node_pids:
            self.kinds.add("redis", pid)

    def wait_groups(self, wanted: list[tuple[str, str]], timeout: float = 90) -> None:
        client = connect(self.servers.redis_url, decode_responses=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_alive()
                missing = [(s, g) for s, g in wanted if g not in _groups(client, s)]
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: consumer groups missing: {missing}")
                time.sleep(0.1)
        finally:
            client.close()


def _groups(client: redis.Redis, stream: str) -> set[str]:
    try:
        return {g["name"] for g in client.xinfo_groups(stream)}
    except redis.ResponseError:
        return set()


def measure(name: str, servers: Servers, cfg: tp.Settings, cluster: Cluster | None) -> dict[str, Any]:
    """One closed-loop run of the whole system; the figures bench.throughput reports for it."""
    tmp = servers.tmp / name
    tmp.mkdir()
    sc: tp.BatonScenario = tp.BatonScenario(name, servers, tmp)
    if cluster:
        rq = {"BATON_RQ_REDIS_URL": servers.redis_url}
        sc = OnCluster(name, dataclasses.replace(servers, redis_url=cluster.url), tmp, extra_env=rq)
        sc.node_pids = tuple(p.pid for p in cluster.procs.values())
    watcher = SlotWatcher(sc.servers.redis_url, sc.done_streams(), sc.fail_streams())
    try:
        sc.start()
        watcher.start()
        probe = tp.new_cid()
        watcher.kicked[probe] = time.perf_counter()
        sc.kick(probe)
        if watcher.wait_for([probe], 90):
            raise RuntimeError(f"{name}: the probe workflow did not finish in 90 s")
        sc.kinds.window_start()
        me, me0 = psutil.Process(), sum(psutil.Process().cpu_times()[:2])
        phase = closed_loop(sc.kick, watcher, tp.new_cid, window=cfg.window, threads=sc.kick_threads,
                            warmup=cfg.warmup, duration=cfg.closed_seconds,
                            on_window=lambda edge: None)
        still_open = watcher.wait_for(phase.kicked, cfg.drain_timeout)
        cpu = sc.kinds.window_end()
        summary = tp._summarise(phase, watcher, cpu, sum(me.cpu_times()[:2]) - me0, sc.kinds,
                                still_open)
        summary["scenario"] = name
        tp._progress(name, summary)
        return summary
    finally:
        watcher.halt.set()
        sc.stop()
        _drop_databases(servers)


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
