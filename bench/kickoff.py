"""The kickoff's web cost alone: CPU milliseconds of the web processes per `POST /v1/workflows`.

Starts a private Redis and a durable PostgreSQL (as `bench.throughput` does), migrates, then for
each variant in turn (alternating, `--rounds` times) starts the web with that variant's command,
sends `--warmup` then `-n` single-start POSTs over `--connections` keep-alive connections, and
reads the CPU of the web (its master and every worker) and of PostgreSQL's backends around the
measured requests. Nothing consumes the start events: only the web and the database work.

    python -m bench.kickoff                                  # the Procfile's web line
    python -m bench.kickoff --variant gthread="gunicorn ..." --variant granian="granian ..."
    python -m bench.kickoff --env A=BATON_X=1 ...            # a variant by environment
    python -m bench.kickoff --variant old="$(grep ^web: Procfile | cut -d' ' -f2-)" --tree old=/tmp/main
                                                             # another checkout (git archive)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.http_client import HttpPool
from bench.servers import Servers, free_port, make_servers
from bench.throughput import BIN, ROOT, TOKEN, order
from controller.cli.procfile import Processes, procfile_lines


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between the two readings: of the processes seen at both, and of those started
    in between (PostgreSQL's backends come and go)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _commits(servers: Servers) -> int:
    """Write transactions so far (each takes a transaction ID; this one too): per request, how
    well the starts are grouped."""
    return int(servers.psql("baton", "SELECT txid_current()").strip())


def _tree(pid: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    return [pid]


def _wait_ready(port: int, procs: Processes, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc = procs.running[name]
        if proc.poll() is not None:
            log = (procs.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited early ({proc.returncode}):\n{log}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not become ready")


async def _send(port: int, n: int, connections: int) -> tuple[list[float], int]:
    pool = HttpPool("127.0.0.1", port, connections, {"Authorization": f"Bearer {TOKEN}"})
    times: list[float] = []
    errors = 0
    left = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for _ in left:
            cid = f"k-{uuid.uuid4().hex[:20]}"
            body = orjson.dumps({"flow": "order_fulfillment", "input": order(cid), "correlation_id": cid})
            status, text, ms = await pool.post("/v1/workflows", body)
            times.append(ms)
            if status != 201:
                errors += 1
                if errors <= 3:
                    print(f"  answered {status}: {text[:200]!r}", file=sys.stderr)

    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        await pool.close()
    return times, errors


def _profile(directory: Path | None, name: str, pids: list[int]) -> list[subprocess.Popen[bytes]]:
    """py-spy record (raw collapsed stacks, on-CPU only) of each worker, for bench.profile_summary."""
    if directory is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(BIN)) or "py-spy"
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--gil",
                              "--format", "raw", "--output", str(directory / f"{name}.web.{i}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, pid in enumerate(pids)]


def run_variant(name: str, command: str, env: dict[str, str], servers: Servers, tmp: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    procs = Processes({**env, "PORT": str(port)}, tmp, lines={name: command})
    procs.start(name)
    try:
        _wait_ready(port, procs, name)
        asyncio.run(_send(port, args.warmup, args.connections))
        web = _tree(procs.running[name].pid)
        pg = _tree(servers.postgres_pid() or 0)
        spies = _profile(args.profile, name, web[1:] or web)
        web0, pg0, c0, t0 = _cpu(web), _cpu(pg), _commits(servers), time.perf_counter()
        times, errors = asyncio.run(_send(port, args.n, args.connections))
        wall = time.perf_counter() - t0
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            spy.wait(timeout=30)
        pg_after = _cpu(_tree(servers.postgres_pid() or 0))
        web_cpu, pg_cpu = _spent(web0, _cpu(web)), _spent(pg0, pg_after)
        commits = _commits(servers) - c0 - 1
    finally:
        procs.stop_all()
    times.sort()
    return {"variant": name, "n": args.n, "commits": commits / args.n, "errors": errors, "wall_s": wall,
            "rate": args.n / wall,
            "web_cpu_ms": web_cpu * 1000 / args.n, "pg_cpu_ms": pg_cpu * 1000 / args.n,
            "p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="measured POSTs per variant and round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="each variant this many times, alternating")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=COMMAND",
                        help="a web command (default: the Procfile's web line)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VAR=VALUE",
                        help="an environment variable for one variant")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="run a variant from another checkout of the code (its cwd and PYTHONPATH)")
    parser.add_argument("--profile", type=Path, help="py-spy the workers into this directory")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant) or {"web": procfile_lines()["web"]}
    extra: dict[str, dict[str, str]] = {}
    for item in args.env:
        name, var, value = item.split("=", 2)
        extra.setdefault(name, {})[var] = value
    servers = make_servers()
    try:
        servers.start_redis()
        servers.start_postgres()
        url = servers.create_db("baton")
        base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(servers.tmp), "PYTHONPATH": str(ROOT),
                "REDIS_URL": servers.redis_url, "DATABASE_URL": url, "BATON_STREAM_PREFIX": "k",
                "BATON_TOKENS": f"bench:starter:{TOKEN}", "BATON_DATA_DIR": str(servers.tmp / "data")}
        logs = servers.tmp / "logs"
        logs.mkdir()
        release = Processes(base, logs).start("release")
        if release.wait(timeout=120) != 0:
            raise RuntimeError((logs / "release.log").read_text()[-2000:])
        results = []
        trees = dict(t.split("=", 1) for t in args.tree)
        for _ in range(args.rounds):
            for name, command in variants.items():
                env = {**base, **extra.get(name, {})}
                if name in trees:  # its cwd comes first on sys.path (a spawned worker's too)
                    env["PYTHONPATH"] = trees[name]
                    command = "sh -c " + shlex.quote(f"cd {shlex.quote(trees[name])} && exec {command}")
                r = run_variant(name, command, env, servers, logs, args)
                print(f"{r['variant']:>12}: {r['rate']:7.1f} req/s  web {r['web_cpu_ms']:5.2f} CPU ms/req"
                      f"  pg {r['pg_cpu_ms']:5.2f}  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
                      f"  commits/req {r['commits']:4.2f}  errors {r['errors']}", flush=True)
                results.append(r)
    finally:
        servers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
