"""End to end: workflows started through `POST /v1/workflows:batch` complete (or compensate)
through the Procfile's real processes, a real Redis and PostgreSQL, each start event once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from controller.cli.client import ClientError
from tests.system import CONTROLLER, ORDER_PARTICIPANTS, System, order_input, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def system(tmp_path: Path, pg_database_url: str, pg_participant_url: str,
           redis_url: str) -> Iterator[System]:
    sys_ = System(tmp_path, pg_database_url, redis_url, pg_participant_url)
    try:
        yield sys_
    finally:
        sys_.close_cleanly()


def test_a_batch_of_starts_runs_through_the_real_processes(system: System) -> None:
    system.start()
    items = [{"flow": "order_fulfillment", "input": order_input(), "idempotency_key": f"k-{i}"}
             for i in range(20)]
    items[7]["input"] = order_input(customer="cust-broke")  # the card is declined
    items.insert(3, {"flow": "order_fulfillment", "input": {"order_id": "no-items"}})
    answer = system.api.call("POST", "/v1/workflows:batch", json={"workflows": items})
    assert answer.status_code == 200, answer.text
    found = answer.json()["items"]
    assert [a["status"] for a in found] == [201] * 3 + [422] + [201] * 17
    cids = [a["workflow"]["correlation_id"] for a in found if a["status"] == 201]
    declined = found[8]["workflow"]["correlation_id"]
    for cid in cids:
        system.wait_status(cid, "compensated" if cid == declined else "completed")
    again = system.api.call("POST", "/v1/workflows:batch", json={"workflows": items}).json()["items"]
    assert [a["status"] for a in again] == [200] * 3 + [422] + [200] * 17
    assert again[0]["workflow"]["status"] == "completed"
    stream = system.keys.event_stream("order.placed")
    time.sleep(6)  # past the relay's grace: a start event published by its writer is not sent again
    # Every XADD the stream ever took, which the clock's trim (at its start, then every 30 s) does
    # not lower: each start event once, none sent again by the relay.
    assert system.redis.xinfo_stream(stream)["entries-added"] == len(cids)
    entries: Any = system.redis.xrange(stream)  # those the trim left: the batch's own
    assert {f["correlation_id"] for _, f in entries} <= set(cids)


@pytest.mark.parametrize("point", ["outbox.before_xadd", "outbox.after_xadd"])
def test_a_web_process_killed_after_the_commit_loses_no_start(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_url: str,
        point: str) -> None:
    """Killed between the commit and the XADD, or between the XADD and marking the rows sent:
    the relay publishes the committed start events (again, in the second case: same ids, which
    the consumers dedupe), and every workflow completes with each effect once."""
    system = System(tmp_path, pg_database_url, redis_url, pg_participant_url)
    try:
        system.procs.start("web", {"BATON_CRASH_POINTS": point})
        system.start(*(n for n in (*CONTROLLER, *ORDER_PARTICIPANTS) if n != "web"))
        wait_until(system.api.ready, 60, "the API to be ready")
        orders = [order_input() for _ in range(5)]
        cids = [f"wf-{o['order_id']}" for o in orders]
        items = [{"flow": "order_fulfillment", "input": o, "correlation_id": cid}
                 for o, cid in zip(orders, cids, strict=True)]
        with pytest.raises(ClientError):  # the worker died before it could answer
            system.api.call("POST", "/v1/workflows:batch", json={"workflows": items})
        for cid in cids:
            system.wait_status(cid, "completed")
        wait_until(lambda: _unsent(system) == 0, 15, "the relay to publish what the web left")
        published = _published(system)
        assert len(published) == 5  # a second copy (after_xadd) is deduped by every consumer
        if point == "outbox.before_xadd":
            assert set(published.values()) == {1}
        for o in orders:
            charges = system.query("payment", "SELECT count(*) FROM payment_ledger WHERE order_id = :o",
                                   o=o["order_id"])
            assert charges[0][0] == 1
    finally:
        system.close_cleanly()


def _published(system: System) -> Counter[str]:
    """How many times each start event is on its stream, by id."""
    entries: Any = system.redis.xrange(system.keys.event_stream("order.placed"))
    return Counter(f["id"] for _, f in entries)


def _unsent(system: System) -> int:
    engine = sa.create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            found: int = conn.execute(sa.text(
                "SELECT count(*) FROM baton_outbox WHERE sent_at IS NULL")).scalar_one()
    finally:
        engine.dispose()
    return found
