"""Where Baton's CPU goes per workflow, measured in one process: no HTTP, no scheduler noise.

The end-to-end harness (`bench.throughput`) runs 14 processes on a shared machine, where wall time
says little. This runs the same code paths single-threaded in this process, against a private Redis
(AOF) and PostgreSQL (or SQLite): it starts `n` workflows of `order_fulfillment` the way the API
does (`start_workflow`, which publishes after its commit), then polls the tracker's and the four
participants' runtimes in turn until every workflow is `completed`. CPU time is taken around
each component's calls, so the table says how many CPU milliseconds each spends per workflow, in
this process (Python) and, on PostgreSQL, in the server's backends.

    python -m bench.inproc                     # 2,000 workflows on PostgreSQL
    python -m bench.inproc --db sqlite -n 1000
    python -m bench.inproc --profile /tmp/p.prof --top 40   # + cProfile, sorted by own time
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import pstats
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
import structlog
from sqlalchemy import Engine, event, func, select, text

from bench.servers import make_servers
from bench.throughput import TOKEN, order
from config.flows import Catalog, load_catalog
from config.settings import Settings, load_settings
from contracts.payloads import Registry
from contracts.registry import default_registry
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.api.app import create_app
from controller.db import migrate
from controller.db.tables import workflows
from controller.service.bootstrap import Services
from controller.service.start import StartRequest, start_workflow
from controller.service.track import build_tracker
from participants.reference import build
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime

PARTICIPANTS = ("inventory", "payment", "shipping", "notification")


class Clock:
    """CPU seconds of this process (and of PostgreSQL's backends) per component."""

    def __init__(self, pg_pid: int | None) -> None:
        self.own: dict[str, float] = defaultdict(float)
        self.pg: dict[str, float] = defaultdict(float)
        self.root = psutil.Process(pg_pid) if pg_pid else None
        self.statements: dict[str, int] = defaultdict(int)
        self.texts: dict[tuple[str, str], int] = defaultdict(int)
        self.trips: dict[tuple[str, str], int] = defaultdict(int)
        self.marks: dict[tuple[str, str], int] = {}
        self.batches: dict[str, int] = defaultdict(int)
        self.current = ""

    def trip(self, kind: str) -> None:
        """A round trip to PostgreSQL (`pg`) or Redis (`redis`), charged to the current component."""
        self.trips[(self.current, kind)] += 1

    def polled(self, name: str, handled: int) -> None:
        """A poll that handled nothing: its round trips are the idle ones, not the batches'."""
        if handled:
            self.batches[name] += 1
            self.marks = dict(self.trips)
            return
        for key in [k for k in self.trips if k[0] == name]:
            moved = self.trips[key] - self.marks.get(key, 0)
            self.trips[key] -= moved
            self.trips[("idle", key[1])] += moved
        self.marks = dict(self.trips)

    def count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements[self.current] += 1
        self.texts[(self.current, re.sub(r"_\d+", "_N", " ".join(statement.split())[:100]))] += 1

    def _pg_cpu(self) -> float:
        if self.root is None:
            return 0.0
        total = 0.0
        for p in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    @contextlib.contextmanager
    def charge(self, name: str) -> Iterator[None]:
        self.current = name
        pg0, t0 = self._pg_cpu(), time.process_time()
        try:
            yield
        finally:
            self.own[name] += time.process_time() - t0
            self.pg[name] += self._pg_cpu() - pg0


def count_round_trips(clock: Clock) -> None:
    """Count every request sent to PostgreSQL (an execute, executemany, COMMIT or ROLLBACK that
    has a transaction to end, and psycopg's implicit BEGIN before a transaction's first statement,
    the pool's pre-ping included) and to Redis (one per command or pipeline sent)."""
    import psycopg
    from psycopg import pq
    from redis.connection import AbstractConnection

    def wrap(cls: Any, name: str, kind: str, begins: bool = False, ends: bool = False) -> None:
        inner = getattr(cls, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            conn = getattr(self, "connection", self) if kind == "pg" else None
            status = conn.pgconn.transaction_status if conn is not None else None
            if begins and conn is not None and status == pq.TransactionStatus.IDLE and not conn.autocommit:
                clock.trip(kind)  # the BEGIN psycopg sends first
            if not ends or status != pq.TransactionStatus.IDLE:
                clock.trip(kind)
                if name == "commit":
                    clock.trip("commit")
            return inner(self, *args, **kwargs)
        setattr(cls, name, counted)

    wrap(psycopg.Cursor, "execute", "pg", begins=True)
    wrap(psycopg.Cursor, "executemany", "pg", begins=True)
    wrap(psycopg.Connection, "commit", "pg", ends=True)
    wrap(psycopg.Connection, "rollback", "pg", ends=True)
    wrap(AbstractConnection, "send_packed_command", "redis")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="workflows (default 2000)")
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--batch", type=int, default=100, help="kickoffs between polls (default 100)")
    ap.add_argument("--read-count", type=int, default=100)
    ap.add_argument("--profile", type=Path, help="write cProfile stats here and print the top")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--profile-only", metavar="COMPONENT",
                    help="profile only this component's calls (start, tracker, a participant)")
    ap.add_argument("--api", action="store_true",
                    help="kick off through the Flask app (the web process's code, without gunicorn)")
    ap.add_argument("--statements", action="store_true", help="print each component's statements")
    ap.add_argument("--trips", action="store_true",
                    help="count round trips to PostgreSQL and Redis per component")
    ap.add_argument("--log", action="store_true", help="keep INFO logs (to stderr), as processes do")
    args = ap.parse_args(argv)

    level = logging.INFO if args.log else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    servers = make_servers()
    try:
        redis_url = servers.start_redis()
        if args.db == "postgresql":
            servers.start_postgres(stat_statements=False)
            url = servers.create_db("baton")
            purl = {p: servers.create_db(f"p_{p}") for p in PARTICIPANTS}
        else:
            url = f"sqlite:///{servers.tmp}/baton.db"
            purl = {p: f"sqlite:///{servers.tmp}/p_{p}.db" for p in PARTICIPANTS}
        return run(args, servers.postgres_pid(), redis_url, url, purl)
    finally:
        servers.close()


