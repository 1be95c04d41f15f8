"""Throughput and latency of `order_fulfillment`: Baton against a bare choreography and its peers.

    python -m bench.throughput [--quick] [--json out.json] [--only baton-pg,bare] [--profile DIR]

Starts its own Redis (AOF everysec) and PostgreSQL (fsync on), runs each scenario for a bounded
time, prints one table and writes the figures as JSON (default bench/results/throughput-<time>.json).

Scenarios:
  bare          the four participants on redis-py alone (bench/bare.py): the ceiling
  baton-pg      the Procfile's processes on PostgreSQL: REST kickoff through gunicorn, outbox, the
                four reference participants, the tracker, `workflow.completed`
  baton-batch   the same system, kicked off through `POST /v1/workflows:batch` (--batch per request)
  baton-core    Baton's controller (web, tracker, relay, clock, worker) with the bare participants
                of bench/bare.py: what the coordinator itself costs
  baton-sqlite  the same on the embedded default (SQLite files), with a check that nothing is lost
  celery        the flow as a Celery chain on the same Redis (bench/peers/celery_peer.py)
  dbos          the flow as a DBOS workflow on the same PostgreSQL (bench/peers/dbos_peer.py)

Each runs closed-loop (a window of workflows in flight: throughput); baton-pg also runs open-loop
at each of --rates workflows/s (latency; --open-all for every scenario). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
import redis.asyncio as aredis

from bench import report as report_bench
from bench import verdict
from bench.http_client import HttpPool
from bench.load import Loop, Phase, Sent, Watcher, closed_loop, open_loop, percentile
from bench.measure import Kinds
from bench.servers import Servers, free_port, make_servers, pg_bin
from controller.cli.procfile import Processes, procfile_lines
from participants.runtime.connect import connect
from participants.runtime.db import make_engine

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "t-bench"
PARTICIPANTS = ("inventory", "payment", "shipping", "notification")
CORE = ("web", "tracker", "relay", "clock", "worker")  # the controller's Procfile lines
SCENARIOS = ("bare", "baton-pg", "baton-batch", "baton-core", "baton-sqlite", "celery", "dbos")


def order(cid: str) -> dict[str, Any]:
    sku = f"SKU-{random.randint(1, 20):03d}"
    return {"order_id": cid, "customer_id": "cust-gold",
            "items": [{"product_id": sku, "quantity": 1, "unit_price": 1.0}],
            "total_amount": 1.0, "currency": "EUR"}


def new_cid() -> str:
    return f"b-{uuid.uuid4().hex[:20]}"


@dataclass
class Settings:
    quick: bool
    warmup: float
    closed_seconds: float
    open_seconds: float
    rates: tuple[float, ...]
    window: int
    drain_timeout: float
    profile_dir: Path | None = None
    profile_mode: str = "cpu"
    baton_env: tuple[tuple[str, str], ...] = ()
    prefill: int = 0  # finished workflows put in Baton's PostgreSQL database before the run
    rss_every: float = 0.0  # closed loop: sample each process kind's RSS this often (a soak)
    workflows: int = 0  # closed loop: stop once this many have finished (a soak; --seconds bounds it)
    connections: int = 32  # kickoff requests in flight at once
    batch: int = 100  # baton-batch: workflows per POST /v1/workflows:batch


# -- scenarios -------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    servers: Servers
    tmp: Path
    prefix: str = field(default_factory=lambda: f"b{uuid.uuid4().hex[:6]}")
    kinds: Kinds = field(default_factory=Kinds)
    procs: Processes | None = None
    uses_pg: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    prefill: int = 0
    connections: int = 32  # kickoff requests in flight at once (HTTP connections for Baton)
    batch: int = 1  # workflows per kickoff request
    _aredis: aredis.Redis | None = None

    def done_streams(self) -> list[str]:
        raise NotImplementedError

    def fail_streams(self) -> list[str]:
        return []

    def start(self) -> None:
        raise NotImplementedError

    async def kick(self, cids: list[str], send_by: float) -> Sent:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close what kick() opened, on the load loop."""
        if self._aredis is not None:
            await self._aredis.aclose()

    def stop(self) -> None:
        if self.procs:
            self.procs.stop_all()

    def redis_client(self) -> aredis.Redis:
        if self._aredis is None:
            self._aredis = aredis.Redis.from_url(self.servers.redis_url, max_connections=self.connections + 8)
        return self._aredis

    def checks(self, accepted: list[str], watcher: Watcher) -> dict[str, Any]:
        return {}

    def make_watcher(self) -> Watcher:
        """What reads the finished workflows' streams (bench/cluster.py reads a cluster's)."""
        return Watcher(self.servers.redis_url, self.done_streams(), self.fail_streams())

    def python_pids(self) -> dict[str, list[int]]:
        """Processes worth profiling, by kind."""
        return {}

    # helpers

    def _processes(self, env: dict[str, str], lines: dict[str, str]) -> Processes:
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(self.tmp), "PYTHONPATH": str(ROOT)}
        self.procs = Processes({**base, **env}, logs, lines=lines)
        return self.procs

    def _start_all(self, names: list[str]) -> None:
        assert self.procs is not None
        for name in names:
            proc = self.procs.start(name)
            self.kinds.add(name, proc.pid)

    def _common_kinds(self) -> None:
        self.kinds.add("redis", self.servers.redis_pid())
        if self.uses_pg:
            self.kinds.add("postgres", self.servers.postgres_pid())

    def check_alive(self) -> None:
        if not self.procs:
            return
        dead = {n: p.returncode for n, p in self.procs.running.items() if p.poll() is not None}
        if dead:
            name = next(iter(dead))
            log = (self.procs.log_dir / f"{name}.log").read_text(errors="replace")[-2500:]
            raise RuntimeError(f"{self.name}: {sorted(dead)} exited early ({dead}); {name}.log:\n{log}")

    def wait_groups(self, wanted: list[tuple[str, str]], timeout: float = 90) -> None:
        client = connect(self.servers.redis_url, decode_responses=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_alive()
                missing = []
                for stream, group in wanted:
                    try:
                        groups = {g["name"] for g in client.xinfo_groups(stream)}
                    except redis.ResponseError:
                        groups = set()
                    if group not in groups:
                        missing.append((stream, group))
                if not missing:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: consumer groups missing after {timeout}s: {missing}")
                time.sleep(0.1)
        finally:
            client.close()


def participant_groups(prefix: str) -> list[tuple[str, str]]:
    """The consumer groups the four participants read with (bare and Baton alike)."""
    ev = f"{prefix}:event"
    return [(f"{ev}:order.placed", "inventory"), (f"{ev}:order.placed", "payment"),
            (f"{ev}:inventory.reserved", "shipping"), (f"{ev}:payment.charged", "shipping"),
            (f"{ev}:payment.charged", "notification")]


class BareScenario(Scenario):
    def done_streams(self) -> list[str]:
        return [f"{self.prefix}:event:shipment.scheduled"]

    def fail_streams(self) -> list[str]:
        return [f"{self.prefix}:event:{t}" for t in (
            "inventory.reservation_failed", "payment.charge_failed", "shipment.scheduling_failed")]

    def start(self) -> None:
        url = self.servers.redis_url
        lines = {n: f"python -m bench.bare {n} --redis {url} --prefix {self.prefix}" for n in PARTICIPANTS}
        self._processes({}, lines)
        self._start_all(list(PARTICIPANTS))
        self._common_kinds()
        self.wait_groups(participant_groups(self.prefix))

    async def kick(self, cids: list[str], send_by: float) -> Sent:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        pipe = self.redis_client().pipeline(transaction=False)
        for cid in cids:
            mid = str(uuid.uuid4())
            pipe.xadd(f"{self.prefix}:event:order.placed", {
                "id": mid, "kind": "event", "type": "order.placed", "version": "1", "correlation_id": cid,
                "causation_id": mid, "occurred_at": now, "source": "bench",
                "data": orjson.dumps(order(cid)).decode()})
        await pipe.execute()
        return Sent([""] * len(cids))

    def python_pids(self) -> dict[str, list[int]]:
        return {k: self.kinds.pids(k) for k in PARTICIPANTS}


class BatonScenario(Scenario):
    """The Procfile's lines, as a deployment runs them."""

    sqlite: bool = False

    def done_streams(self) -> list[str]:
        return [f"{self.prefix}:event:workflow.completed"]

    def fail_streams(self) -> list[str]:
        return [f"{self.prefix}:event:workflow.{s}" for s in ("compensating", "needs_attention")]

    def lines(self) -> dict[str, str]:
        return procfile_lines()  # every line, as a deployment runs them (later flows' too)

    def start(self) -> None:
        self.port = free_port()
        data = self.tmp / "data"
        env = {
            **self.extra_env,
            "PORT": str(self.port), "REDIS_URL": self.servers.redis_url,
            "BATON_STREAM_PREFIX": self.prefix, "BATON_TOKENS": f"bench:starter:{TOKEN}",
            "BATON_DATA_DIR": str(data),
        }
        lines = self.lines()
        participants = [m.group(1) for cmd in lines.values()
                        if (m := re.match(r"baton participant (\S+)", cmd))]
        if self.sqlite:
            self.database_url = f"sqlite:///{data}/baton.db"
        else:
            # Each scenario its own databases on the one server: baton-pg keeps the names it had.
            db = "baton" if self.name == "baton-pg" else self.name.replace("-", "_")
            self.uses_pg = True
            self.database_url = self.servers.create_db(db)
            for p in participants:
                self.servers.create_db(f"{db}_p_{p}" if db != "baton" else f"p_{p}")
            env["DATABASE_URL"] = self.database_url
            env["BATON_PARTICIPANT_DATABASE_URL"] = self.servers.pg_url(
                f"{db}_p_{{name}}" if db != "baton" else "p_{name}")
        procs = self._processes(env, {"release": procfile_lines()["release"], **lines})
        release = procs.start("release")
        if release.wait(timeout=120) != 0:
            raise RuntimeError("release failed: " + (procs.log_dir / "release.log").read_text()[-2000:])
        procs.running.pop("release", None)
        if self.prefill and not self.sqlite:
            began = time.monotonic()
            print(f"bench: {self.name}: filling {self.prefill:,} finished workflows", file=sys.stderr)
            engine = make_engine(self.database_url)
            try:
                report_bench.fill(engine, self.prefill)
            finally:
                engine.dispose()
            print(f"bench: {self.name}: filled in {time.monotonic() - began:.0f} s", file=sys.stderr)
        self._start_all([n for n in lines if n != "release"])
        self._common_kinds()
        self._wait_ready()
        self.wait_groups([*participant_groups(self.prefix),
                          (f"{self.prefix}:event:shipment.scheduled", "controller")])
        self.http = HttpPool("127.0.0.1", self.port, self.connections, {"Authorization": f"Bearer {TOKEN}"})

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while True:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready")
            time.sleep(0.2)

    async def kick(self, cids: list[str], send_by: float) -> Sent:
        if self.batch > 1:
            return await self._kick_batch(cids, send_by)
        (cid,) = cids
        body = orjson.dumps({"flow": "order_fulfillment", "input": order(cid), "correlation_id": cid})
        status, text, ms = await self.http.post("/v1/workflows", body, send_by)
        error = "" if status == 201 else f"POST /v1/workflows answered {status}: {text[:300]!r}"
        return Sent([error], ms)

    async def _kick_batch(self, cids: list[str], send_by: float) -> Sent:
        body = orjson.dumps({"workflows": [
            {"flow": "order_fulfillment", "input": order(cid), "correlation_id": cid} for cid in cids]})
        status, text, ms = await self.http.post("/v1/workflows:batch", body, send_by)
        if status != 200:
            return Sent([f"POST /v1/workflows:batch answered {status}: {text[:300]!r}"] * len(cids), ms)
        items = orjson.loads(text)["items"]
        if len(items) != len(cids):
            return Sent([f"the batch answered {len(items)} items for {len(cids)}"] * len(cids), ms)
        return Sent(["" if item["status"] in (200, 201) else orjson.dumps(item).decode()[:300]
                     for item in items], ms)

    async def aclose(self) -> None:
        # Idle keep-alive connections would hold gunicorn's graceful shutdown for its full timeout.
        if hasattr(self, "http"):
            await self.http.close()
        await super().aclose()

    def python_pids(self) -> dict[str, list[int]]:
        out = {k: self.kinds.pids(k) for k in ("tracker", *PARTICIPANTS, "relay")}
        web = self.kinds.pids("web")
        out["web"] = web[1:] or web  # gunicorn's workers, not its master
        return out

    def checks(self, accepted: list[str], watcher: Watcher) -> dict[str, Any]:
        """Every accepted workflow is in the database, completed; nothing is left unsent or dead."""
        import sqlalchemy as sa

        out: dict[str, Any] = {}
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                statuses: dict[str, int] = dict(conn.execute(sa.text(
                    "SELECT status, count(*) FROM workflows GROUP BY status")).all())
                unsent = conn.execute(sa.text(
                    "SELECT count(*) FROM baton_outbox WHERE sent_at IS NULL")).scalar_one()
                accepted_set = set(accepted)
                found: dict[str, str] = {}
                ids = list(accepted_set)
                for i in range(0, len(ids), 2000):
                    chunk = ids[i:i + 2000]
                    rows: Any = conn.execute(sa.select(sa.column("correlation_id"), sa.column("status"))
                                        .select_from(sa.table("workflows"))
                                        .where(sa.column("correlation_id").in_(chunk))).all()
                    found.update({r[0]: r[1] for r in rows})
        finally:
            engine.dispose()
        not_completed = [c for c in accepted if found.get(c) != "completed"]
        out["db_statuses"] = statuses
        out["controller_outbox_unsent"] = unsent
        out["accepted_missing_in_db"] = sum(1 for c in accepted if c not in found)
        out["accepted_not_completed_in_db"] = len(not_completed)
        out["not_completed_examples"] = {c: found.get(c) for c in not_completed[:5]}
        client = connect(self.servers.redis_url, decode_responses=True)
        try:
            out["dead_letters"] = {k: client.xlen(k) for k in client.scan_iter(f"{self.prefix}:dead:*")}
        finally:
            client.close()
        return out

    def after_stop(self) -> dict[str, Any]:
        """SQLite: every database file passes PRAGMA integrity_check once the processes stopped."""
        if not self.sqlite:
            return {}
        results = {}
        for db in sorted((self.tmp / "data").glob("*.db")):
            conn = sqlite3.connect(db)
            try:
                results[db.name] = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
        return {"sqlite_integrity": results}


class BatonSqlite(BatonScenario):
    sqlite = True


class BatonBatch(BatonScenario):
    """The same system, each request a `POST /v1/workflows:batch` of `batch` workflows."""


class BatonCore(BatonScenario):
    """Baton's controller processes with bench/bare.py's participants (redis-py, in memory, the
    contract's wire format): what the coordinator itself costs."""

    def lines(self) -> dict[str, str]:
        procfile = procfile_lines()
        lines = {n: procfile[n] for n in CORE}
        url = self.servers.redis_url
        lines |= {n: f"python -m bench.bare {n} --redis {url} --prefix {self.prefix} --commands"
                  for n in PARTICIPANTS}
        return lines


class CeleryScenario(Scenario):
    def done_streams(self) -> list[str]:
        return [f"{self.prefix}:done"]

    def start(self) -> None:
        os.environ["BENCH_REDIS_URL"] = self.servers.redis_url
        os.environ["BENCH_PREFIX"] = self.prefix
        from bench.peers import celery_peer  # reads the environment at import

        celery_peer.app.conf.broker_url = self.servers.redis_url
        self._peer = celery_peer
        env = {"BENCH_REDIS_URL": self.servers.redis_url, "BENCH_PREFIX": self.prefix}
        cmd = ("celery -A bench.peers.celery_peer worker --concurrency 2 --pool prefork "
               "--without-gossip --without-mingle --without-heartbeat --loglevel WARNING "
               f"--queues {celery_peer.QUEUE}")
        self._processes(env, {"celery": cmd})
        self._start_all(["celery"])
        self._common_kinds()

    async def kick(self, cids: list[str], send_by: float) -> Sent:
        # Celery's client is synchronous: its calls run in the loop's default thread pool.
        for cid in cids:
            await asyncio.to_thread(self._peer.kickoff, cid, order(cid))
        return Sent([""] * len(cids))

    def python_pids(self) -> dict[str, list[int]]:
        return {"celery": self.kinds.pids("celery")}


class DbosScenario(Scenario):
    def done_streams(self) -> list[str]:
        return [f"{self.prefix}:done"]

    def start(self) -> None:
        self.uses_pg = True
        url = self.servers.create_db("dbos").replace("postgresql+psycopg://", "postgresql://")
        env = {"BENCH_REDIS_URL": self.servers.redis_url, "BENCH_PREFIX": self.prefix,
               "BENCH_DBOS_URL": url}
        self._processes(env, {"dbos": "python -m bench.peers.dbos_peer"})
        self._start_all(["dbos"])
        self._common_kinds()
        client = redis.Redis.from_url(self.servers.redis_url)
        deadline = time.monotonic() + 90
        try:
            while not client.get(f"{self.prefix}:ready"):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("the DBOS peer did not start")
                time.sleep(0.2)
        finally:
            client.close()

    async def kick(self, cids: list[str], send_by: float) -> Sent:
        pipe = self.redis_client().pipeline(transaction=False)
        for cid in cids:
            pipe.xadd(f"{self.prefix}:kick", {"correlation_id": cid, "order": orjson.dumps(order(cid))})
        await pipe.execute()
        return Sent([""] * len(cids))

    def python_pids(self) -> dict[str, list[int]]:
        return {"dbos": self.kinds.pids("dbos")}


FACTORIES: dict[str, Callable[..., Scenario]] = {
    "bare": BareScenario, "baton-pg": BatonScenario, "baton-batch": BatonBatch, "baton-core": BatonCore,
    "baton-sqlite": BatonSqlite,
    "celery": CeleryScenario, "dbos": DbosScenario,
}


# -- running one scenario ------------------------------------------------------------------


def _summarise(phase: Phase, watcher: Watcher, cpu: dict[str, float], me_cpu: float,
               kinds: Kinds, open_after_drain: list[str]) -> dict[str, Any]:
    window = phase.t1 - phase.t0
    if phase.mode == "closed":
        measured = [c for c in phase.kicked if phase.t0 <= watcher.done.get(c, -1) <= phase.t1]
    else:  # open loop: the workflows scheduled inside the window, whenever they finished
        measured = [c for c in phase.kicked if phase.t0 <= phase.scheduled[c] < phase.t1]
    completed_in_window = sum(1 for c in phase.kicked if phase.t0 <= watcher.done.get(c, -1) <= phase.t1)
    lat = [(watcher.done[c] - watcher.kicked[c]) * 1000 for c in measured if c in watcher.done]
    kicks = [ms for at, ms in phase.kick_ms if phase.t0 <= at <= phase.t1]
    total_cpu = sum(cpu.values())
    ncpu = os.cpu_count() or 1
    finished = sum(1 for c in phase.kicked if c in watcher.done or c in watcher.failed)
    per_k = 1000 / finished if finished else None
    failed = [c for c in phase.kicked if c in watcher.failed]
    # What else ran on the machine meanwhile (other users' processes): a contended run says so.
    foreign = max(0.0, kinds.machine_busy_s - total_cpu - me_cpu)
    wall = kinds.window_wall_s or window  # phase start to drain end
    return {
        "mode": phase.mode,
        "window_s": round(window, 2),
        "warmup_s": round(phase.warmup_s, 1),
        "completed_in_window": completed_in_window,
        "workflows_per_s": round(completed_in_window / window, 1) if window else None,
        "latency_ms": {f"p{q}": _r(percentile(lat, q)) for q in (50, 95, 99)}
        | {"max": _r(max(lat, default=None))},
        "kickoff_ms": {f"p{q}": _r(percentile(kicks, q)) for q in (50, 95, 99)},
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_accounting": {"wall_s": round(wall, 1), "workflows": finished},
        "cpu_s_per_1k": round(total_cpu * per_k, 2) if per_k else None,
        # What the machine's cores could do if the system's processes had them all and nothing else
        # limited it: a figure that holds when other users' load skews the measured throughput.
        "cpu_ceiling_wf_s": round(ncpu * 1000 / (total_cpu * per_k), 1) if per_k and total_cpu else None,
        "cpu_s_per_1k_by_kind": {k: round(v * per_k, 3) for k, v in cpu.items()} if per_k else {},
        "client_cpu_s_per_1k": round(me_cpu * per_k, 2) if per_k else None,
        "machine_busy_pct": round(100 * kinds.machine_busy_s / (wall * ncpu), 1),
        "foreign_cpu_pct": round(100 * foreign / (wall * ncpu), 1),
        "accepted": len(phase.kicked),
        "requests": phase.requests,
        "rejected": phase.rejected,
        "not_sent": phase.not_sent,
        "reject_examples": phase.errors,
        "failed": len(failed),
        "unfinished_after_drain": len(open_after_drain),
    }


class RssSampler(threading.Thread):
    """Every `every` seconds: workflows finished so far and each process kind's RSS (a soak)."""

    def __init__(self, kinds: Kinds, watcher: Watcher, every: float) -> None:
        super().__init__(daemon=True)
        self.kinds, self.watcher, self.every = kinds, watcher, every
        self.halt = threading.Event()
        self.series: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def run(self) -> None:
        self.t0 = time.monotonic()
        while True:
            self.series.append({"t_s": round(time.monotonic() - self.t0), "finished": len(self.watcher.done),
                                "rss_mb": self.kinds.rss_now()})
            if self.halt.wait(self.every):
                break
        self.series.append({"t_s": round(time.monotonic() - self.t0), "finished": len(self.watcher.done),
                            "rss_mb": self.kinds.rss_now()})


def rss_table(results: list[dict[str, Any]]) -> str:
    """For a soak: each kind's RSS at the window's start, its end and the largest in between."""
    head = ["scenario", "process kind", "workflows finished", "RSS MB at start", "at end", "max",
            "end vs start"]
    rows = []
    for r in results:
        series = r.get("rss_series") or []
        if len(series) < 2:
            continue
        first, last = series[0], series[-1]
        for kind, start in first["rss_mb"].items():
            end = last["rss_mb"].get(kind, 0.0)
            top = max(s["rss_mb"].get(kind, 0.0) for s in series)
            growth = f"{(end - start) / start * 100:+.1f} %" if start else "-"
            rows.append([r["scenario"], kind, f"{last['finished'] - first['finished']:,}", f"{start:g}",
                         f"{end:g}", f"{top:g}", growth])
    if not rows:
        return ""
    return "\n".join("| " + " | ".join(map(str, row)) + " |"
                     for row in [head, ["---"] * len(head), *rows])


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def run_scenario(name: str, servers: Servers, cfg: Settings, with_open: bool) -> dict[str, Any]:
    tmp = servers.tmp / name
    tmp.mkdir()
    sc = FACTORIES[name](name, servers, tmp, extra_env=dict(cfg.baton_env), prefill=cfg.prefill,
                         connections=cfg.connections, batch=cfg.batch if name == "baton-batch" else 1)
    result: dict[str, Any] = {"scenario": name, "phases": [], "batch": sc.batch}
    t_start = time.monotonic()
    loop = Loop()
    watcher = sc.make_watcher()
    dbs_before = len(servers.created_dbs)
    try:
        sc.start()
        result["startup_s"] = round(time.monotonic() - t_start, 1)
        watcher.start(loop)
        # One workflow end to end before measuring: everything is up and connected.
        probes = [new_cid() for _ in range(sc.batch)]
        for cid in probes:
            watcher.kicked[cid] = time.perf_counter()
        sent = loop.run(sc.kick(probes, float("inf")))
        if any(sent.errors):
            raise RuntimeError(f"{name}: the probe kickoff failed: {next(e for e in sent.errors if e)}")
        if watcher.wait_for(probes, 90):
            sc.check_alive()
            raise RuntimeError(f"{name}: the probe workflow did not finish in 90 s")
        me = psutil.Process()
        accepted: list[str] = list(probes)
        profilers: list[subprocess.Popen[bytes]] = []
        analyzing: list[subprocess.Popen[bytes]] = []
        own_dbs = servers.created_dbs[dbs_before:]
        phases = [("closed", None)] + ([("open", r) for r in cfg.rates] if with_open else [])
        for mode, rate in phases:
            closed_wfs = result["phases"][0]["workflows_per_s"] if result["phases"] else None
            if mode == "open" and cfg.quick and rate and (closed_wfs or 0) < rate / 2:
                print(f"  {name}: open loop at {rate:g}/s skipped: closed-loop throughput is {closed_wfs}",
                      file=sys.stderr)
                result["open_skipped"] = f"closed-loop throughput {closed_wfs} wf/s < half of {rate:g}/s"
                continue
            # CPU is counted from the phase's first kickoff to the end of its drain and divided by the
            # workflows it started (all finished by then): exact accounting even for a system that
            # is far from its steady state inside the throughput window.
            sc.kinds.window_start()
            me_cpu0 = sum(me.cpu_times()[:2])

            sampler = RssSampler(sc.kinds, watcher, cfg.rss_every)

            def on_window(edge: str, mode: str = mode, sampler: RssSampler = sampler) -> None:
                if edge == "start" and sc.uses_pg:
                    analyzing.append(analyze(sc.servers, own_dbs))
                if edge == "start" and cfg.profile_dir and mode == "closed":
                    profilers.extend(start_profile(sc, cfg))
                if mode == "closed" and cfg.rss_every:
                    if edge == "start":
                        sampler.start()
                    else:
                        sampler.halt.set()
                        sampler.join(timeout=30)
                        result["rss_series"] = sampler.series

            if mode == "closed":
                phase = loop.run(closed_loop(
                    sc.kick, watcher, new_cid, window=cfg.window, concurrency=sc.connections, batch=sc.batch,
                    warmup=cfg.warmup, duration=cfg.closed_seconds, on_window=on_window,
                    workflows=cfg.workflows, max_warmup=10.0 if cfg.quick else 60.0))
            else:
                assert rate is not None
                phase = loop.run(open_loop(sc.kick, watcher, new_cid, rate=rate, warmup=min(cfg.warmup, 2.0),
                                           duration=cfg.open_seconds, on_window=on_window))
            for p in profilers + analyzing:
                p.wait(timeout=60)
            profilers.clear()
            analyzing.clear()
            still_open = watcher.wait_for(phase.kicked, cfg.drain_timeout)
            cpu = sc.kinds.window_end()
            me_cpu = sum(me.cpu_times()[:2]) - me_cpu0
            accepted += phase.kicked
            summary = _summarise(phase, watcher, cpu, me_cpu, sc.kinds, still_open)
            if mode == "open":
                summary["target_rate"] = rate
            result["phases"].append(summary)
            sc.kinds.sample_rss()
            _progress(name, summary)
        if cfg.profile_dir and sc.uses_pg:
            accepted += statement_census(sc, watcher, cfg, loop)
        result["peak_rss_mb"] = {k: round(v, 1) for k, v in sc.kinds.peak_mb.items()}
        result["process_counts"] = sc.kinds.counts()
        # Still in flight when the drain timed out: slow, not necessarily lost (Baton's checks below
        # look in the database).
        unfinished = [c for c in accepted if not watcher.finished(c)]
        result["accepted_total"] = len(accepted)
        result["completed_total"] = sum(1 for c in accepted if c in watcher.done)
        result["failed_total"] = sum(1 for c in accepted if c in watcher.failed)
        result["unfinished"] = len(unfinished)
        result["checks"] = sc.checks(accepted, watcher)
        watcher.stop(loop)
        if watcher.error:
            raise watcher.error
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        print(f"  {name}: FAILED: {result['error'][:600]}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            watcher.stop(loop)
        with contextlib.suppress(Exception):
            loop.run(sc.aclose(), timeout=10)
        loop.close()
        sc.stop()
        if isinstance(sc, BatonScenario):
            result.setdefault("checks", {}).update(sc.after_stop())
        with contextlib.suppress(Exception):
            r = redis.Redis.from_url(servers.redis_url)
            r.flushall()
            r.close()
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return result


def _progress(name: str, s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    print(f"  {name:13} {s['mode']:6} {s['workflows_per_s'] or 0:8.1f} wf/s  p50 {lat['p50']} "
          f"p99 {lat['p99']} ms  cpu/1k {s['cpu_s_per_1k']}  unfinished {s['unfinished_after_drain']}"
          f"  other load {s['foreign_cpu_pct']} %",
          file=sys.stderr, flush=True)


# -- profiling ----------------------------------------------------------------------------


def start_profile(sc: Scenario, cfg: Settings) -> list[subprocess.Popen[bytes]]:
    """py-spy record, in raw (collapsed stacks) format, of every Python process of the scenario."""
    assert cfg.profile_dir is not None
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if not spy:
        print("  py-spy not found: pip install py-spy", file=sys.stderr)
        return []
    cfg.profile_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for kind, pids in sc.python_pids().items():
        for i, pid in enumerate(pids):
            target = cfg.profile_dir / f"{sc.name}.{kind}.{i}.txt"
            out.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(cfg.closed_seconds)),
                 "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(target),
                 *(["--gil"] if cfg.profile_mode == "cpu" else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return out


def analyze(servers: Servers, own: list[str]) -> subprocess.Popen[bytes]:
    """ANALYZE the scenario's databases, as the warm-up ends: the tables began empty a few seconds
    ago, and autovacuum (every minute by default) has not yet given the planner their statistics,
    so it would plan for tables of a few rows (a sequential scan, or an index scanned on its
    leading columns with the rest as a filter) what a deployment past its first minute plans for
    its real size. Measured: without it, PostgreSQL's CPU per workflow was 1.9x as high in a
    20 s run. In the background: the load loop must not wait on it (redis-py's reads time out
    after 5 s). A peer's own databases are included (DBOS keeps a system database beside its own)."""
    names = servers.psql("postgres", "SELECT datname FROM pg_database WHERE datallowconn").split()
    mine = [n for n in names if any(n == db or n.startswith(f"{db}_") for db in own)]
    script = " ; ".join(shlex.join(servers.psql_command(db, "ANALYZE")) for db in mine)
    return subprocess.Popen(["sh", "-c", script or "true"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _pg_commits(servers: Servers) -> dict[str, int]:
    rows = servers.psql("postgres",
                        "SELECT datname, xact_commit FROM pg_stat_database WHERE datname IS NOT NULL")
    return {d: int(n) for d, n in (line.split("\t") for line in rows.splitlines())}


def statement_census(sc: Scenario, watcher: Watcher, cfg: Settings, loop: Loop, n: int = 200) -> list[str]:
    """Statements, server time and commits per workflow, per database: n workflows run to the end
    with nothing else in flight, so the figures do not depend on the machine's load."""
    assert cfg.profile_dir is not None
    try:
        for db in ["postgres", *sc.servers.created_dbs]:
            sc.servers.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        sc.servers.psql("postgres", "SELECT pg_stat_statements_reset()")
        before = _pg_commits(sc.servers)
    except subprocess.CalledProcessError as exc:
        print(f"  pg_stat_statements unavailable: {exc.stderr}", file=sys.stderr)
        return []
    cids = [new_cid() for _ in range(n)]

    async def kick_all() -> None:
        slots = asyncio.Semaphore(20)

        async def one(group: list[str]) -> None:
            async with slots:
                for cid in group:
                    watcher.kicked[cid] = time.perf_counter()
                await sc.kick(group, float("inf"))

        await asyncio.gather(*(one(cids[i:i + sc.batch]) for i in range(0, n, sc.batch)))

    loop.run(kick_all())
    if watcher.wait_for(cids, 120):
        print("  census: some workflows did not finish", file=sys.stderr)
    time.sleep(1.0)  # the notification step and the relay's pass, which are off the completion path
    completed = n
    try:
        after = _pg_commits(sc.servers)
        text = sc.servers.psql("postgres", (
            "SELECT d.datname, s.calls, round(s.total_exec_time::numeric, 1), "
            "round(s.mean_exec_time::numeric, 3), left(regexp_replace(s.query, '\\s+', ' ', 'g'), 200) "
            "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname <> 'postgres' ORDER BY d.datname, s.calls DESC"))
    except subprocess.CalledProcessError as exc:
        print(f"  pg_stat_statements unavailable: {exc.stderr}", file=sys.stderr)
        return cids
    per_db: dict[str, list[float]] = {}
    per_query: dict[tuple[str, str], list[float]] = {}
    for row in text.splitlines():
        db, calls, total, _mean, query = row.split("\t", 4)
        # Savepoint names are numbered: one statement to the database, one line here.
        query = re.sub(r'(sa_savepoint_|"_pg3_)\d+', r"\1N", query)
        for key, into in ((db, per_db), ((db, query), per_query)):
            acc = into.setdefault(key, [0, 0.0])  # type: ignore[arg-type]
            acc[0] += int(calls)
            acc[1] += float(total)
    ordered = sorted(per_query.items(), key=lambda kv: (kv[0][0], -kv[1][0]))
    lines = [f"{db}\t{calls / completed:.2f}\t{total / completed:.3f}\t{total / calls:.3f}\t{query}"
             for (db, query), (calls, total) in ordered]
    report = [f"# per workflow ({n} workflows, 20 in flight): statements, server time (ms), commits", ""]
    report.append("db\tstatements/wf\tserver ms/wf\tcommits/wf")
    for name, (n_calls, ms) in sorted(per_db.items()):
        commits = after.get(name, 0) - before.get(name, 0)
        report.append(f"{name}\t{n_calls / completed:.1f}\t{ms / completed:.2f}\t{commits / completed:.2f}")
    report += ["", "db\tcalls/wf\tserver ms/wf\tmean ms\tstatement", *lines]
    cfg.profile_dir.mkdir(parents=True, exist_ok=True)  # py-spy may be missing: nothing made it
    (cfg.profile_dir / f"{sc.name}.pg_statements.tsv").write_text("\n".join(report) + "\n")
    return cids


# -- the table ----------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    def wfs(name: str) -> float | None:
        for r in results:
            if r["scenario"] == name and r.get("phases"):
                v: float | None = r["phases"][0]["workflows_per_s"]
                return v
        return None

    base = {n: wfs(n) for n in ("bare", "celery", "dbos")}
    head = ["scenario", "mode", "wf/s", "p50 ms", "p95 ms", "p99 ms", "kick p99", "CPU s/1k wf",
            "CPU ceiling",
            "client CPU/1k", "x bare", "x celery", "x dbos", "unfinished", "other load"]
    rows = [head]
    for r in results:
        if r.get("error") and not r.get("phases"):
            rows.append([r["scenario"], "error", r["error"][:60], *[""] * (len(head) - 3)])
            continue
        for p in r["phases"]:
            mode = p["mode"] if p["mode"] == "closed" else f"open {p.get('target_rate'):g}/s"
            if p.get("not_sent"):  # the system could not take kickoffs at the rate: not sustained
                mode += f", {p['not_sent']} not sent"
            if p.get("rejected"):  # answered other than 201/200 (a 429 from admission control, ...)
                mode += f", {p['rejected']} rejected"
            v = p["workflows_per_s"]
            lat, kick = p["latency_ms"], p["kickoff_ms"]
            ratios = [_ratio(v / b) if v and b else "-" for b in base.values()]
            rows.append([r["scenario"], mode, _f(v), _f(lat["p50"]), _f(lat["p95"]),
                         _f(lat["p99"]), _f(kick["p99"]), _f(p["cpu_s_per_1k"]),
                         _f(p.get("cpu_ceiling_wf_s")),
                         _f(p["client_cpu_s_per_1k"]), *ratios, str(r.get("unfinished", "?")),
                         f"{p['foreign_cpu_pct']:.0f} %"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def kinds_table(results: list[dict[str, Any]]) -> str:
    """CPU seconds per 1,000 workflows (closed loop) and peak RSS (MB), per process kind."""
    lines = ["| scenario | process kind | CPU s/1k wf | peak RSS MB (largest process) | processes |",
             "|---|---|---|---|---|"]
    for r in results:
        if not r.get("phases"):
            continue
        by_kind = r["phases"][0]["cpu_s_per_1k_by_kind"]
        rss, counts = r.get("peak_rss_mb", {}), r.get("process_counts", {})  # absent: it failed
        for kind in sorted(by_kind, key=lambda k: -by_kind[k]):
            lines.append(f"| {r['scenario']} | {kind} | {by_kind[kind]:.2f} | "
                         f"{rss.get(kind, 0):.0f} | {counts.get(kind, '')} |")
    return "\n".join(lines)


def _ratio(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def _f(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("redis", "hiredis", "sqlalchemy", "psycopg", "celery", "dbos", "gunicorn", "flask"):
        with contextlib.suppress(Exception):
            versions[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(Exception):
        versions["redis-server"] = redis.Redis.from_url(_SERVERS.redis_url).info("server")["redis_version"]
    with contextlib.suppress(Exception):
        pg = subprocess.run([str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True,
                            check=True)
        versions["postgresql"] = pg.stdout.split()[2]  # "postgres (PostgreSQL) 15.18 (Debian ...)"
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "kernel": platform.release(), "versions": versions}


_SERVERS: Servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs: 3 s per scenario after a warm-up of at most 10 s (a smoke check)")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to leave out")
    parser.add_argument("--seconds", type=float, help="closed-loop measured seconds per scenario")
    parser.add_argument("--open-seconds", type=float, help="open-loop measured seconds")
    parser.add_argument("--rates", default="200,300",
                        help="open-loop kickoffs per second, comma-separated: one open loop each")
    parser.add_argument("--window", type=int, default=1000, help="closed loop: workflows in flight")
    parser.add_argument("--connections", type=int, default=32,
                        help="kickoff requests in flight at once (keep-alive HTTP connections for Baton)")
    parser.add_argument("--batch", type=int, default=100,
                        help="baton-batch: workflows per POST /v1/workflows:batch")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the results block of bench/README.md with this run (or --show's)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy every Python process during the closed loop; PG statement stats")
    parser.add_argument("--profile-mode", choices=("cpu", "wall"), default="cpu",
                        help="cpu: only threads holding the GIL (py-spy --gil); wall: also waits on I/O")
    parser.add_argument("--baton-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for Baton's processes, e.g. BATON_READ_COUNT=20")
    parser.add_argument("--open-all", action="store_true", help="open loop for every scenario in --quick")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (process logs)")
    parser.add_argument("--show", type=Path, metavar="JSON", help="print the tables of an earlier run")
    parser.add_argument("--rss-every", type=float, default=0.0, metavar="SECONDS",
                        help="closed loop: sample each process kind's RSS this often (a soak)")
    parser.add_argument("--prefill", type=int, default=0, metavar="N",
                        help="baton-pg: N finished workflows in the database before the run")
    parser.add_argument("--workflows", type=int, default=0, metavar="N",
                        help="closed loop: stop once N workflows have finished (a soak; --seconds bounds it)")
    parser.add_argument("--pg-fast", action="store_true", help="PostgreSQL with fsync off (not durable)")
    args = parser.parse_args(argv)
    if args.show:
        earlier = json.loads(args.show.read_text())
        earlier["summary"] = verdict.summary(earlier["results"])  # with this code's verdict
        report_run(earlier, args.readme, earlier.get("command", "python -m bench.throughput"))
        return 0
    # The load loop runs in a thread beside the main one (which polls and samples /proc): hand the
    # GIL over quickly, so a reply never waits the default 5 ms switch interval behind it.
    sys.setswitchinterval(0.0005)

    names = args.only.split(",") if args.only else list(SCENARIOS)
    names = [n for n in names if n not in args.skip.split(",")]
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    cfg = Settings(
        quick=args.quick, warmup=1.0 if args.quick else 5.0,
        closed_seconds=args.seconds or (3.0 if args.quick else 30.0),
        open_seconds=args.open_seconds or (3.0 if args.quick else 20.0),
        rates=tuple(float(r) for r in args.rates.split(",") if r), window=args.window,
        drain_timeout=6.0 if args.quick else 60.0, connections=args.connections, batch=args.batch,
        profile_dir=args.profile, profile_mode=args.profile_mode,
        baton_env=tuple((kv.split("=", 1)[0], kv.split("=", 1)[-1]) for kv in args.baton_env),
        prefill=args.prefill, rss_every=args.rss_every, workflows=args.workflows,
    )
    t0 = time.monotonic()
    global _SERVERS
    servers = _SERVERS = make_servers()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[dict[str, Any]] = []
    try:
        print(f"bench: starting Redis (AOF everysec) and PostgreSQL in {servers.tmp}", file=sys.stderr)
        servers.start_redis()
        if any(n in ("baton-pg", "baton-batch", "baton-core", "dbos") for n in names):
            servers.start_postgres(durable=not args.pg_fast)
        for name in names:
            with_open = name == "baton-pg" or args.open_all
            results.append(run_scenario(name, servers, cfg, with_open))
        info = machine()
    finally:
        servers.close(keep=args.keep)
    out = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick,
        "settings": {"baton_env": dict(cfg.baton_env), "closed_s": cfg.closed_seconds,
                     "open_s": cfg.open_seconds, "rates": list(cfg.rates),
                     "connections": cfg.connections, "batch": cfg.batch,
                     "window": cfg.window, "warmup_s": cfg.warmup, "pg_durable": not args.pg_fast,
                     "prefill": cfg.prefill, "workflows": cfg.workflows},
        "machine": info, "results": results, "elapsed_s": round(time.monotonic() - t0, 1),
        "command": "python -m bench.throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "summary": verdict.summary(results),
    }
    path = args.json or ROOT / "bench" / "results" / f"throughput-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    report_run(out, args.readme, out["command"].strip())
    print(f"\nresults: {path}  ({out['elapsed_s']} s)")
    return 1 if any(r.get("error") for r in results) else 0


def report_run(out: dict[str, Any], readme: bool, command: str) -> None:
    """Print a run's tables; with readme, write them into bench/README.md's results block."""
    m, results = out["machine"], out["results"]
    print(f"\nmachine: {m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM, Python {m['python']}\n")
    print(verdict.markdown(out["summary"]), "", table(results), "", kinds_table(results), sep="\n")
    if rss := rss_table(results):
        print("", rss, sep="\n")
    failed = [r["scenario"] for r in results if r.get("error")]
    if readme and failed:  # the block is one whole run, side by side: a hole in it misleads
        print(f"\nthe results block of {verdict.README} was left as it was: {', '.join(failed)} failed",
              file=sys.stderr)
    elif readme:
        details = f"Every phase, and CPU per process kind:\n\n{table(results)}\n\n{kinds_table(results)}"
        verdict.write_readme(out, command, details)
        print(f"\nwrote the results block of {verdict.README}")


if __name__ == "__main__":
    sys.exit(main())
