"""Throughput of `order_fulfillment` with 1, 2 and 4 trackers and 1, 2 and 4 processes of each of
its participants, in one run, on one Redis and one PostgreSQL: the ratio between them, not the
absolute (issue 17, item 5).

    python -m bench.scaling                      # 30 s closed loop per size
    python -m bench.scaling --seconds 3 --sizes 1,2 --window 40   # a smoke run

Each size is bench/throughput.py's `baton-pg` scenario (the Procfile's lines on PostgreSQL, the
kickoff through gunicorn) with `tracker` and each order participant's line run N times, every
replica a consumer of its own in the same groups. The sizes run one after the other on the same
servers, each on fresh databases and stream prefix. On a machine of few cores the replicas
compete for the same CPUs: the ratio shows what running more of them costs or gains there, and
where the bottleneck is not in the consumers (the web, PostgreSQL) it stays near 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import throughput
from bench.servers import make_servers
from bench.throughput import PARTICIPANTS, BatonScenario, Processes, Settings, run_scenario

SCALED = ("tracker", *PARTICIPANTS)


@dataclass
class ReplicatedBaton(BatonScenario):
    """`baton-pg` with `replicas` copies of the tracker's and each order participant's line."""

    replicas: int = 1

    def start(self) -> None:
        """On fresh databases: the previous size's go first (each size creates the same names)."""
        for db in self.servers.created_dbs:
            self.servers.psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        self.servers.created_dbs.clear()
        super().start()

    def _extra(self, lines: dict[str, str]) -> dict[str, str]:
        return {f"{n}.{k}": lines[n] for n in SCALED for k in range(2, self.replicas + 1)}

    def _processes(self, env: dict[str, str], lines: dict[str, str]) -> Processes:
        return super()._processes(env, {**lines, **self._extra(lines)})

    def _start_all(self, names: list[str]) -> None:
        assert self.procs is not None
        super()._start_all([*names, *self._extra(self.procs.lines)])


def scenario_name(n: int) -> str:
    return f"baton-x{n}"


def table(results: list[dict[str, Any]]) -> str:
    """One line per size: workflows/s, its ratio to the first size's, CPU and p50/p99."""
    lines = ["size      wf/s   ratio   cpu s/1k wf   p50 ms   p99 ms   unfinished   error"]
    base = None
    for r in results:
        phase = (r.get("phases") or [{}])[0]
        wfs = phase.get("workflows_per_s")
        base = base or wfs
        ratio = f"{wfs / base:5.2f}" if wfs and base else "  -  "
        lat = phase.get("latency_ms", {})
        lines.append(f"{r['scenario']:8} {wfs or 0:6.1f}   {ratio}   {phase.get('cpu_s_per_1k', '-')!s:>11}"
                     f"   {lat.get('p50', '-')!s:>6}   {lat.get('p99', '-')!s:>6}"
                     f"   {phase.get('unfinished_after_drain', '-')!s:>10}   {r.get('error', '')[:60]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2,4", help="replica counts to run, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="closed-loop window per size")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=200, help="workflows in flight")
    parser.add_argument("--pg-fast", action="store_true", help="PostgreSQL with fsync off")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = Settings(quick=False, warmup=args.warmup, closed_seconds=args.seconds, open_seconds=0,
                   rates=(), window=args.window, drain_timeout=max(10.0, 2 * args.seconds))
    for n in sizes:
        throughput.FACTORIES[scenario_name(n)] = partial(ReplicatedBaton, replicas=n)
    servers = make_servers()
    results: list[dict[str, Any]] = []
    try:
        servers.start_redis()
        servers.start_postgres(durable=not args.pg_fast)
        for n in sizes:
            print(f"bench: {n} tracker(s), {n} of each participant", file=sys.stderr, flush=True)
            results.append(run_scenario(scenario_name(n), servers, cfg, with_open=False))
    finally:
        servers.close(keep=args.keep)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"),
                                         "machine": throughput.machine(), "results": results},
                                        indent=2, default=str))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
