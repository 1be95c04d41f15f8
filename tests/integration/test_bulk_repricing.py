"""The `bulk_repricing` reference flow in-process (the REST API through Flask's test client, the
tracker, pricing, catalog and search polled by hand) on real Redis and both databases: one
approval for the batch, the canary, the rest over partitioned streams, the progress the API shows,
and a failed canary walked back to `compensated`."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, update

from contracts.envelope import decode_fields, new_event
from contracts.streams import partition_of
from controller.reporting import render_text as report_text
from participants.reference import catalog, pricing, repricing, search
from participants.runtime.loop import Runtime
from tests.cluster import ON_CLUSTER
from tests.integration.test_price_change import OPERATOR, STARTER, World, running


@pytest.fixture
def world(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[World]:
    with running(database_url, redis_url, tmp_path) as made:
        yield made


def batch(skus: list[str], **extra: Any) -> dict[str, Any]:
    return {"repricing_id": f"r-{uuid.uuid4().hex[:8]}", "category": "shoes", "currency": "EUR",
            "canary_percent": 10, "failure_threshold_percent": 10,
            "changes": [{"sku": s, "current_price": 20.0, "price": 18.0} for s in skus], **extra}


def start(world: World, data: dict[str, Any]) -> str:
    r = world.client.post("/v1/workflows", json={"flow": "bulk_repricing", "input": data},
                          headers={"Authorization": f"Bearer {STARTER}"})
    assert r.status_code == 201, r.get_json()
    cid: str = r.get_json()["correlation_id"]
    return cid


def sku_events(world: World, message_type: str, cid: str) -> dict[str, list[tuple[int, Any]]]:
    """Each SKU's events of `message_type`, with the partition each was read from."""
    found: dict[str, list[tuple[int, Any]]] = {}
    for n, stream in enumerate(world.keys.event_streams(message_type)):
        entries: Any = world.raw.xrange(stream)
        for _, fields in entries:
            event = decode_fields(fields)
            if event.correlation_id == cid:
                found.setdefault(event.data["sku"], []).append((n, event))
    return found


def prices_in(world: World, table: Any, skus: list[str]) -> dict[str, float]:
    with world.services.engine.connect() as conn:
        rows = conn.execute(select(table.c.product_id, table.c.price)
                            .where(table.c.product_id.in_(skus))).all()
    return {r.product_id: pricing.amount(r.price) for r in rows}


def test_a_batch_is_approved_once_canaried_and_rolled_out_over_partitions(world: World) -> None:
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(40)]
    cid = start(world, batch(skus))
    world.drain()
    wf = world.workflow(cid)
    assert wf["status"] == "running" and world.steps(cid)["approve"] == "active"
    assert wf["progress"] is None  # nothing published before the approval
    assert world.signal(cid, "approve").status_code == 200
    world.drain()
    wf = world.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("completed", None), wf
    assert set(world.steps(cid).values()) == {"done"}
    assert wf["progress"] == {"skus": 40, "published": 40, "done": 40, "failed": 0, "reverted": 0}
    published = sku_events(world, "sku_price.published", cid)
    assert sorted(published) == sorted(skus)
    for sku, events in published.items():  # on the partition the rule names, once
        assert [n for n, _ in events] == [partition_of(sku, 16)]
    assert len({n for events in published.values() for n, _ in events}) > 8
    assert world.raw.xlen(world.keys.event_stream("sku_price.published")) == 0
    [canary] = world.emitted("repricing.canary_passed", cid)
    assert canary.data["progress"]["done"] == 4  # 10 % of 40, judged before the rest went out
    # in between, a report at each tenth answered while others were awaited, which the tracker
    # recorded (the API's progress is the latest of these and the milestones)
    reports = [m["data"]["progress"]["done"] for m in world.timeline(cid)
               if m["type"] == "repricing.progress"]
    assert reports == [8, 12, 16, 20, 24, 28, 32, 36]
    assert prices_in(world, catalog.products, skus) == dict.fromkeys(skus, 18.0)
    assert prices_in(world, search.index, skus) == dict.fromkeys(skus, 18.0)
    r = world.client.get("/v1/reports/sla?flow=bulk_repricing",
                         headers={"Authorization": f"Bearer {OPERATOR}", "Accept": "application/json"})
    assert r.status_code == 200
    assert r.get_json()["progress"] == [{"flow": "bulk_repricing", "workflows": 1, "skus": 40,
                                         "published": 40, "done": 40, "failed": 0, "reverted": 0}]


