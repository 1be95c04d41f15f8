"""How long the SLA report takes over 1,000,000 finished workflows on PostgreSQL.

    .venv/bin/python -m bench.report                      # starts a private PostgreSQL
    .venv/bin/python -m bench.report --database-url URL   # an empty database of yours

It fills the controller's tables with bulk SQL (generate_series): every workflow with its four
steps and five messages, some failed and compensated, some late; then times the whole report
(`sla_report`, what `GET /v1/reports/sla` answers) and each of its sections.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from bench import report_fill
from contracts.timefmt import utcnow
from controller.db import migrate
from controller.reporting import lists as report_lists
from controller.reporting import sla as reports
from controller.reporting.outcomes import Scope
from participants.runtime.db import make_engine

FLOW = "order_fulfillment"
STEPS = ("reserve_inventory", "charge_payment", "schedule_shipment", "send_confirmation")
T0 = datetime(2026, 11, 1, tzinfo=UTC)

# Per workflow i: how long each participant took (seconds), skewed so that p99 >> p50. One in a
# hundred shipments overruns its 60 s step SLA; one in two hundred overruns the workflow's 300 s,
# which is then compensated for its SLA; one in twenty workflows fails and is compensated.
_DURATIONS = """
CREATE UNLOGGED TABLE bench_d AS
SELECT i, t, ms(r) AS r, ms(p) AS p, ms(s) AS s, ms(n) AS n, failed, late
FROM (SELECT i, T0 + i * interval '0.6 second' AS t,
             0.05 + 3 * random() ^ 3 AS r, 0.05 + 4 * random() ^ 3 AS p,
             CASE WHEN i % 200 = 7 THEN 301 + 30 * random()
                  WHEN random() < 0.01 THEN 61 + 30 * random() ELSE 0.1 + 10 * random() ^ 4 END AS s,
             0.02 + random() AS n, i % 20 = 0 AS failed, i % 200 = 7 AS late
      FROM generate_series(1, :n) AS i) AS d
