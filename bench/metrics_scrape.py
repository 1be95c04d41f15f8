"""Time of a `/metrics` database reading on a database of many workflows, with and without the
collector's max age (BATON_METRICS_MAX_AGE): `python -m bench.metrics_scrape [--workflows N]`.
SQLite in a temp dir; Redis is not read (an unreachable client: its families are left out)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import insert

from contracts.streams import Keys
from controller.db import migrate
from controller.db.tables import steps, workflows
from controller.reporting.metrics import BatonCollector
from participants.runtime.db import make_engine

STEPS = ("reserve_inventory", "charge_payment", "schedule_shipment", "send_confirmation")


def fill(engine: object, n: int) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for lo in range(0, n, 5000):
            rows = [{"correlation_id": f"wf-{i:07d}", "flow": "order_fulfillment", "flow_version": 1,
                     "status": "completed", "started_at": t0 + timedelta(seconds=i),
                     "finished_at": t0 + timedelta(seconds=i + 3),
                     "deadline": t0 + timedelta(seconds=i + 300),
                     "started_by": "bench", "input": {}, "start_message_id": f"m-{i}"}
                    for i in range(lo, min(n, lo + 5000))]
            conn.execute(insert(workflows), rows)
            conn.execute(insert(steps), [
                {"correlation_id": r["correlation_id"], "name": s, "status": "done",
                 "started_at": r["started_at"], "finished_at": r["finished_at"], "attempts": 1,
                 "completed_seq": k} for r in rows for k, s in enumerate(STEPS)])


def timed(collector: BatonCollector, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        list(collector.collect())
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        migrate.upgrade(engine)
        fill(engine, args.workflows)
        nowhere = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.05)
        keys = Keys("bench")
        every = timed(BatonCollector(engine, nowhere, keys, max_age=0.0), args.runs)
        cached = BatonCollector(engine, nowhere, keys, max_age=10.0)
        first, *rest = timed(cached, args.runs + 1)
        print(f"{args.workflows} workflows, {args.workflows * len(STEPS)} steps, SQLite")
        print(f"max age 0 (every scrape reads): median {statistics.median(every) * 1000:.1f} ms")
        print(f"max age 10 s: first {first * 1000:.1f} ms, then median "
              f"{statistics.median(rest) * 1000:.3f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