def test_a_canary_failing_past_its_threshold_is_reverted_and_the_workflow_compensated(
        world: World) -> None:
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(40)]
    skus[1] = f"DISC-{uuid.uuid4().hex[:6]}"  # the catalog refuses a discontinued product
    cid = start(world, batch(skus))
    world.drain()
    world.signal(cid, "approve")
    world.drain()
    wf = world.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("compensated", "step_failed"), wf
    steps = world.steps(cid)
    assert (steps["watch_canary"], steps["publish_rest"]) == ("failed", "pending")
    assert wf["compensations"][0]["command"] == "repricing.revert_canary"
    assert wf["progress"] == {"skus": 40, "published": 4, "done": 3, "failed": 1, "reverted": 4}
    [failed] = world.emitted("repricing.canary_failed", cid)
    assert failed.data["failure_rate_percent"] == 25.0
    assert sorted(sku_events(world, "sku_price.reverted", cid)) == sorted(skus[:4])
    assert sorted(sku_events(world, "sku_price.published", cid)) == sorted(skus[:4])
    live = [s for s in skus[:4] if not s.startswith("DISC-")]
    assert prices_in(world, catalog.products, live) == dict.fromkeys(live, 20.0)  # restored
    assert prices_in(world, search.index, live) == dict.fromkeys(live, 20.0)


def test_a_batch_listing_a_sku_twice_is_rejected_before_any_approval(world: World) -> None:
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(5)]
    cid = start(world, batch([*skus, skus[0]]))
    world.drain()
    wf = world.workflow(cid)
    assert wf["status"] == "compensated" and world.steps(cid)["evaluate_batch"] == "failed"
    [evaluated] = world.emitted("repricing.evaluated", cid)
    assert evaluated.data["violations"] == [f"{skus[0]} is listed twice"]


def test_the_start_input_is_checked_against_the_declared_schema(world: World) -> None:
    r = world.client.post("/v1/workflows", json={"flow": "bulk_repricing", "input": batch([])},
                          headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 422
    assert "changes" in str(r.get_json()["errors"])
    for watch in (-1, 301, "5"):  # seconds, 0 to 300 (within watch_canary's 600 s SLA)
        r = world.client.post("/v1/workflows", json={
            "flow": "bulk_repricing", "input": batch(["BULK-W"], watch_seconds=watch)},
            headers={"Authorization": f"Bearer {OPERATOR}"})
        assert r.status_code == 422 and "watch_seconds" in str(r.get_json()["errors"]), r.get_json()


def reports(world: World) -> tuple[str, list[dict[str, str]], str]:
    """The SLA report of bulk_repricing as text (the CLI's summary), CSV rows and HTML."""
    def get(accept: str) -> Any:
        r = world.client.get("/v1/reports/sla?flow=bulk_repricing",
                             headers={"Authorization": f"Bearer {OPERATOR}", "Accept": accept})
        assert r.status_code == 200, r.data[:500]
        return r
    text = report_text.summary(get("application/json").get_json())
    table = list(csv.DictReader(io.StringIO(get("text/csv").get_data(as_text=True))))
    return text, table, get("text/html").get_data(as_text=True)


def progress_shown(world: World, skus: int, published: int, done: int, failed: int,
                   reverted: int) -> None:
    text, table, html = reports(world)
    counts = [1, skus, published, done, failed, reverted]
    assert re.search(r"^bulk_repricing\s+" + r"\s+".join(map(str, counts)) + r"$", text, re.M), text
    [row] = [r for r in table if r["level"] == "progress"]
    assert [row[k] for k in ("flow", "workflows", "skus", "published", "done", "failed",
                             "reverted")] == ["bulk_repricing", *map(str, counts)]
    cells = "".join(f"<td>{n}</td>" for n in counts)
    assert f'<td class="name">bulk_repricing</td>{cells}' in html.split('id="progress"')[1], html


def test_the_text_csv_and_html_reports_show_a_repricings_progress_in_flight_and_finished(
        world: World) -> None:
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(40)]
    cid = start(world, batch(skus))
    world.drain()
    world.signal(cid, "approve")
    world.drain("controller", "pricing")  # the canary is out; the catalog has not answered yet
    assert world.workflow(cid)["status"] == "running"
    progress_shown(world, skus=40, published=4, done=0, failed=0, reverted=0)
    world.drain()
    assert world.workflow(cid)["status"] == "completed"
    progress_shown(world, skus=40, published=40, done=40, failed=0, reverted=0)


# -- the canary's watch window --------------------------------------------------------------------

# Seconds: longer than the drain that brings every canary answer in takes (much longer on a
# cluster, whose consumers read slot by slot), so that the tests see the window still open.
WATCH = 8.0 if ON_CLUSTER else 2.0


def drained_until(world: World, found: Any, what: str, timeout: float = 30.0) -> Any:
    """Drain the runtimes (their timers tick as they poll) until `found()` is truthy."""
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        world.drain()
        time.sleep(0.05)
    return result


def watched(world: World, skus: list[str], watch: float = WATCH) -> tuple[str, float]:
    """A batch of `skus` approved with a watch window; every canary SKU has answered: its cid,
    and when the last of those answers was emitted."""
    cid = start(world, batch(skus, watch_seconds=watch))
    world.drain()
    world.signal(cid, "approve")
    world.drain()
    answers = sku_events(world, "catalog.sku_price_applied", cid)
    assert len(answers) == 4, answers  # the canary, 10 % of 40, all applied
    return cid, max(e.occurred_at.timestamp() for events in answers.values() for _, e in events)


