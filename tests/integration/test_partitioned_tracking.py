"""The tracker reads a partitioned type as any participant does: a step whose done event is
partitioned is done when that event arrives on its partition; one appended to another partition,
or to the type's unpartitioned stream, is dead-lettered, not recorded. In-process, on real Redis
and both databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.envelope import new_event
from participants.runtime.loop import Options
from tests.harness import App, running_app

OPERATOR = "t-olga"
FLOW = """
name: touch
version: 1
start_event: touch.requested
steps:
  - name: touch
    participant: toucher
    reacts_to: [touch.requested]
    done_on: touch.done
messages:
  touch.requested:
    schema: {type: object, required: [sku], properties: {sku: {type: string}}}
  touch.done:
    partition_by: sku
    partitions: 4
    schema: {type: object, required: [sku], properties: {sku: {type: string}}}
"""


@pytest.fixture
def app(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[App]:
    with running_app(database_url, redis_url, tmp_path, f"olga:operator:{OPERATOR}",
                     flows={"touch": FLOW}, quiet=True) as made:
        yield made


def _start(app: App, sku: str) -> str:
    r = app.client.post("/v1/workflows", json={"flow": "touch", "input": {"sku": sku}},
                        headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 201, r.get_json()
    cid: str = r.get_json()["correlation_id"]
    return cid


def _status(app: App, cid: str) -> Any:
    r = app.client.get(f"/v1/workflows/{cid}", headers={"Authorization": f"Bearer {OPERATOR}"})
    return r.get_json()["status"]


def test_the_tracker_reads_the_partitions_and_refuses_a_misplaced_entry(app: App) -> None:
    tracker = app.runtime_of("controller", Options(visibility_timeout=30.0, block_ms=1,
                                                   linger_ms=0), "test")
    assert len([s for s in app.keys.event_streams("touch.done")]) == 4
    sku = f"SKU-{uuid.uuid4().hex[:6]}"
    good, misplaced = _start(app, sku), _start(app, sku)
    right = app.keys.stream_of("touch.done", {"sku": sku})
    wrong = next(s for s in app.keys.event_streams("touch.done") if s != right)
    for cid, stream in ((good, right), (misplaced, wrong), (misplaced, app.keys.event_stream("touch.done"))):
        event = new_event("touch.done", {"sku": sku}, correlation_id=cid, source="toucher",
                          causation_id=cid)
        app.raw.xadd(stream, event.to_fields())  # type: ignore[arg-type]
    while tracker.poll():
        pass
    assert _status(app, good) == "completed"
    assert _status(app, misplaced) == "running"
    dead: Any = app.raw.xrange(app.keys.dead_stream("controller"))
    reasons = sorted(f[b"dead_stream"].decode() for _, f in dead)
    assert reasons == sorted([wrong]), reasons  # the unpartitioned stream is not read at all
