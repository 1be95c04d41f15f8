"""What differs on a Redis Cluster (tests/cluster.py, 3 primaries): a consumer's streams fall in
several hash slots and it reads them all, one XREADGROUP per slot; each primary keeps an epoch
marker of its own, so that one primary losing its data is noticed; trimming and the re-drive reach
every primary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from marshmallow import Schema

from contracts.envelope import Envelope, new_event
from contracts.payloads import Registry
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.processes.trimming import trim_all
from participants.runtime import connect, epoch, outbox
from participants.runtime.db import create_tables, make_engine
from participants.runtime.loop import Options, Runtime
from participants.runtime.participant import Context, Participant
from participants.runtime.tables import metadata as runtime_metadata

TYPES = ("probe.one", "probe.two", "probe.three", "probe.four")  # in four different slots


def registry() -> Registry:
    made = Registry()
    for t in TYPES:
        made.register(t, Schema())
    return made


@pytest.fixture
def client(redis_cluster_url: str) -> Iterator[redis.Redis]:
    made = connect.connect(redis_cluster_url)
    yield made
    made.close()


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:8]}")


def spread(client: redis.Redis, keys: Keys) -> set[str]:
    """The primaries that serve the event streams of TYPES under `keys`."""
    cluster: Any = client
    return {cluster.get_node_from_key(keys.event_stream(t)).name for t in TYPES}


def test_a_consumer_reads_its_streams_in_every_slot(client: redis.Redis, keys: Keys,
                                                    tmp_path: Path) -> None:
    while len(spread(client, keys)) < 2:  # one prefix in thirty puts all four on one primary
        keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    assert len(connect.by_slot(client, [keys.event_stream(t) for t in TYPES])) == len(TYPES)
    seen: list[str] = []
    probe = Participant("probe", registry=registry())
    for t in TYPES:
        @probe.on_event(t)
        def handle(message: Envelope, ctx: Context) -> list[Envelope]:
            seen.append(message.type)
            return []
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    options = Options(block_ms=50, linger_ms=0, visibility_timeout=0.5)
    runtime = Runtime(probe, engine, client, keys, options, consumer="c1")
    try:
        runtime.setup()
        for t in TYPES:
            event = new_event(t, {}, correlation_id=f"wf-{t}", source="test")
            client.xadd(keys.event_stream(t), event.to_fields())  # type: ignore[arg-type]
        for _ in range(20):
            if len(seen) == len(TYPES):
                break
            runtime.poll()
        assert sorted(seen) == sorted(TYPES)
        for t in TYPES:  # acknowledged on each slot
            assert client.xpending(keys.event_stream(t), "probe")["pending"] == 0
    finally:
        engine.dispose()


def test_each_primary_has_a_marker_and_one_losing_it_is_a_loss(client: redis.Redis,
                                                               keys: Keys) -> None:
    markers = epoch.markers(client, keys)
    cluster: Any = client
    assert len({cluster.get_node_from_key(k).name for k in markers}) == 3 == len(markers)
    before = epoch.look(client, keys)
    assert len(before.epoch) == 32 and before.server and len(before.server) == 40
    assert epoch.change(before, epoch.look(client, keys)) is None
    client.delete(markers[1])  # as when that primary restarts empty: its keys are gone
    assert epoch.change(before, epoch.look(client, keys)) == epoch.LOST


def test_trimming_and_the_redrive_reach_every_primary(client: redis.Redis, keys: Keys,
                                                      tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/outbox.db")
    try:
        create_tables(engine, runtime_metadata)
        events = [new_event(t, {}, correlation_id=f"wf-{i}", source="test")
                  for i in range(3) for t in TYPES]
        with engine.begin() as conn:
            pending = outbox.enqueue(conn, keys, events, utcnow())
        outbox.publish(engine, client, pending)  # one cluster pipeline over four slots
        for t in TYPES:
            stream = keys.event_stream(t)
            assert client.xlen(stream) == 3
            client.xgroup_create(stream, "g", id="0")
            read: Any = client.xreadgroup("g", "c", {stream: ">"})
            client.xack(stream, "g", *[i for i, _ in read[0][1]])
        assert trim_all(client, keys, 3600, {}) == 3 * len(TYPES)

        since = utcnow() - timedelta(minutes=1)
        assert outbox.republish_since(engine, client, since) == 3 * len(TYPES)
        assert all(client.xlen(keys.event_stream(t)) == 3 for t in TYPES)
    finally:
        engine.dispose()
