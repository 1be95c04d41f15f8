"""Benchmark (issue 3): one SLA sweep over 10,000, 100,000 and 1,000,000 in-flight workflows, of which
1,000 are overdue, on PostgreSQL and SQLite. The sweep's cost must follow the overdue, not the in-flight.

    python -m bench.sweep --sizes 10000,100000,1000000 --db both
    python -m bench.sweep --db postgresql --pg-url postgresql+psycopg://user@host/db   # an existing server
    python -m bench.sweep --db both --readme        # also writes the figures into bench/README.md

Each run gets a fresh database (a PostgreSQL schema, a SQLite file), migrated with
`controller.migrate.upgrade`, and filled with `INSERT ... SELECT` over a generated series: every
workflow of `order_fulfillment` v1 with its 4 steps and its `order.placed` on the timeline.

- In flight: started in the last 50 s, `reserve_inventory` and `charge_payment` active (deadline
  +60 s), the others pending; `next_due_at` 11 to 60 s ahead.
- Overdue (every n/1000-th row, spread through the table): both steps done with their results,
  `send_confirmation` done, `schedule_shipment` active since 61 to 120 s ago, so its 60 s deadline
  has passed. The sweep breaches each one and sends its first compensation (`payment.refund`) and
  `workflow.compensating` to a real Redis.

Then `controller.sweeper.sweep_once(services, now)` is timed three times with `Services` built by
hand: the first and second take 500 overdue workflows each (the sweeper's batch limit), the third
finds nothing due. The due query that the sweeper runs is captured and EXPLAINed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import pwd
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy import Engine, event, text

from config.flows import load_catalog
from config.logging import configure_logging
from config.settings import Settings
from contracts.registry import default_registry
from contracts.streams import Keys
from controller.db import migrate
from controller.service import sweep as sweeper
from controller.service.bootstrap import Services
from participants.runtime import redis_server
from participants.runtime.db import make_engine

ROOT = Path(__file__).resolve().parent.parent
README = Path(__file__).resolve().parent / "README.md"
DUE_QUERY = re.compile(r"FROM workflows\s+WHERE workflows\.next_due_at <=", re.S)
BEGIN, END = "<!-- sweep:results -->", "<!-- /sweep:results -->"


# -- the database, filled with SQL ----------------------------------------------------------------


class Dialect:
    """The few spellings that differ between PostgreSQL and SQLite in the fill statements."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def series(self) -> str:
        """`g` from 1 to :n, with `cid`, `late` (overdue) and `t0` (start, seconds relative to now)."""
        head = ("SELECT g FROM generate_series(1, :n) AS s(g)" if self.pg else
                "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) "
                "SELECT g FROM s")
        cid = "'wf-' || lpad(g::text, 8, '0')" if self.pg else "printf('wf-%08d', g)"
        return (f"SELECT g, {cid} AS cid, (g % :every = 0) AS late, "
                f"CASE WHEN g % :every = 0 THEN -120.0 - g % 60 ELSE -1.0 * (g % 50) END AS t0 "
                f"FROM ({head}) AS base")

    def ts(self, seconds: str) -> str:
        """The timestamp `now + seconds`, stored the way the UtcDateTime column stores it."""
        if self.pg:
            return f"(CAST(:now AS timestamptz) + make_interval(secs => {seconds}))"
        return f"(strftime('%Y-%m-%d %H:%M:%f', :epoch + ({seconds}), 'unixepoch') || '000')"

    def obj(self, *pairs: str) -> str:
        return f"{'json_build_object' if self.pg else 'json_object'}({', '.join(pairs)})"

    def arr(self, *items: str) -> str:
        return f"{'json_build_array' if self.pg else 'json_array'}({', '.join(items)})"

    def when(self, condition: str, then: str) -> str:
        return f"CASE WHEN {condition} THEN {then} END"