def test_the_watch_window_holds_the_canarys_verdict_until_it_ends(world: World) -> None:
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(40)]
    cid, last_answer = watched(world, skus)
    assert world.steps(cid)["watch_canary"] == "active"
    assert world.emitted("repricing.canary_passed", cid) == []  # answered, but watched
    [passed] = drained_until(world, lambda: world.emitted("repricing.canary_passed", cid),
                             "the window to end")
    assert passed.occurred_at.timestamp() - last_answer >= WATCH
    drained_until(world, lambda: world.workflow(cid)["status"] == "completed", "the rollout")
    assert world.workflow(cid)["progress"] == {"skus": 40, "published": 40, "done": 40,
                                               "failed": 0, "reverted": 0}


def the_batch(world: World, cid: str) -> Any:
    return world.one(select(repricing.batches).where(repricing.batches.c.correlation_id == cid))


def rejected_later(world: World, cid: str, sku: str, repricing_id: str) -> None:
    """The catalog reports, after it applied it, that a canary SKU's price failed."""
    event = new_event("catalog.sku_price_rejected", {
        "repricing_id": repricing_id, "sku": sku, "reason": "shoppers saw the wrong price"},
        correlation_id=cid, source="catalog")
    world.raw.xadd(world.keys.stream_of(event.type, event.data), event.to_fields())  # type: ignore[arg-type]


def test_a_failure_reported_inside_the_window_fails_the_canary(world: World) -> None:
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(40)]
    cid, _ = watched(world, skus, watch=300)  # ended below, once the failure is counted
    [evaluated] = world.emitted("repricing.evaluated", cid)
    rejected_later(world, cid, skus[2], evaluated.data["repricing_id"])
    drained_until(world, lambda: the_batch(world, cid).canary_failed == 1, "the failure counted")
    assert world.emitted("repricing.canary_failed", cid) == []  # still watched
    with world.services.engine.begin() as conn:  # the window's end is data: bring it forward
        conn.execute(update(repricing.batches).where(repricing.batches.c.correlation_id == cid)
                     .values(watch_until=datetime.now(UTC)))
    [failed] = drained_until(world, lambda: world.emitted("repricing.canary_failed", cid),
                             "the window to end")
    assert failed.data["failure_rate_percent"] == 25.0
    drained_until(world, lambda: world.workflow(cid)["status"] == "compensated", "the revert")
    assert world.workflow(cid)["progress"] == {"skus": 40, "published": 4, "done": 3,
                                               "failed": 1, "reverted": 4}
    assert sorted(sku_events(world, "sku_price.reverted", cid)) == sorted(skus[:4])
    rejected_later(world, cid, skus[3], evaluated.data["repricing_id"])  # after: not counted
    world.drain()
    assert world.workflow(cid)["progress"]["failed"] == 1


def test_a_window_open_across_a_restart_is_decided_once_by_two_new_replicas(world: World) -> None:
    """The window's end is in pricing's table: the copy that opened it is gone (its runtime and
    every memory of it), and two new replicas of pricing on the same database, one of them that
    copy restarted under its name (so it takes its partitions' leases back at once), decide it
    once."""
    skus = [f"BULK-{uuid.uuid4().hex[:6]}-{n:03d}" for n in range(40)]
    cid, _ = watched(world, skus)
    options = dataclasses.replace(world.runtimes["pricing"].options)
    del world.runtimes["pricing"]
    for name in ("test", "pricing-b"):
        replica = Runtime(repricing.build(), world.services.engine, world.raw, world.keys, options,
                          consumer=name)
        replica.participant.adopt_registry(world.services.registry)
        replica.setup()
        world.runtimes[f"pricing-{name}"] = replica
    drained_until(world, lambda: world.workflow(cid)["status"] == "completed", "the rollout")
    assert len(world.emitted("repricing.canary_passed", cid)) == 1
    assert len(world.emitted("repricing.completed", cid)) == 1


def test_a_pricing_database_made_before_the_watch_window_gets_its_columns_at_setup(
        database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            pricing.metadata.create_all(conn)
            for name in ("watch_seconds", "watch_until", "watch_cause"):  # as an older pricing made it
                conn.exec_driver_sql(f"ALTER TABLE pricing_repricings DROP COLUMN {name}")
        with engine.begin() as conn:
            repricing.build().on_setup(conn)  # type: ignore[misc]
        with engine.begin() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("pricing_repricings")}
            assert {"watch_seconds", "watch_until", "watch_cause"} <= columns
            repricing.build().on_setup(conn)  # type: ignore[misc]  # and again: nothing to add
    finally:
        engine.dispose()