@dataclass
class InProcess:
    """The controller's database and the tracker's and four participants' runtimes, all in this
    process, on one Redis: what `run` measures, and `bench.tracemem` watches."""

    engine: Engine
    registry: Registry
    catalog: Catalog
    keys: Keys
    client: redis.Redis
    runtimes: dict[str, Runtime]

    @classmethod
    def start(cls, redis_url: str, url: str, purl: dict[str, str], read_count: int = 100) -> InProcess:
        engine = make_engine(url)
        migrate.upgrade(engine)
        registry = default_registry()
        catalog = load_catalog(registry)
        keys = Keys("bench")
        client = redis.Redis.from_url(redis_url)
        opts = Options(relay_outbox=False, read_count=read_count, block_ms=1, linger_ms=0)
        runtimes = {"tracker": Runtime(build_tracker(catalog, registry), engine, client, keys, opts)}
        for p in PARTICIPANTS:
            runtimes[p] = Runtime(build(p), make_engine(purl[p]), client, keys, opts)
        for rt in runtimes.values():
            rt.setup()
        return cls(engine, registry, catalog, keys, client, runtimes)

    def kick(self, cid: str) -> None:
        """Start a workflow as the API does, without HTTP: record it, then publish."""
        req = StartRequest(flow="order_fulfillment", input=order(cid), actor="bench", correlation_id=cid)
        start_workflow(self.services(), req, utcnow())

    def services(self) -> Services:
        return Services(Settings(stream_prefix=self.keys.prefix), self.engine, self.client,
                        self.catalog, self.registry, self.keys)