"""
# Seconds to the millisecond, as every time on the wire and in the tables is.
_MS = "CREATE FUNCTION ms(double precision) RETURNS double precision IMMUTABLE LANGUAGE sql " \
      "AS 'SELECT round($1::numeric, 3)::double precision'"
# report_facts.bucket_of, for the facts written in bulk below.
_BUCKET = """CREATE FUNCTION bench_bucket(d bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS $$
  SELECT CASE WHEN d IS NULL THEN -1 WHEN d <= 0 THEN 0 WHEN d < 100 THEN d
              ELSE (d + 10 ^ (length(d::text) - 2) - 1)::bigint / (10 ^ (length(d::text) - 2))::bigint
                   * (10 ^ (length(d::text) - 2))::bigint END $$"""
_FILL = [
    """INSERT INTO workflows (correlation_id, flow, flow_version, status, reason, started_at,
         deadline, finished_at, started_by, input, start_message_id)
       SELECT 'wf-' || i, :flow, 1,
              CASE WHEN failed OR late THEN 'compensated' ELSE 'completed' END,
              CASE WHEN failed THEN 'step_failed' WHEN late THEN 'sla_breached' END,
              t, t + interval '300 second',
              t + make_interval(secs => greatest(r, p) + s + CASE WHEN failed THEN 2 ELSE 0 END),
              'bench', json_build_object('order_id', 'ord-' || i, 'customer_id', 'c-' || i % 5000),
              'wf-' || i || '-m0'
       FROM bench_d""",
    """INSERT INTO workflow_steps (correlation_id, name, status, started_at, finished_at, deadline,
         attempts)
       SELECT 'wf-' || i, x.name, x.status, x.st, x.fi, x.st + interval '60 second', 0
       FROM bench_d, LATERAL (VALUES
         ('reserve_inventory', 'done', t, t + make_interval(secs => r)),
         ('charge_payment', 'done', t, t + make_interval(secs => p)),
         ('schedule_shipment', CASE WHEN failed THEN 'failed' WHEN late THEN 'compensated'
                                    ELSE 'done' END,
          t + make_interval(secs => greatest(r, p)), t + make_interval(secs => greatest(r, p) + s)),
         ('send_confirmation', 'done', t + make_interval(secs => p), t + make_interval(secs => p + n))
       ) AS x(name, status, st, fi)""",
    """INSERT INTO workflow_messages (id, correlation_id, kind, type, version, source, causation_id,
         occurred_at, received_at, data)
       SELECT 'wf-' || i || '-' || x.k, 'wf-' || i, 'event', x.type, 1, x.source,
              'wf-' || i || '-' || x.cause, x.at, x.at + interval '3 millisecond', '{}'::json
       FROM bench_d, LATERAL (VALUES
         ('m0', 'order.placed', 'controller', 'm0', t),
         ('m1', 'inventory.reserved', 'inventory', 'm0', t + make_interval(secs => r)),
         ('m2', 'payment.charged', 'payment', 'm0', t + make_interval(secs => p)),
         ('m3', CASE WHEN failed THEN 'shipment.scheduling_failed' ELSE 'shipment.scheduled' END,
          'shipping', CASE WHEN r > p THEN 'm1' ELSE 'm2' END,
          t + make_interval(secs => greatest(r, p) + s)),
         ('m4', 'notification.sent', 'notification', 'm2', t + make_interval(secs => p + n))
       ) AS x(k, type, source, cause, at)""",
]


def fill(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_d"))
        conn.execute(text("DROP FUNCTION IF EXISTS ms(double precision)"))
        conn.execute(text("DROP FUNCTION IF EXISTS bench_bucket(bigint)"))
        conn.execute(text(_MS))
        conn.execute(text(_BUCKET))
        conn.execute(text(_DURATIONS.replace("T0", f"timestamptz '{T0.isoformat()}'")), {"n": n})
        for sql in _FILL:
            began = time.perf_counter()
            conn.execute(text(sql), {"flow": FLOW})
            print(f"  {sql.split()[2]:<18} {time.perf_counter() - began:6.1f} s")
        began = time.perf_counter()
        report_fill.fill(conn)
        print(f"  {'report facts':<18} {time.perf_counter() - began:6.1f} s")
        conn.execute(text("DROP TABLE bench_d"))
        conn.execute(text("DROP FUNCTION ms(double precision)"))
        conn.execute(text("DROP FUNCTION bench_bucket(bigint)"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def timed(engine: Engine, body: Callable[[Connection], Any], runs: int
          ) -> tuple[list[float], list[float]]:
    """Wall seconds, and CPU seconds of the PostgreSQL backend when it runs on this machine: on a
    busy machine the wall time says more about the neighbours than about the queries."""
    walls, cpus = [], []
    for _ in range(runs):
        with engine.begin() as conn:
            reports.tune(conn)  # first: it sets the transaction's isolation
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            cpu, began = _cpu_seconds(pid), time.perf_counter()
            body(conn)
            walls.append(time.perf_counter() - began)
            cpus.append(_cpu_seconds(pid) - cpu)
    return walls, cpus


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (NaN when it is not on this machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: start one)")
    parser.add_argument("--workflows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-fill", action="store_true", help="time a database filled before")
    parser.add_argument("--check", action="store_true",
                        help="fill, then compare the report's facts with the store's own (small n)")
    args = parser.parse_args()
    servers = None
    url = args.database_url
    if url is None:
        from bench.servers import make_servers

        servers = make_servers()
        servers.start_postgres(durable=False, stat_statements=False)
        url = servers.create_db("report")
    engine = make_engine(url)
    try:
        if args.check:
            migrate.upgrade(engine)
            fill(engine, args.workflows)
            problems = report_fill.check(engine)
            print("\n".join(problems) or f"facts and rollup of {args.workflows:,} workflows agree")
        else:
            run(engine, args.workflows, args.runs, fill_first=not args.no_fill)
    finally:
        engine.dispose()
        if servers is not None:
            servers.close()


def run(engine: Engine, n: int, runs: int, fill_first: bool = True) -> None:
    migrate.upgrade(engine)
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
    if fill_first:
        print(f"PostgreSQL {version}: filling {n:,} workflows")
        began = time.perf_counter()
        fill(engine, n)
        print(f"filled in {time.perf_counter() - began:.0f} s")
    query = reports.ReportQuery(now=utcnow(), flow=FLOW, start=T0, end=T0 + timedelta(days=30))
    scope = Scope(query.now, query.flow, query.start, query.end)
    sections: dict[str, Callable[[Connection], Any]] = {
        "whole report": lambda c: reports.sla_report(c, query),
        "  flows": lambda c: reports.flow_rows(c, scope),
        "  steps": lambda c: reports.step_rows(c, scope, {}),
        "  transitions": lambda c: reports.transition_rows(c, scope),
        "  breaches": lambda c: report_lists.breaches(c, scope, 20),
        "  slowest": lambda c: report_lists.slowest(c, scope, 20),
        "  series": lambda c: report_lists.series(c, scope),
    }
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"PostgreSQL {version}; {runs} runs each, warm; load average {load}")
    print(f"{'':<16} {'wall median':>12} {'wall min':>10} {'CPU median':>12}")
    for name, body in sections.items():
        walls, cpus = timed(engine, body, runs)
        print(f"{name:<16} {statistics.median(walls):11.2f}s {min(walls):9.2f}s "
              f"{statistics.median(cpus):11.2f}s")
    with engine.begin() as conn:
        found = reports.sla_report(conn, query)
    flow = found["flows"][0]
    print(f"report: {flow['started']:,} started, {flow['completed']:,} completed, "
          f"{flow['breached']:,} breached, SLA met {flow['sla_met_pct']} %, "
          f"p50/p95/p99 {flow['duration_seconds']['p50']}/{flow['duration_seconds']['p95']}/"
          f"{flow['duration_seconds']['p99']} s")


if __name__ == "__main__":
    main()
