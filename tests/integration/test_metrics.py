"""`GET /metrics` as a workflow goes through its life: started, in flight, completed; stream lag and
pending entries, the outbox backlog and dead letters; on real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, insert

from contracts.envelope import new_event
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.reporting.metrics import BatonCollector
from controller.service.bootstrap import Services
from participants.runtime.loop import Options, Runtime
from participants.runtime.tables import outbox
from tests.harness import running_app

FLOW = "order_fulfillment"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Baton:
    http: FlaskClient
    services: Services
    keys: Keys
    raw: redis.Redis
    tracker: Runtime

    def scrape(self) -> Samples:
        response = self.http.get("/metrics")  # no token: public, like /healthz
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain; version=0.0.4")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.get_data(as_text=True))
                for s in family.samples}

    def start(self) -> dict[str, Any]:
        body = {"flow": FLOW, "input": {
            "order_id": f"ord-{uuid.uuid4().hex[:6]}", "customer_id": "c-1", "total_amount": 10.0,
            "currency": "EUR", "items": [{"product_id": "SKU-1", "quantity": 1, "unit_price": 10.0}]}}
        response = self.http.post("/v1/workflows", json=body,
                                  headers={"Authorization": "Bearer t-otto"})
        assert response.status_code == 201, response.get_json()
        started: dict[str, Any] = response.get_json()
        return started

    def emit(self, message_type: str, cid: str, data: dict[str, Any], source: str) -> None:
        event = new_event(message_type, data, correlation_id=cid, source=source)
        self.raw.xadd(self.keys.event_stream(message_type), event.to_fields())  # type: ignore[arg-type]

    def drain(self) -> None:
        for _ in range(50):
            if self.tracker.poll() == 0:
                return
        raise AssertionError("the tracker never went quiet")


@pytest.fixture
def baton(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Baton]:
    # every scrape reads afresh: these tests follow figures from one step to the next
    with running_app(database_url, redis_url, tmp_path, "otto:operator:t-otto",
                     extra={"BATON_METRICS_MAX_AGE": "0"}) as app:
        tracker = app.runtime_of("controller", Options(block_ms=1, linger_ms=0, visibility_timeout=30.0),
                                 "metrics-test")
        yield Baton(app.client, app.services, app.keys, app.raw, tracker)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_a_workflow_through_its_life(baton: Baton) -> None:
    placed = baton.keys.event_stream("order.placed")
    before = baton.scrape()
    assert value(before, "baton_workflows_started_total", flow=FLOW) == 0
    assert value(before, "baton_metrics_source_up", source="database") == 1
    assert value(before, "baton_metrics_source_up", source="redis") == 1

    workflow = baton.start()
    cid, order_id = workflow["correlation_id"], workflow["input"]["order_id"]
    started = baton.scrape()
    assert value(started, "baton_workflows_started_total", flow=FLOW) == 1
    assert value(started, "baton_workflows_in_flight", flow=FLOW, status="running") == 1
    assert value(started, "baton_workflows_completed_total", flow=FLOW) == 0
    assert value(started, "baton_stream_lag", stream=placed, group="controller") == 1
    # Published right after the commit, marked sent by the next kickoff or within 1 s (unmarked.py).
    deadline = time.monotonic() + 5
    while value(baton.scrape(), "baton_outbox_backlog") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value(baton.scrape(), "baton_outbox_backlog") == 0

    baton.drain()
    read = baton.scrape()
    assert value(read, "baton_stream_lag", stream=placed, group="controller") == 0
    assert value(read, "baton_stream_pending", stream=placed, group="controller") == 0

    baton.emit("inventory.reserved", cid, {"order_id": order_id, "reservations": [
        {"reservation_id": "r-1", "product_id": "SKU-1", "quantity": 1}]}, "inventory")
    baton.emit("payment.charged", cid, {"order_id": order_id, "payment_id": "p-1", "amount": 10.0,
                                        "currency": "EUR"}, "payment")
    baton.drain()
    baton.emit("shipment.scheduled", cid, {"order_id": order_id, "shipment_id": "s-1",
                                           "estimated_delivery": "2026-12-01"}, "shipping")
    baton.drain()

    done = baton.scrape()
    assert value(done, "baton_workflows_completed_total", flow=FLOW) == 1
    assert value(done, "baton_workflows_started_total", flow=FLOW) == 1
    assert value(done, "baton_workflows_in_flight", flow=FLOW, status="running") == 0
    assert value(done, "baton_workflows_breached_total", flow=FLOW) == 0
    step = {"flow": FLOW, "step": "schedule_shipment"}
    assert value(done, "baton_step_duration_seconds_count", **step) == 1
    assert value(done, "baton_step_duration_seconds_bucket", le="+Inf", **step) == 1
    assert value(done, "baton_step_duration_seconds_bucket", le="1800.0", **step) == 1
    assert value(done, "baton_workflow_duration_seconds_count", flow=FLOW) == 1
    assert value(done, "baton_step_duration_seconds_count", flow=FLOW, step="send_confirmation") == 0


def test_outbox_backlog_and_dead_letters(baton: Baton) -> None:
    with baton.services.engine.begin() as conn:
        conn.execute(insert(outbox).values(message_id="m-1", stream="x", fields={},
                                           created_at=utcnow()))
    baton.raw.xadd(baton.keys.dead_stream("inventory"), {"id": "m-2"})
    baton.raw.xadd(baton.keys.dead_stream("inventory"), {"id": "m-3"})
    samples = baton.scrape()
    assert value(samples, "baton_outbox_backlog") == 1
    assert value(samples, "baton_outbox_oldest_unsent_seconds") >= 0
    assert value(samples, "baton_dead_letters", participant="inventory") == 2


def test_a_scrape_without_redis_still_shows_the_database(baton: Baton) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    collector = BatonCollector(baton.services.engine, unreachable, baton.keys)
    families = {f.name: f for f in collector.collect()}
    assert "baton_workflows_started" in families
    up = {s.labels["source"]: s.value for s in families["baton_metrics_source_up"].samples}
    assert up == {"database": 1.0, "redis": 0.0}


def test_openmetrics_when_the_scraper_asks_for_it(baton: Baton) -> None:
    response = baton.http.get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_the_openapi_document_describes_both_formats_with_no_token(baton: Baton) -> None:
    operation = baton.http.get("/v1/openapi.json").get_json()["paths"]["/metrics"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {
        "text/plain", "application/openmetrics-text"}
    assert operation["security"] == [], "public, like /healthz"


def test_scrapes_within_the_max_age_read_the_database_once(database_url: str, redis_url: str,
                                                            tmp_path: Path) -> None:
    """The default: a scrape is read at most every BATON_METRICS_MAX_AGE seconds per process, so
    that a scraper (no token needed) cannot make the database aggregate every table at will."""
    statements: list[str] = []
    with running_app(database_url, redis_url, tmp_path, "otto:operator:t-otto") as app:
        assert app.settings.metrics_max_age == 10.0
        event.listen(app.services.engine, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))
        baton = Baton(app.client, app.services, app.keys, app.raw, None)  # type: ignore[arg-type]
        first = baton.scrape()
        assert statements, "the first scrape reads the database"
        statements.clear()
        baton.start()
        statements.clear()
        again = [baton.scrape() for _ in range(5)]
        assert statements == [], "within the max age, the figures are the first scrape's"
        assert all(value(s, "baton_workflows_started_total", flow=FLOW)
                   == value(first, "baton_workflows_started_total", flow=FLOW) == 0 for s in again)


def test_a_scrape_after_the_max_age_reads_afresh(baton: Baton) -> None:
    now = [1000.0]
    collector = BatonCollector(baton.services.engine, baton.raw, baton.keys, max_age=10.0,
                               clock=lambda: now[0])

    def started() -> float:
        families = {f.name: f for f in collector.collect()}
        return sum(s.value for s in families["baton_workflows_started"].samples
                   if s.name.endswith("_total"))

    assert started() == 0
    baton.start()
    now[0] += 9.9
    assert started() == 0, "still the cached figures"
    now[0] += 0.2
    assert started() == 1
