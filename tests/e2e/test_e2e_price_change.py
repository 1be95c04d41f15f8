"""End to end, `price_change`: the Procfile's real processes (controller, pricing, catalog, search) on
a real Redis and PostgreSQL, driven through the REST API, asserting on the workflows and on the
participants' own tables; and `bulk_repricing`'s canary watch window across a kill -9 of pricing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.conftest import _pg_schema_url
from tests.system import CONTROLLER, TOKENS, System, wait_until

pytestmark = pytest.mark.slow
PRICING = ("pricing", "catalog", "search")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, _pg_admin: Engine,
           redis_url: str) -> Iterator[System]:
    """One system for the module: each test works on its own products and workflows."""
    schema = contextlib.contextmanager(_pg_schema_url)
    with schema(_pg_admin) as database_url, schema(_pg_admin) as participant_url:
        sys_ = System(tmp_path_factory.mktemp("price_change"), database_url, redis_url,
                      participant_url)
        try:
            sys_.start(*CONTROLLER, *PRICING)
            yield sys_
        finally:
            sys_.close_cleanly()


def change(product_id: str | None = None, current: float = 10.0, proposed: float = 11.0,
           unit_cost: float = 6.0, **extra: Any) -> dict[str, Any]:
    return {"change_id": f"chg-{uuid.uuid4().hex[:8]}",
            "product_id": product_id or f"P-{uuid.uuid4().hex[:8]}", "current_price": current,
            "proposed_price": proposed, "unit_cost": unit_cost, "currency": "EUR", **extra}


def start(system: System, data: dict[str, Any]) -> str:
    return system.start_order(flow="price_change", input=data)


def signal(system: System, cid: str, name: str, token: str = TOKENS["operator"]) -> Any:
    return system.http.post(f"{system.base}/v1/workflows/{cid}/signals/{name}",
                            json={"reason": f"{name} by the pricing manager"},
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)


def prices(system: System, product_id: str) -> tuple[Any, Any, Any]:
    """(pricing's price, the catalog's, the search index's), in cents; None where absent."""
    def one(participant: str, sql: str) -> Any:
        rows = system.query(participant, sql, p=product_id)
        return rows[0][0] if rows else None
    return (one("pricing", "SELECT price FROM pricing_prices WHERE product_id = :p"),
            one("catalog", "SELECT price FROM catalog_products WHERE product_id = :p"),
            one("search", "SELECT price FROM search_index WHERE product_id = :p"))


def test_a_clean_change_is_published_and_propagated(system: System) -> None:
    data = change(current=20.0, proposed=23.0, unit_cost=10.0, competitor_price=22.0)
    cid = start(system, data)
    wf = system.wait_status(cid, "completed")
    assert system.steps(wf) == {"evaluate_rules": "done", "approve": "skipped", "publish_price": "done",
                                "update_catalog": "done", "update_search": "done"}
    assert prices(system, data["product_id"]) == (2300, 2300, 2300)
    found = system.http.get(f"{system.base}/v1/workflows",
                            params={"flow": "price_change", "change_id": data["change_id"]}).json()
    assert [w["correlation_id"] for w in found["items"]] == [cid]
    timeline = system.timeline(cid)
    published = next(m for m in timeline if m["type"] == "price.published")
    for answer in ("catalog.price_updated", "search.price_indexed"):  # reactions, not commands
        assert next(m for m in timeline if m["type"] == answer)["causation_id"] == published["id"]
    assert [m["type"] for m in timeline if m["kind"] == "command"] == ["price.evaluate", "price.publish"]


def test_a_soft_violation_waits_for_approval_and_is_approved(system: System) -> None:
    data = change(current=10.0, proposed=12.5)  # +25 %
    cid = start(system, data)
    wait_until(lambda: system.steps(system.workflow(cid))["approve"] == "active", 30,
               "the approval to wait")
    assert system.workflow(cid)["status"] == "running"
    assert prices(system, data["product_id"]) == (None, None, None)
    assert signal(system, cid, "approve", TOKENS["viewer"]).status_code == 403
    r = signal(system, cid, "approve")
    assert r.status_code == 200, r.text
    wf = system.wait_status(cid, "completed")
    assert system.steps(wf)["approve"] == "done"
    assert prices(system, data["product_id"]) == (1250, 1250, 1250)
    audit = system.http.get(f"{system.base}/v1/workflows/{cid}/audit").json()["items"]
    assert [(a["actor"], a["action"]) for a in audit] == [("operator-user", "signal")]


def test_a_soft_violation_rejected_by_the_operator_is_compensated(system: System) -> None:
    data = change(current=10.0, proposed=11.5, competitor_price=10.0)  # 15 % above the competitor
    cid = start(system, data)
    wait_until(lambda: system.steps(system.workflow(cid))["approve"] == "active", 30,
               "the approval to wait")
    r = signal(system, cid, "reject")
    assert r.status_code == 200, r.text
    wf = system.wait_status(cid, "compensated")
    assert wf["reason"] == "step_failed"
    assert system.steps(wf)["approve"] == "failed"
    assert system.steps(wf)["publish_price"] == "pending"
    assert prices(system, data["product_id"]) == (None, None, None)
    assert signal(system, cid, "approve").status_code == 409


def test_a_hard_violation_is_rejected(system: System) -> None:
    data = change(current=10.0, proposed=6.0, unit_cost=6.0)  # below the margin floor
    cid = start(system, data)
    wf = system.wait_status(cid, "compensated")
    assert wf["reason"] == "step_failed"
    assert system.steps(wf)["evaluate_rules"] == "failed"
    assert wf["compensations"] == []
    evaluated = next(m for m in system.timeline(cid) if m["type"] == "price.evaluated")
    assert evaluated["data"]["verdict"] == "reject"
    assert [m["type"] for m in system.timeline(cid) if m["kind"] == "command"] == ["price.evaluate"]
    assert prices(system, data["product_id"]) == (None, None, None)


def test_a_catalog_failure_rolls_the_change_back(system: System) -> None:
    data = change(product_id="DISC-e2e", current=40.0, proposed=44.0, unit_cost=20.0)
    cid = start(system, data)
    # settled: compensated, with the publish walked back (were the catalog's failure tracked before
    # the publish, the workflow would be compensated first and compensate the late publish after)
    wf = wait_until(lambda: (w := system.workflow(cid))["status"] == "compensated"
                    and system.steps(w)["publish_price"] == "compensated" and w, 30,
                    "the publish to be walked back")
    assert wf["reason"] == "step_failed"
    assert system.steps(wf)["update_catalog"] == "failed"
    assert [(c["step"], c["command"], c["status"]) for c in wf["compensations"]] == [
        ("publish_price", "price.revert", "done")]
    # search reacts to price.reverted on its own: it ends at the old price, whatever the order
    wait_until(lambda: prices(system, data["product_id"]) == (4000, None, 4000), 30,
               "search to re-index the old price")
    history = system.query("pricing", "SELECT kind, new_price, revision FROM pricing_history "
                           "WHERE change_id = :c ORDER BY revision", c=data["change_id"])
    assert [tuple(h) for h in history] == [("publish", 4400, 1), ("revert", 4000, 2)]
    types = [m["type"] for m in system.timeline(cid)]
    assert types.index("catalog.price_update_failed") < types.index("price.revert") \
        < types.index("price.reverted")


def test_a_repricing_canary_watched_across_a_kill_9_of_pricing_is_decided_once(
        system: System) -> None:
    """bulk_repricing's watch window is data: pricing killed with kill -9 while it runs decides
    the canary once restarted, when the window ends, and the rollout completes."""
    skus = [f"W-{uuid.uuid4().hex[:6]}-{n:02d}" for n in range(20)]
    cid = system.start_order(flow="bulk_repricing", input={
        "repricing_id": f"r-{uuid.uuid4().hex[:8]}", "category": "shoes", "currency": "EUR",
        "canary_percent": 10, "watch_seconds": 4,
        "changes": [{"sku": s, "current_price": 20.0, "price": 18.0} for s in skus]})
    wait_until(lambda: system.steps(system.workflow(cid))["approve"] == "active", 30, "approval")
    assert signal(system, cid, "approve").status_code == 200
    opened = wait_until(lambda: system.query(
        "pricing", "SELECT watch_until FROM pricing_repricings WHERE correlation_id = :c "
        "AND watch_until IS NOT NULL AND phase = 'canary'", c=cid), 30, "the window to open")
    system.procs.kill("pricing")  # while it is watching: the verdict is not out
    system.procs.start("pricing")
    wf = system.wait_status(cid, "completed", timeout=60)
    assert wf["progress"] == {"skus": 20, "published": 20, "done": 20, "failed": 0, "reverted": 0}
    [passed] = [m for m in system.timeline(cid) if m["type"] == "repricing.canary_passed"]
    assert datetime.fromisoformat(passed["occurred_at"].replace("Z", "+00:00")) >= opened[0][0]