def fill_statements(d: Dialect) -> dict[str, str]:
    order_id = "'ord-' || substr(cid, 4)"
    customer = "'cust-' || (g % 997)"
    step_cols = ("correlation_id, name, status, started_at, finished_at, deadline, completed_seq, "
                 "attempts, command_id, next_attempt_at, result")
    msg_cols = ("id, correlation_id, kind, type, version, source, causation_id, occurred_at, "
                "received_at, target, data")
    reserved = d.obj("'order_id'", order_id, "'reservations'", d.arr(d.obj(
        "'reservation_id'", "'res-' || g", "'product_id'", "'SKU-001'", "'quantity'", "1")))
    charged = d.obj("'order_id'", order_id, "'payment_id'", "'pay-' || g", "'amount'", "10.0",
                    "'currency'", "'EUR'", "'customer_id'", customer)
    sent = d.obj("'order_id'", order_id, "'channel'", "'email'")
    placed = d.obj("'order_id'", order_id, "'customer_id'", customer, "'items'",
                   d.arr(d.obj("'product_id'", "'SKU-001'", "'quantity'", "1", "'unit_price'", "10.0")),
                   "'total_amount'", "10.0", "'currency'", "'EUR'")

    def result(k: int, data: str) -> str:  # a done step's result: the id and data of its event
        return d.obj("'id'", f"'msg-' || g || '-{k}'", "'data'", data)

    series = d.series()

    def done_or_active(name: str, seq: int, res: str) -> str:
        return (f"INSERT INTO workflow_steps ({step_cols}) SELECT cid, '{name}', "
                f"CASE WHEN late THEN 'done' ELSE 'active' END, {d.ts('t0')}, "
                f"{d.when('late', d.ts(f't0 + 0.{seq}'))}, {d.ts('t0 + 60')}, "
                f"{d.when('late', str(seq))}, 0, NULL, NULL, {d.when('late', res)} FROM ({series}) AS w")

    def message(k: int, type_: str, source: str, data: str, only_late: bool) -> str:
        return (f"INSERT INTO workflow_messages ({msg_cols}) SELECT 'msg-' || g || '-{k}', cid, 'event', "
                f"'{type_}', 1, '{source}', 'msg-' || g || '-0', {d.ts(f't0 + 0.{k}')}, "
                f"{d.ts(f't0 + 0.{k}')}, NULL, {data} FROM ({series}) AS w"
                + (" WHERE late" if only_late else ""))

    return {
        "workflows": (
            "INSERT INTO workflows (correlation_id, flow, flow_version, status, started_at, deadline, "
            "next_due_at, started_by, input, start_message_id) "
            f"SELECT cid, 'order_fulfillment', 1, 'running', {d.ts('t0')}, {d.ts('t0 + 300')}, "
            f"CASE WHEN late THEN {d.ts('t0 + 61')} ELSE {d.ts('t0 + 60')} END, 'bench', {placed}, "
            f"'msg-' || g || '-0' FROM ({series}) AS w"),
        "steps: reserve_inventory": done_or_active("reserve_inventory", 1, result(1, reserved)),
        "steps: charge_payment": done_or_active("charge_payment", 2, result(2, charged)),
        "steps: schedule_shipment": (
            f"INSERT INTO workflow_steps ({step_cols}) SELECT cid, 'schedule_shipment', "
            f"CASE WHEN late THEN 'active' ELSE 'pending' END, {d.when('late', d.ts('t0 + 1'))}, NULL, "
            f"{d.when('late', d.ts('t0 + 61'))}, NULL, 0, NULL, NULL, NULL FROM ({series}) AS w"),
        "steps: send_confirmation": (
            f"INSERT INTO workflow_steps ({step_cols}) SELECT cid, 'send_confirmation', "
            f"CASE WHEN late THEN 'done' ELSE 'pending' END, {d.when('late', d.ts('t0 + 0.2'))}, "
            f"{d.when('late', d.ts('t0 + 0.3'))}, {d.when('late', d.ts('t0 + 60.2'))}, "
            f"{d.when('late', '3')}, 0, NULL, NULL, {d.when('late', result(3, sent))} FROM ({series}) AS w"),
        "messages: order.placed": message(0, "order.placed", "api", placed, only_late=False),
        "messages: inventory.reserved": message(1, "inventory.reserved", "inventory", reserved, True),
        "messages: payment.charged": message(2, "payment.charged", "payment", charged, True),
        "messages: notification.sent": message(3, "notification.sent", "notification", sent, True),
    }


