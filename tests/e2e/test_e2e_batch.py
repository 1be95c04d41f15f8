"""End to end: workflows started through `POST /v1/workflows:batch` complete (or compensate)
through the Procfile's real processes, a real Redis and PostgreSQL, each start event once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system import System, order_input

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
    entries: Any = system.redis.xrange(stream)
    assert sorted(f["correlation_id"] for _, f in entries) == sorted(cids)