def run(args: argparse.Namespace, pg_pid: int | None, redis_url: str, url: str,
        purl: dict[str, str]) -> int:
    system = InProcess.start(redis_url, url, purl, args.read_count)
    engine, client, keys, runtimes = system.engine, system.client, system.keys, system.runtimes
    clock = Clock(pg_pid)
    if args.trips:
        count_round_trips(clock)
    for e in {engine, *(rt.engine for rt in runtimes.values())}:
        event.listen(e, "before_cursor_execute", clock.count)

    if args.api:
        settings = load_settings({"REDIS_URL": redis_url, "DATABASE_URL": url, "BATON_STREAM_PREFIX":
                                  keys.prefix, "BATON_TOKENS": f"bench:starter:{TOKEN}"})
        services = Services(settings, engine, client, system.catalog, system.registry, keys)
        web = create_app(settings, services).test_client()

        def api_kick(cid: str) -> None:
            resp = web.post("/v1/workflows", json={"flow": "order_fulfillment", "input": order(cid),
                                                    "correlation_id": cid},
                            headers={"Authorization": f"Bearer {TOKEN}"})
            if resp.status_code != 201:
                raise RuntimeError(f"POST /v1/workflows answered {resp.status_code}: {resp.data[:300]!r}")

    kick = api_kick if args.api else system.kick

    profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not waits
    t0 = time.perf_counter()
    only = args.profile_only
    if profiler and not only:
        profiler.enable()
    started = 0
    while True:
        with clock.charge("start"), _profiled(profiler, only == "start"):
            for _ in range(min(args.batch, args.n - started)):
                kick(f"b-{uuid.uuid4().hex[:20]}")
                started += 1
        handled = 0
        for name, rt in runtimes.items():
            with clock.charge(name), _profiled(profiler, only == name):
                got = rt.poll()
            clock.polled(name, got)
            handled += got
        if started >= args.n and handled == 0 and _completed(engine) >= args.n:
            break
        if started >= args.n and handled == 0:
            time.sleep(0.01)
    if profiler and not only:
        profiler.disable()
    wall = time.perf_counter() - t0
    done = _completed(engine)
    _table(clock, args.n, wall, done)
    if args.trips and engine.dialect.name == "postgresql":
        _hot_updates(engine, args.n)
    if args.statements:
        for (name, text), count in sorted(clock.texts.items(), key=lambda kv: (kv[0][0], -kv[1])):
            print(f"{name:<13}{count / args.n:6.1f}  {text}")
    if profiler and args.profile:
        profiler.dump_stats(str(args.profile))
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(args.top)
    return 0 if done == args.n else 1


@contextlib.contextmanager
def _profiled(profiler: cProfile.Profile | None, on: bool) -> Iterator[None]:
    """Profile the block (`--profile-only`: one component's calls)."""
    if profiler is None or not on:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()


def _hot_updates(engine: Engine, n: int) -> None:
    """Row updates per workflow on the controller's tables, and how many were HOT (no index
    entry written; PostgreSQL's statistics, flushed when a backend's transaction ends)."""
    time.sleep(1.0)  # the statistics collector's delay
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE n_tup_upd + n_tup_ins > 0 ORDER BY relname")).all()
    print(f"{'table':<24}{'inserts/wf':>12}{'updates/wf':>12}{'HOT':>8}")
    for r in rows:
        print(f"{r.relname:<24}{r.n_tup_ins / n:>12.2f}{r.n_tup_upd / n:>12.2f}"
              f"{(r.n_tup_hot_upd / r.n_tup_upd if r.n_tup_upd else 0):>8.0%}")


def _completed(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(workflows.c.status == "completed")).scalar_one())


def _table(clock: Clock, n: int, wall: float, done: int) -> None:
    per: Callable[[float], str] = lambda s: f"{s * 1000 / n:8.2f}"  # noqa: E731
    print(f"\n{done} of {n} workflows completed in {wall:.1f} s wall ({n / wall:.0f} wf/s single-threaded)")
    print(f"{'component':<14}{'python ms/wf':>14}{'postgres ms/wf':>16}{'statements/wf':>15}")
    for name in clock.own:
        print(f"{name:<14}{per(clock.own[name]):>14}{per(clock.pg[name]):>16}"
              f"{clock.statements[name] / n:>15.1f}")
    own, pg = sum(clock.own.values()), sum(clock.pg.values())
    print(f"{'total':<14}{per(own):>14}{per(pg):>16}{sum(clock.statements.values()) / n:>15.1f}")
    print(f"CPU ceiling on 2 cores: {2 * n / (own + pg):.0f} wf/s")
    if clock.trips:
        kinds = ("pg", "commit", "redis")
        print(f"{'component':<14}{'pg trips/wf':>14}{'commits/wf':>12}{'redis trips/wf':>16}"
              f"{'batches/wf':>12}{'pg/batch':>10}{'redis/batch':>12}")
        for name in [*clock.own, "idle", "total"]:
            got = [sum(v for (c, k), v in clock.trips.items() if k == kind and name in (c, "total"))
                   for kind in kinds]
            b = clock.batches.get(name, 0)
            per_batch = f"{got[0] / b:>10.2f}{got[2] / b:>12.2f}" if b else ""
            print(f"{name:<14}{got[0] / n:>14.2f}{got[1] / n:>12.2f}{got[2] / n:>16.2f}"
                  f"{b / n:>12.2f}{per_batch}")


if __name__ == "__main__":
    sys.exit(main())