def fill(engine: Engine, size: int, overdue: int, now: datetime) -> float:
    d = Dialect(engine.dialect.name)
    params = {"n": size, "every": max(size // overdue, 1), "now": now, "epoch": now.timestamp()}
    t = time.perf_counter()
    for what, sql in fill_statements(d).items():
        with engine.begin() as conn:
            conn.execute(text(sql), params)
        print(f"    filled {what}", file=sys.stderr, flush=True)
    if d.pg:  # what autovacuum would have done by the time a million workflows are in flight
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) workflows, workflow_steps, workflow_messages"))
    else:
        raw = engine.raw_connection()  # outside a transaction (the engine's BEGIN IMMEDIATE)
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        finally:
            raw.close()
    return time.perf_counter() - t


# -- servers ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def postgres_server(tmp: Path) -> Iterator[str]:
    """A private PostgreSQL (as `postgres` when we are root), default settings: fsync on."""
    found = shutil.which("pg_ctl")
    bins = [Path(found).resolve().parent] if found else []
    bins += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    pg_bin = next((b for b in bins if (b / "initdb").exists()), None)
    if pg_bin is None:
        raise SystemExit("bench.sweep: no PostgreSQL server binaries; install postgresql or pass --pg-url")
    data, run = tmp / "pg", tmp / "pg-run"
    data.mkdir(mode=0o700)
    run.mkdir(mode=0o700)
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")  # KeyError: run as a non-root user, or pass --pg-url
        os.chmod(tmp, 0o755)
        for p in (data, run):
            os.chown(p, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT, "cwd": tmp}
    subprocess.run([*prefix, str(pg_bin / "initdb"), "-D", str(data), "-U", "baton", "-A", "trust",
                    "-E", "UTF8", "--locale=C"], check=True, **quiet)  # type: ignore[call-overload]
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{run}'\n")
    subprocess.run([*prefix, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(run / "log"), "-w",
                    "start"], check=True, **quiet)  # type: ignore[call-overload]
    try:
        yield f"postgresql+psycopg://baton@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, **quiet)  # type: ignore[call-overload]


@contextlib.contextmanager
def database(kind: str, pg_url: str | None, tmp: Path, size: int) -> Iterator[str]:
    """A fresh, empty database for one run: a PostgreSQL schema or a SQLite file."""
    if kind == "sqlite":
        path = tmp / f"sweep-{size}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for p in tmp.glob(f"{path.name}*"):
                p.unlink()
        return
    assert pg_url is not None
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    schema = f"bench_sweep_{size}_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield admin.url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    db: str
    size: int
    overdue: int
    fill_s: float
    wall_ms: list[list[float]]  # per repetition: sweep 1, sweep 2, sweep 3
    cpu_ms: list[list[float]]
    acted: list[list[int]]
    plan: str
    due_query_ms: float | None

    def first(self, what: str = "wall") -> list[float]:
        return [rep[0] for rep in (self.wall_ms if what == "wall" else self.cpu_ms)]


def explain(engine: Engine, statement: str, parameters: Any) -> tuple[str, float | None]:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).all()
            plan = "\n".join(r[0] for r in rows)
            found = re.search(r"Execution Time: ([\d.]+) ms", plan)
            return plan, float(found.group(1)) if found else None
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return "\n".join(str(r[-1]) for r in rows), None


RESET = [  # undo what the sweeps did (they change nothing else), so that the same 1,000 are due again
    "DELETE FROM workflow_compensations",
    "DELETE FROM workflow_messages WHERE kind = 'command'",
    # the report's facts of those commands' transitions (the workflows' own facts are upserted)
    "DELETE FROM report_facts WHERE kind = 't' AND to_type IN "
    "('inventory.release', 'payment.refund', 'shipment.cancel')",
    "DELETE FROM baton_outbox",
    "UPDATE workflows SET status = 'running', reason = NULL, next_due_at = (SELECT s.deadline "
    "FROM workflow_steps s WHERE s.correlation_id = workflows.correlation_id "
    "AND s.name = 'schedule_shipment') WHERE status = 'compensating'",
]


