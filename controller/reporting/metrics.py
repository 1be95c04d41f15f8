"""Prometheus metrics, computed from the database and Redis, so that every gunicorn worker and
every process answers the same figures without sharing any in-memory counter. A process reads them
at most every `max_age` seconds (BATON_METRICS_MAX_AGE) and answers scrapes in between from that
reading: /metrics needs no token, and must not let anyone aggregate every table at will.

The counters are counts of rows (a workflow row is never deleted), so they only go up; the
histograms' buckets are counted in SQL, like the SLA report's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import redis
import structlog
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, and_, func, select

from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.domain.statuses import Reason, WorkflowStatus
from controller.reporting import outcomes as o
from controller.reporting.sla import BUCKETS
from controller.reporting.sql import duration, per_row, to_seconds
from participants.runtime.tables import outbox

log = structlog.get_logger("baton.metrics")
w, s = o.w, o.s
UNRESOLVED = (WorkflowStatus.RUNNING, WorkflowStatus.PAUSED, WorkflowStatus.COMPENSATING,
              WorkflowStatus.NEEDS_ATTENTION)


class BatonCollector(Collector):
    def __init__(self, engine: Engine, client: redis.Redis, keys: Keys, max_age: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine, self.redis, self.keys = engine, client, keys
        self.max_age, self.clock = max_age, clock
        self._lock = threading.Lock()  # concurrent scrapes: one reads, the others wait for it
        self._read_at: float | None = None
        self._families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.max_age:
                self._families, self._read_at = self._read(), now
            return iter(self._families)

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily("baton_metrics_source_up",
                               "1 if this scrape could read the source", labels=["source"])
        out: list[Metric] = []
        for source, read in (("database", self._database), ("redis", self._redis)):
            try:
                families, ok = list(read()), 1.0
            except Exception as exc:  # a scrape shows what it can, and says what it could not
                log.warning("metrics source unavailable", source=source, error=repr(exc)[:200])
                families, ok = [], 0.0
            up.add_metric([source], ok)
            out += families
        return [*out, up]

    def _database(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            yield from workflow_families(conn)
            yield from duration_families(conn)
            yield from outbox_families(conn, utcnow())

    def _redis(self) -> Iterator[Metric]:
        yield from stream_families(self.redis, self.keys)
        yield dead_letter_family(self.redis, self.keys)


def build_registry(engine: Engine, client: redis.Redis, keys: Keys,
                   max_age: float = 0.0) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)  # nothing is read until the first scrape
    registry.register(BatonCollector(engine, client, keys, max_age))
    return registry


def workflow_families(conn: Connection) -> list[Metric]:
    finished_late = and_(w.c.status == WorkflowStatus.COMPLETED, w.c.finished_at > w.c.deadline)
    rows = conn.execute(select(
        w.c.flow, w.c.status, func.count().label("n"),
        func.count().filter((w.c.reason == Reason.SLA_BREACHED) | finished_late).label("breached"),
    ).group_by(w.c.flow, w.c.status)).all()
    counters = {name: CounterMetricFamily(f"baton_workflows_{name}", help_, labels=["flow"])
                for name, help_ in (
                    ("started", "Workflows started"),
                    ("completed", "Workflows that completed"),
                    ("compensated", "Workflows compensated after a failure, breach or cancel"),
                    ("breached", "Workflows that breached their SLA"))}
    in_flight = GaugeMetricFamily("baton_workflows_in_flight", "Workflows not finished, by status",
                                  labels=["flow", "status"])
    for flow in sorted({r.flow for r in rows}):
        mine = [r for r in rows if r.flow == flow]
        counters["started"].add_metric([flow], sum(r.n for r in mine))
        counters["completed"].add_metric(
            [flow], sum(r.n for r in mine if r.status == WorkflowStatus.COMPLETED))
        counters["compensated"].add_metric(
            [flow], sum(r.n for r in mine if r.status == WorkflowStatus.COMPENSATED))
        counters["breached"].add_metric([flow], sum(r.breached for r in mine))
        for status in UNRESOLVED:
            in_flight.add_metric([flow, status], sum(r.n for r in mine if r.status == status))
    return [*counters.values(), in_flight]


def duration_families(conn: Connection) -> list[Metric]:
    steps_h = HistogramMetricFamily("baton_step_duration_seconds",
                                    "From a step's prerequisites met to its done event",
                                    labels=["flow", "step"])
    source = s.join(w, s.c.correlation_id == w.c.correlation_id)
    for r in conn.execute(_histogram(o.step_duration(conn), [w.c.flow, s.c.name.label("step")],
                                     source, o.step_done())):
        steps_h.add_metric([r[0], r[1]], *_buckets(r))
    flows_h = HistogramMetricFamily("baton_workflow_duration_seconds",
                                    "From start to completion, of completed workflows",
                                    labels=["flow"])
    done = and_(w.c.status == WorkflowStatus.COMPLETED, w.c.finished_at.is_not(None))
    for r in conn.execute(_histogram(duration(conn, w.c.started_at, w.c.finished_at),
                                     [w.c.flow], w, done)):
        flows_h.add_metric([r[0]], *_buckets(r))
    return [steps_h, flows_h]


def _histogram(d: Any, keys: list[Any], source: Any, where: Any) -> Any:
    rows = per_row(select(*keys, d.label("d")).select_from(source).where(where))
    groups = [rows.c[k.name] for k in keys]
    return select(
        *groups, *(func.count().filter(rows.c.d <= le).label(f"le_{i}")
                   for i, le in enumerate(BUCKETS)),
        func.count().label("n"), func.sum(rows.c.d).label("total"),
    ).group_by(*groups)


def _buckets(row: Any) -> tuple[list[tuple[str, float]], float]:
    cumulative = [(repr(le), row._mapping[f"le_{i}"]) for i, le in enumerate(BUCKETS)]
    return [*cumulative, ("+Inf", row.n)], to_seconds(row.total) or 0.0


def outbox_families(conn: Connection, now: datetime) -> list[Metric]:
    n, oldest = conn.execute(select(func.count(), func.min(outbox.c.created_at))
                             .where(outbox.c.sent_at.is_(None))).one()
    backlog = GaugeMetricFamily(
        "baton_outbox_backlog",
        "Outbox rows not yet marked sent (a kickoff's are marked within 1 s of their XADD)", value=n)
    age = GaugeMetricFamily("baton_outbox_oldest_unsent_seconds",
                            "Age of the oldest unpublished outbox row (0 when none)",
                            value=(now - oldest).total_seconds() if oldest else 0.0)
    return [backlog, age]


def stream_families(client: redis.Redis, keys: Keys) -> list[Metric]:
    pending = GaugeMetricFamily("baton_stream_pending",
                                "Entries delivered to a consumer group and not acknowledged",
                                labels=["stream", "group"])
    lag = GaugeMetricFamily("baton_stream_lag", "Entries not yet delivered to a consumer group",
                            labels=["stream", "group"])
    for pattern in (keys.event_pattern(), keys.command_pattern()):
        for key in sorted(_text(k) for k in client.scan_iter(match=pattern, _type="STREAM")):
            for group in client.xinfo_groups(key):
                info = {_text(k): v for k, v in group.items()}
                labels = [key, _text(info["name"])]
                pending.add_metric(labels, float(info["pending"]))
                if info.get("lag") is not None:  # Redis 7.0+; unknown after some deletions
                    lag.add_metric(labels, float(info["lag"]))
    return [pending, lag]


def dead_letter_family(client: redis.Redis, keys: Keys) -> Metric:
    dead = GaugeMetricFamily("baton_dead_letters", "Entries in a participant's dead-letter stream",
                             labels=["participant"])
    prefix = keys.dead_stream("")
    for key in sorted(_text(k) for k in client.scan_iter(match=keys.dead_pattern(), _type="STREAM")):
        dead.add_metric([key[len(prefix):]], float(client.xlen(key)))
    return dead


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
