"""The `price_change` reference flow: its three participants through the runtime, and the whole
flow in-process (the REST API through Flask's test client, the tracker and the participants polled
by hand) on real Redis and both databases. Its rules, pure: tests/unit/test_price_change.py."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select

from contracts.envelope import COMMAND, Envelope, decode_fields, new_command, new_event
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.service.bootstrap import Services
from participants.reference import build, catalog, pricing, search
from participants.runtime.loop import Options, Runtime
from tests.harness import running_app
from tests.unit.test_price_change import PARTICIPANTS, change

OPERATOR, STARTER = "t-olga", "t-stan"
TOKENS = f"olga:operator:{OPERATOR},stan:starter:{STARTER}"


# -- the system, in-process ------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    """The controller (API and tracker) and the three participants on one Redis and one database."""

    client: FlaskClient
    services: Services
    keys: Keys
    raw: redis.Redis
    runtimes: dict[str, Runtime]

    # the REST API

    def start(self, data: dict[str, Any], token: str = STARTER) -> str:
        r = self.client.post("/v1/workflows", json={"flow": "price_change", "input": data},
                             headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.get_json()
        cid: str = r.get_json()["correlation_id"]
        return cid

    def signal(self, cid: str, name: str, token: str = OPERATOR, **body: Any) -> Any:
        body.setdefault("reason", f"{name}d by the pricing manager")
        return self.client.post(f"/v1/workflows/{cid}/signals/{name}", json=body,
                                headers={"Authorization": f"Bearer {token}"})

    def workflow(self, cid: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/workflows/{cid}", headers={"Authorization": f"Bearer {OPERATOR}"})
        assert r.status_code == 200, r.get_json()
        found: dict[str, Any] = r.get_json()
        return found

    def steps(self, cid: str) -> dict[str, str]:
        return {s["name"]: s["status"] for s in self.workflow(cid)["steps"]}

    def timeline(self, cid: str) -> list[dict[str, Any]]:
        r = self.client.get(f"/v1/workflows/{cid}/timeline?limit=500",
                            headers={"Authorization": f"Bearer {OPERATOR}"})
        assert r.status_code == 200
        items: list[dict[str, Any]] = r.get_json()["items"]
        return items

    # the streams

    def drain(self, *names: str) -> None:
        """Poll the tracker and the participants (or only `names`) until a round handles nothing."""
        runtimes = [self.runtimes[n] for n in names or self.runtimes]
        for _ in range(50):
            if sum(rt.poll() for rt in runtimes) == 0:
                return
        raise AssertionError("the runtimes never went quiet")

    def send(self, envelope: Envelope) -> Envelope:
        stream = (self.keys.command_stream(envelope.target or "") if envelope.kind == COMMAND
                  else self.keys.event_stream(envelope.type))
        self.raw.xadd(stream, envelope.to_fields())  # type: ignore[arg-type]
        return envelope

    def emitted(self, message_type: str, cid: str | None = None) -> list[Envelope]:
        entries: Any = self.raw.xrange(self.keys.event_stream(message_type))
        found = [decode_fields(f) for _, f in entries]
        return [e for e in found if cid is None or e.correlation_id == cid]

    def commands(self, participant: str, cid: str) -> list[Envelope]:
        entries: Any = self.raw.xrange(self.keys.command_stream(participant))
        return [e for e in (decode_fields(f) for _, f in entries) if e.correlation_id == cid]

    # the participants' own state

    def one(self, query: Any) -> Any:
        with self.services.engine.connect() as conn:
            return conn.execute(query).first()

    def listed(self, product_id: str) -> tuple[float, int] | None:
        row = self.one(select(pricing.prices).where(pricing.prices.c.product_id == product_id))
        return (pricing.amount(row.price), row.revision) if row else None

    def in_catalog(self, product_id: str) -> tuple[float | None, int] | None:
        row = self.one(select(catalog.products).where(catalog.products.c.product_id == product_id))
        return (pricing.amount(row.price) if row.price is not None else None, row.revision) \
            if row else None

    def indexed(self, product_id: str) -> tuple[float, int] | None:
        row = self.one(select(search.index).where(search.index.c.product_id == product_id))
        return (pricing.amount(row.price), row.revision) if row else None


@contextlib.contextmanager
def running(database_url: str, redis_url: str, tmp_path: Path,
            flows_dir: Path | None = None) -> Iterator[World]:
    extra = {"BATON_PARTICIPANT_DATABASE_URL": database_url,
             **({"BATON_FLOWS_DIRS": str(flows_dir)} if flows_dir else {})}
    with running_app(database_url, redis_url, tmp_path, TOKENS, extra=extra) as app:
        options = Options(visibility_timeout=30.0, block_ms=1, linger_ms=0)
        runtimes = {name: app.runtime_of(name, options, "test") for name in ("controller", *PARTICIPANTS)}
        yield World(app.client, app.services, app.keys, app.raw, runtimes)


@pytest.fixture
def world(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[World]:
    with running(database_url, redis_url, tmp_path) as made:
        yield made


def test_a_clean_change_is_published_and_propagated(world: World) -> None:
    data = change(current=20.0, proposed=22.0, unit_cost=12.0, competitor=21.0)
    cid = world.start(data)
    world.drain()
    wf = world.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("completed", None)
    assert world.steps(cid) == {"evaluate_rules": "done", "approve": "skipped",
                                "publish_price": "done", "update_catalog": "done",
                                "update_search": "done"}
    assert wf["search_attributes"] == {"change_id": data["change_id"], "product_id": data["product_id"]}
    product = data["product_id"]
    assert world.listed(product) == (22.0, 1)
    assert world.in_catalog(product) == (22.0, 1)
    assert world.indexed(product) == (22.0, 1)
    [published] = world.emitted("price.published", cid)
    assert published.data == {"change_id": data["change_id"], "product_id": product, "price": 22.0,
                              "previous_price": 20.0, "currency": "EUR", "revision": 1}
    [evaluate_cmd] = world.commands("pricing", cid)[:1]
    assert evaluate_cmd.type == "price.evaluate" and evaluate_cmd.data["proposed_price"] == 22.0
    # choreography at the edge: catalog and search answer the published event, not the controller
    by_type = {m["type"]: m for m in world.timeline(cid)}
    assert by_type["catalog.price_updated"]["causation_id"] == published.id
    assert by_type["search.price_indexed"]["causation_id"] == published.id
    assert [m["type"] for m in world.timeline(cid) if m["kind"] == "command"] == [
        "price.evaluate", "price.publish"]


def test_a_soft_violation_waits_for_approval_then_is_approved_and_propagated(world: World) -> None:
    data = change(current=10.0, proposed=13.0, unit_cost=6.0)  # +30 %: review
    cid = world.start(data)
    world.drain()
    wf = world.workflow(cid)
    assert wf["status"] == "running"
    assert world.steps(cid) == {"evaluate_rules": "done", "approve": "active",
                                "publish_price": "pending", "update_catalog": "pending",
                                "update_search": "pending"}
    [evaluated] = world.emitted("price.evaluated", cid)
    assert evaluated.data["verdict"] == "review"
    assert [v["rule"] for v in evaluated.data["violations"]] == ["increase_limit"]
    assert world.listed(data["product_id"]) is None  # nothing published while it waits
    assert world.commands("pricing", cid)[-1].type == "price.evaluate"

    assert world.signal(cid, "approve", token=STARTER).status_code == 403
    r = world.signal(cid, "approve", data={"approved_by": "olga"})
    assert r.status_code == 200, r.get_json()
    assert {s["name"]: s["status"] for s in r.get_json()["steps"]}["approve"] == "done"
    world.drain()
    assert world.workflow(cid)["status"] == "completed"
    assert world.steps(cid)["approve"] == "done"
    product = data["product_id"]
    assert world.listed(product) == world.in_catalog(product) == world.indexed(product) == (13.0, 1)
    [approved] = world.emitted("price.approved", cid)
    assert approved.source == "controller" and approved.data["approved_by"] == "olga"
    publish = world.commands("pricing", cid)[-1]
    assert publish.type == "price.publish" and publish.causation_id == approved.id
    assert world.signal(cid, "approve").status_code == 409  # nothing waits any more


def test_a_soft_violation_rejected_by_the_operator_publishes_nothing(world: World) -> None:
    data = change(current=10.0, proposed=11.5, unit_cost=6.0, competitor=9.0)  # above competitor
    cid = world.start(data)
    world.drain()
    assert world.steps(cid)["approve"] == "active"
    r = world.signal(cid, "reject", data={"note": "we do not lead the market up"})
    assert r.status_code == 200, r.get_json()
    world.drain()
    wf = world.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("compensated", "step_failed")
    assert world.steps(cid) == {"evaluate_rules": "done", "approve": "failed",
                                "publish_price": "pending", "update_catalog": "pending",
                                "update_search": "pending"}
    assert wf["compensations"] == []  # nothing was done that needs undoing
    assert [c.type for c in world.commands("pricing", cid)] == ["price.evaluate"]
    assert world.listed(data["product_id"]) is None
    assert world.emitted("price.rejected", cid)[0].data["note"] == "we do not lead the market up"


def test_a_hard_violation_is_rejected_and_nothing_is_published(world: World) -> None:
    data = change(current=10.0, proposed=5.0, unit_cost=5.0)  # below cost + 5 %
    cid = world.start(data)
    world.drain()
    wf = world.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("compensated", "step_failed")
    steps = world.steps(cid)
    assert (steps["evaluate_rules"], steps["update_catalog"], steps["update_search"]) == (
        "failed", "pending", "pending")
    assert steps["publish_price"] == "pending"
    assert wf["compensations"] == []
    [evaluated] = world.emitted("price.evaluated", cid)
    assert evaluated.data["verdict"] == "reject"
    assert [v["rule"] for v in evaluated.data["violations"]] == ["margin_floor"]
    # a verdict, not a glitch: the evaluation is not retried
    assert [c.type for c in world.commands("pricing", cid)] == ["price.evaluate"]
    assert world.emitted("price.published", cid) == []
    assert world.listed(data["product_id"]) is None
    assert world.signal(cid, "approve").status_code == 409


def test_a_stale_proposal_is_rejected(world: World) -> None:
    cid = world.start(change(product_id="SKU-001", current=10.0, proposed=10.5))  # listed at 11.50
    world.drain()
    assert world.workflow(cid)["status"] == "compensated"
    [evaluated] = world.emitted("price.evaluated", cid)
    assert evaluated.data["violations"][0]["detail"] == "the current price is 11.50 EUR, not 10.00 EUR"
    assert world.listed("SKU-001") == (11.5, 1)


def test_a_catalog_failure_walks_the_published_change_back(world: World) -> None:
    product = "DISC-777"
    data = change(product_id=product, current=30.0, proposed=33.0, unit_cost=10.0)
    cid = world.start(data)
    world.drain()
    wf = world.workflow(cid)
    assert (wf["status"], wf["reason"]) == ("compensated", "step_failed")
    steps = world.steps(cid)
    assert (steps["publish_price"], steps["update_catalog"]) == ("compensated", "failed")
    assert steps["update_search"] in ("done", "active")  # search indexed it, or had not yet
    assert [(c["step"], c["command"], c["status"]) for c in wf["compensations"]] == [
        ("publish_price", "price.revert", "done")]
    [failed] = world.emitted("catalog.price_update_failed", cid)
    assert failed.data["reason"] == f"product {product} is discontinued: its price cannot change"
    [reverted] = world.emitted("price.reverted", cid)
    assert reverted.data == {"change_id": data["change_id"], "product_id": product, "price": 30.0,
                             "currency": "EUR", "revision": 2, "restored": True}
    assert world.listed(product) == (30.0, 2)        # back to the old price
    assert world.indexed(product) == (30.0, 2)       # search re-indexed it on its own
    assert world.in_catalog(product) == (None, 0)    # the catalog never took it
    revert = [c for c in world.commands("pricing", cid) if c.type == "price.revert"]
    assert len(revert) == 1 and revert[0].data["reason"] == "step_failed"
    with world.services.engine.connect() as conn:
        kinds = conn.execute(select(pricing.history.c.kind, pricing.history.c.new_price)
                             .where(pricing.history.c.change_id == data["change_id"])
                             .order_by(pricing.history.c.revision)).all()
    assert [tuple(k) for k in kinds] == [("publish", 3300), ("revert", 3000)]


def test_an_approval_left_waiting_can_be_cancelled(world: World) -> None:
    cid = world.start(change(current=10.0, proposed=20.0))
    world.drain()
    r = world.client.post(f"/v1/workflows/{cid}/cancel", json={"reason": "withdrawn"},
                          headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 200
    world.drain()
    assert (world.workflow(cid)["status"], world.workflow(cid)["reason"]) == ("compensated", "cancelled")
    assert world.signal(cid, "approve").status_code == 409


# -- each participant on its own, through the runtime ----------------------------------------------


def proposed_event(data: dict[str, Any], cid: str | None = None) -> Envelope:
    return new_event("price.change_proposed", data, correlation_id=cid or f"wf-{uuid.uuid4().hex[:10]}",
                     source="test")


def command(message_type: str, data: dict[str, Any], cause: Envelope, attempt: int = 1) -> Envelope:
    made = new_command(message_type, data, target="pricing", correlation_id=cause.correlation_id,
                       causation_id=cause.id, deadline=utcnow() + timedelta(seconds=30),
                       source="controller")
    return dataclasses.replace(made, attempt=attempt)


def price_event(message_type: str, cause: Envelope, price: float, revision: int,
                **extra: Any) -> Envelope:
    data = {"change_id": cause.data["change_id"], "product_id": cause.data["product_id"],
            "price": price, "currency": "EUR", "revision": revision, **extra}
    return new_event(message_type, data, correlation_id=cause.correlation_id,
                     causation_id=cause.id, source="pricing")


def test_pricing_evaluates_once_publishes_once_and_reverts_once(world: World) -> None:
    start = proposed_event(change(product_id="P-1", current=10.0, proposed=11.0))
    evaluate_cmd = world.send(command("price.evaluate", start.data, start))
    world.drain("pricing")
    world.send(dataclasses.replace(evaluate_cmd, attempt=2))  # a retried attempt: the same verdict
    world.drain("pricing")
    assert [e.data["verdict"] for e in world.emitted("price.evaluated")] == ["accept", "accept"]

    publish_cmd = world.send(command("price.publish", start.data, start))
    world.drain("pricing")
    world.send(dataclasses.replace(publish_cmd, attempt=2))
    world.send(publish_cmd)  # a redelivered entry: processed once
    world.drain("pricing")
    published = world.emitted("price.published")
    assert len(published) == 2 and published[0].data == published[1].data
    assert published[0].data["revision"] == 1 and world.listed("P-1") == (11.0, 1)

    revert_data = {**published[0].data, "reason": "step_failed"}
    revert_cmd = world.send(command("price.revert", revert_data, published[0]))
    world.drain("pricing")
    world.send(dataclasses.replace(revert_cmd, attempt=2))
    world.drain("pricing")
    reverted = world.emitted("price.reverted")
    assert [e.data for e in reverted] == [{"change_id": start.data["change_id"], "product_id": "P-1",
                                           "price": 10.0, "currency": "EUR", "revision": 2,
                                           "restored": True}] * 2
    assert world.listed("P-1") == (10.0, 2)
    world.send(dataclasses.replace(publish_cmd, attempt=3))  # a late publish attempt changes nothing
    world.drain("pricing")
    assert world.emitted("price.published")[-1].data == published[0].data
    assert world.listed("P-1") == (10.0, 2)


def test_a_revert_keeps_a_price_that_a_later_change_replaced(world: World) -> None:
    first = proposed_event(change(product_id="P-2", current=10.0, proposed=11.0))
    second = proposed_event(change(product_id="P-2", current=11.0, proposed=12.0))
    for start in (first, second):
        world.send(command("price.evaluate", start.data, start))
        world.drain("pricing")
        world.send(command("price.publish", start.data, start))
        world.drain("pricing")
    assert world.listed("P-2") == (12.0, 2)
    published = world.emitted("price.published")[0]
    world.send(command("price.revert", {**published.data, "reason": "cancelled"}, published))
    world.drain("pricing")
    reverted = world.emitted("price.reverted")[-1]
    assert (reverted.data["restored"], reverted.data["price"], reverted.data["revision"]) == (False, 12.0, 2)
    assert world.listed("P-2") == (12.0, 2)


def test_pricing_refuses_to_publish_a_rejected_change_and_to_revert_an_unpublished_one(
        world: World) -> None:
    start = proposed_event(change(current=10.0, proposed=1.0, unit_cost=5.0))
    world.send(command("price.publish", start.data, start))  # never evaluated
    world.drain("pricing")
    world.send(command("price.evaluate", start.data, start))
    world.drain("pricing")
    world.send(command("price.publish", start.data, start))
    world.send(command("price.revert", {**start.data, "reason": "x"}, start))
    world.drain("pricing")
    reasons = [e.data["reason"] for e in world.emitted("price.publish_failed")]
    cid_change = start.data["change_id"]
    assert reasons == [f"change {cid_change} was never evaluated",
                       f"change {cid_change} was rejected by the rules"]
    assert [e.data["reason"] for e in world.emitted("price.revert_failed")] == [
        f"nothing was published for change {cid_change}"]
    assert world.listed(start.data["product_id"]) is None


def test_read_models_keep_the_newest_revision_whatever_the_order(world: World) -> None:
    start = proposed_event(change(product_id="SKU-005", current=17.5, proposed=19.0))
    published = price_event("price.published", start, 19.0, 2, previous_price=17.5)
    reverted = price_event("price.reverted", start, 17.5, 3, restored=True)
    world.send(reverted)  # the walk-back overtakes the publication
    world.drain("catalog", "search")
    world.send(published)
    world.send(published)  # and a duplicate entry
    world.drain("catalog", "search")
    assert world.in_catalog("SKU-005") == (17.5, 3)
    assert world.indexed("SKU-005") == (17.5, 3)
    indexed = world.emitted("search.price_indexed")
    assert [(e.data["price"], e.data["revision"]) for e in indexed] == [(17.5, 3), (17.5, 3)]
    assert [e.causation_id for e in indexed] == [reverted.id, published.id]
    updated = world.emitted("catalog.price_updated")
    assert [(e.data["price"], e.data["revision"]) for e in updated] == [(17.5, 3), (17.5, 3)]


def test_the_catalog_refuses_a_discontinued_product_and_ignores_its_walk_back(world: World) -> None:
    for product in ("DISC-001", "DISC-new"):
        start = proposed_event(change(product_id=product))
        world.send(price_event("price.published", start, 11.0, 1, previous_price=10.0))
        world.drain("catalog")
        world.send(price_event("price.reverted", start, 10.0, 2, restored=True))
        world.drain("catalog")
        assert world.in_catalog(product) == (None, 0)
    failures = world.emitted("catalog.price_update_failed")
    assert [e.data["reason"] for e in failures] == [
        "product DISC-001 is discontinued: its price cannot change",
        "product DISC-new is discontinued: its price cannot change"]
    assert world.emitted("catalog.price_updated") == []


def test_setup_seeds_once_and_never_resets(world: World) -> None:
    start = proposed_event(change(product_id="SKU-002", current=13.0, proposed=14.0))
    world.send(command("price.evaluate", start.data, start))
    world.send(command("price.publish", start.data, start))
    world.drain("pricing")
    for name in ("pricing", "catalog"):  # a second process runs setup again
        Runtime(build(name), world.services.engine, world.raw, world.keys, consumer="c2").setup()
    assert world.listed("SKU-002") == (14.0, 2)
    assert world.listed("SKU-020") == (40.0, 1)
    assert world.in_catalog("DISC-002") == (None, 0)
    with world.services.engine.connect() as conn:
        status = conn.execute(select(catalog.products.c.status)
                              .where(catalog.products.c.product_id == "DISC-002")).scalar_one()
    assert status == "discontinued"


# -- the engine around skipped and failed steps ----------------------------------------------------


def test_a_command_after_a_skipped_approval_is_caused_by_a_real_message(world: World) -> None:
    cid = world.start(change())
    world.drain()
    ids = {m["id"] for m in world.timeline(cid)}
    publish = [c for c in world.commands("pricing", cid) if c.type == "price.publish"]
    assert publish and publish[0].causation_id in ids, publish[0].causation_id


def test_steps_after_a_rejecting_verdict_stay_pending(world: World) -> None:
    cid = world.start(change(current=10.0, proposed=5.0, unit_cost=5.0))
    world.drain()
    assert world.workflow(cid)["status"] == "compensated"
    steps = world.steps(cid)
    assert (steps["approve"], steps["publish_price"]) == ("pending", "pending"), steps


GATED_FLOW = """
name: price_gate
version: 1
start_event: price.change_proposed
steps:
  - name: evaluate
    participant: pricing
    reacts_to: [price.change_proposed]
    done_on: price.evaluated
  - name: approve
    kind: approval
    participant: operator
    reacts_to: [price.change_proposed]
    when: {currency: USD}
    done_on: price.approved
    failed_on: price.rejected
  - name: publish
    participant: pricing
    reacts_to: [price.approved, price.evaluated]
    done_on: price.published
"""


@pytest.fixture
def gated_world(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[World]:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "price_gate.yaml").write_text(GATED_FLOW)
    with running(database_url, redis_url, tmp_path, flows) as made:
        yield made


def test_a_step_joining_a_skipped_step_and_a_later_event_activates(gated_world: World) -> None:
    w = gated_world
    r = w.client.post("/v1/workflows", json={"flow": "price_gate", "input": change()},
                      headers={"Authorization": f"Bearer {STARTER}"})
    cid = r.get_json()["correlation_id"]
    w.drain("controller")
    assert w.steps(cid) == {"evaluate": "active", "approve": "skipped", "publish": "pending"}
    start = w.emitted("price.change_proposed", cid)[0]
    w.send(new_event("price.evaluated", {**start.data, "verdict": "accept", "violations": []},
                     correlation_id=cid, causation_id=start.id, source="pricing"))
    w.drain("controller")
    assert w.steps(cid)["publish"] == "active"