def reset(engine: Engine, client: redis.Redis, keys: Keys, now: datetime, overdue: int) -> None:
    with engine.begin() as conn:
        for sql in RESET:
            conn.execute(text(sql))
        due = conn.execute(text("SELECT count(*) FROM workflows WHERE next_due_at <= :now"),
                           {"now": now}).scalar_one()
    if due != overdue:
        raise RuntimeError(f"after the reset {due} workflows are due, not {overdue}")
    if engine.dialect.name == "postgresql":  # as autovacuum would: no dead index entries pile up
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) workflows, workflow_compensations, workflow_messages, "
                              "baton_outbox"))
    for key in client.scan_iter(f"{keys.prefix}:*"):
        client.delete(key)


def run_one(kind: str, url: str, redis_url: str, size: int, overdue: int, repeat: int) -> Result:
    now = datetime.now(UTC).replace(microsecond=0)
    engine = make_engine(url)
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"bench{size}{kind[:2]}")
    try:
        migrate.upgrade(engine)
        fill_s = fill(engine, size, overdue, now)
        registry = default_registry()
        settings = Settings(database_url=url, redis_url=redis_url, stream_prefix=keys.prefix)
        services = Services(settings=settings, engine=engine, redis=client,
                            catalog=load_catalog(registry, ()), registry=registry, keys=keys)
        with engine.connect() as conn:  # the pool holds a connection, as in a running worker
            conn.execute(text("SELECT 1"))
        captured: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                    executemany: bool) -> None:
            if not captured and DUE_QUERY.search(statement):
                captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        walls, cpus, acted = [], [], []
        for rep in range(repeat):
            if rep:
                reset(engine, client, keys, now, overdue)
            wall, cpu, n = [], [], []
            for _ in range(3):
                t, c = time.perf_counter(), time.process_time()
                n.append(sweeper.sweep_once(services, now))
                wall.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            if not captured:
                raise RuntimeError("the sweeper's due query was not seen: has its SQL changed?")
            if rep == 0:
                event.remove(engine, "before_cursor_execute", capture)
            walls.append(wall)
            cpus.append(cpu)
            acted.append(n)
            print(f"  repetition {rep + 1}: " + ", ".join(
                f"{w:,.1f} ms (CPU {c:,.1f} ms, {k} acted)" for w, c, k in zip(wall, cpu, n, strict=True)),
                file=sys.stderr, flush=True)
        reset(engine, client, keys, now, overdue)
        plan, due_ms = explain(engine, *captured[0])  # the sweeper's own statement, 1,000 due
        return Result(kind, size, overdue, fill_s, walls, cpus, acted, plan, due_ms)
    finally:
        for k in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(k)
        client.close()
        engine.dispose()


# -- report ----------------------------------------------------------------------------------------


