"""What keeping the SLA report's facts costs the write path, on PostgreSQL.

    .venv/bin/python -m bench.report_write                      # starts a private PostgreSQL
    .venv/bin/python -m bench.report_write --database-url URL   # an empty database of yours

Drives `order_fulfillment` workflows through the store as the API and the tracker do (start:
insert and record the start event; then each of the four participants' events: lock, record,
load, apply, save), one transaction each, in rounds that alternate with and without the
report's bookkeeping (`report_store`'s three hooks made no-ops), and compares wall time, the
client's CPU and the PostgreSQL backend's CPU per workflow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from bench.report import _cpu_seconds
from config.flows import load_catalog
from contracts.envelope import new_event
from contracts.registry import default_registry
from contracts.timefmt import utcnow
from controller.db import migrate
from controller.domain import lifecycle
from controller.reporting import store as report_store
from controller.service import track as tracker
from controller.service.unit_of_work import UnitOfWork
from participants.runtime.db import make_engine

EVENTS = (("inventory.reserved", "inventory", 0), ("payment.charged", "payment", 0),
          ("shipment.scheduled", "shipping", 1), ("notification.sent", "notification", 2))


def one_workflow(engine: Engine, catalog: Any, registry: Any) -> None:
    flow = catalog.latest("order_fulfillment")
    cid, now = f"bench-{uuid.uuid4().hex[:16]}", utcnow()
    data = {"order_id": cid, "customer_id": "c-1", "amount": 10.0, "currency": "EUR", "items": []}
    start = new_event(flow.start_event, data, correlation_id=cid, source="controller")
    with engine.begin() as conn:
        uow = UnitOfWork(conn, catalog, registry, now)
        uow.lock([cid])
        wf, _ = lifecycle.start(flow, cid, start.id, data, now)
        uow.add(wf, {"started_by": "bench", "input": data}, {}, early=True)
        uow.emit(start)
        uow.flush()
    causes = [start.id]
    for i, (message_type, source, cause) in enumerate(EVENTS):
        message = new_event(message_type, {}, correlation_id=cid, source=source,
                            causation_id=causes[cause])
        causes.append(message.id)
        with engine.begin() as conn:
            tracker.track(catalog, registry, conn, [message], now + timedelta(milliseconds=100 * (i + 1)))


@contextmanager
def without_report() -> Iterator[None]:
    saved = {name: getattr(report_store, name)
             for name in ("workflows_saved", "messages_recorded", "recorded_and_saved", "workflow_inserted")}
    for name in saved:
        setattr(report_store, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(report_store, name, fn)


def measure(engine: Engine, body: Callable[[], None], n: int) -> tuple[float, float, float]:
    """ms per workflow: wall, client CPU, backend CPU (the pool's one connection)."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    backend, client, began = _cpu_seconds(pid), time.process_time(), time.perf_counter()
    for _ in range(n):
        body()
    return tuple(1000 * x / n for x in (time.perf_counter() - began, time.process_time() - client,
                                        _cpu_seconds(pid) - backend))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: start one)")
    parser.add_argument("--workflows", type=int, default=300, help="per round")
    parser.add_argument("--rounds", type=int, default=6, help="alternating, with and without")
    args = parser.parse_args()
    servers, url = None, args.database_url
    if url is None:
        from bench.servers import make_servers

        servers = make_servers()
        servers.start_postgres(durable=True, stat_statements=False)
        url = servers.create_db("report_write")
    engine = make_engine(url, pool_size=1)
    try:
        migrate.upgrade(engine)
        registry = default_registry()
        catalog = load_catalog(registry)
        body = lambda: one_workflow(engine, catalog, registry)  # noqa: E731
        for _ in range(20):
            body()  # warm up
        found: dict[str, list[tuple[float, float, float]]] = {"with": [], "without": []}
        for r in range(args.rounds):
            if r % 2:
                with without_report():
                    found["without"].append(measure(engine, body, args.workflows))
            else:
                found["with"].append(measure(engine, body, args.workflows))
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{args.rounds} rounds of {args.workflows} workflows (5 transactions each); "
              f"load average {load}")
        print(f"{'':<22} {'wall ms/wf':>11} {'client CPU':>11} {'backend CPU':>12}")
        for name, rows in found.items():
            print(f"{'report bookkeeping ' + name:<22} " + " ".join(
                f"{statistics.median(col):11.2f}" for col in zip(*rows, strict=True)))
    finally:
        engine.dispose()
        if servers is not None:
            servers.close()


if __name__ == "__main__":
    main()