def machine(pg_url: str | None, redis_url: str) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    info = {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    client = redis.Redis.from_url(redis_url)
    server = client.info("server")
    info["redis"] = f"{server.get('redis_version')}"
    client.close()
    if pg_url:
        admin = sa.create_engine(pg_url)
        with admin.connect() as conn:
            info["postgresql"] = str(conn.execute(text("SHOW server_version")).scalar_one())
            info["postgresql settings"] = ", ".join(
                f"{name}={conn.execute(text(f'SHOW {name}')).scalar_one()}"
                for name in ("shared_buffers", "fsync", "synchronous_commit"))
        admin.dispose()
    return info


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ms"


def table(results: list[Result]) -> str:
    head = ("| database | in flight | overdue | fill | one sweep, 500 due: wall, median (min) "
            "| its CPU, median | both sweeps, all 1,000 due: wall | a sweep with nothing due "
            "| due query | uses ix_workflows_due |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        due = f"{r.due_query_ms:.2f} ms" if r.due_query_ms is not None else "n/a"
        lines.append(
            f"| {r.db} | {r.size:,} | {r.overdue:,} | {r.fill_s:,.0f} s "
            f"| {_ms(r.first())} ({min(r.first()):,.0f} ms) | {_ms(r.first('cpu'))} "
            f"| {_ms([w[0] + w[1] for w in r.wall_ms])} "
            f"| {statistics.median(w[2] for w in r.wall_ms):.1f} ms | {due} "
            f"| {'yes' if 'ix_workflows_due' in r.plan else 'NO'} |")
    return "\n".join(lines)


def spread(results: list[Result]) -> str:
    out = []
    for db in dict.fromkeys(r.db for r in results):
        mine = [r for r in results if r.db == db]
        for what, values in (("wall, median", [statistics.median(r.first()) for r in mine]),
                             ("wall, min", [min(r.first()) for r in mine]),
                             ("CPU, median", [statistics.median(r.first("cpu")) for r in mine])):
            ratio = max(values) / min(values)
            out.append(f"- {db}, one sweep of 500, {what}: slowest/fastest size = {ratio:.2f}x "
                       f"({'within' if ratio <= 2 else 'NOT within'} the 2x target)")
    return "\n".join(out)


def plans(results: list[Result]) -> str:
    return "\n\n".join(f"{r.db}, {r.size:,} in flight:\n\n```\n{r.plan}\n```" for r in results)


def write_readme(command: str, info: dict[str, str], results: list[Result]) -> None:
    block = "\n\n".join([
        BEGIN,
        f"Command: `{command}`",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()) + ".",
        table(results),
        spread(results),
        "The plans of the sweeper's due query, captured from the sweep itself, with 1,000 due:",
        plans(results),
        END,
    ])
    text_ = README.read_text() if README.exists() else "# Benchmarks\n"
    if BEGIN in text_ and END in text_:
        text_ = text_[:text_.index(BEGIN)] + block + text_[text_.index(END) + len(END):]
    elif "## Sweep" in text_:
        at = text_.index("## Sweep")
        nxt = text_.find("\n## ", at + 1)
        at_end = len(text_) if nxt < 0 else nxt
        text_ = text_[:at_end].rstrip() + "\n\n" + block + "\n" + text_[at_end:]
    else:
        text_ = text_.rstrip() + "\n\n## Sweep\n\n" + block + "\n"
    README.write_text(text_)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="in-flight workflows per run, comma-separated")
    parser.add_argument("--db", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--overdue", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="sweeps of the same overdue rows, reset between: medians resist a busy machine")
    parser.add_argument("--pg-url", help="an existing PostgreSQL (a schema is made per run); "
                        "default: a private server in a temp directory")
    parser.add_argument("--redis-url", help="default: a private server in a temp directory")
    parser.add_argument("--readme", action="store_true", help="write the figures into bench/README.md")
    args = parser.parse_args(argv)
    configure_logging(Settings(log_level="WARNING"), "bench")  # one line per workflow is not the point
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="baton-bench-sweep."))
        stack.callback(shutil.rmtree, tmp, True)
        redis_url = args.redis_url
        if not redis_url:
            redis_url = redis_server.start_server(tmp / "redis", appendonly=False)
            stack.callback(redis_server.stop_server, tmp / "redis")
        pg_url = args.pg_url
        if "postgresql" in kinds and not pg_url:
            pg_url = stack.enter_context(postgres_server(tmp))
        info = machine(pg_url if "postgresql" in kinds else None, redis_url)
        for kind in kinds:
            print(f"{kind}: warming up (imports, caches) on a throwaway run", file=sys.stderr)
            with database(kind, pg_url, tmp, 1000) as url:
                run_one(kind, url, redis_url, 1000, min(args.overdue, 500), 1)
            for size in sizes:
                print(f"{kind}, {size:,} in flight, {args.overdue:,} overdue: filling", file=sys.stderr)
                with database(kind, pg_url, tmp, size) as url:
                    result = run_one(kind, url, redis_url, size, args.overdue, args.repeat)
                results.append(result)
                print(f"  fill {result.fill_s:.1f} s", file=sys.stderr)
        info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    print()
    print(table(results))
    print()
    print(spread(results))
    print()
    print(plans(results))
    if args.readme:
        command = "python -m bench.sweep " + " ".join(argv if argv is not None else sys.argv[1:])
        write_readme(command, info, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
