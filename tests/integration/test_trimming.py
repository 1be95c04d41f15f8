"""Stream trimming never removes an entry some consumer group has not read and acknowledged."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from config.flows import Catalog, load_catalog
from contracts.registry import default_registry
from contracts.streams import Keys
from controller.processes.trimming import declared_groups, trim_all


def test_trims_to_the_oldest_entry_a_group_still_needs(redis_client: redis.Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    stream = keys.event_stream("order.placed")
    ids: list[Any] = [redis_client.xadd(stream, {"n": str(i)}) for i in range(10)]
    redis_client.xgroup_create(stream, "fast", id="0")
    redis_client.xgroup_create(stream, "slow", id="0")
    redis_client.xreadgroup("fast", "c", {stream: ">"}, count=10)
    redis_client.xack(stream, "fast", *ids)
    redis_client.xreadgroup("slow", "c", {stream: ">"}, count=5)
    redis_client.xack(stream, "slow", *ids[:3])  # 3 and 4 pending, 5..9 unread

    assert trim_all(redis_client, keys, 3600, {}) == 3
    remaining = [e for e, _ in redis_client.xrange(stream)]  # type: ignore[union-attr]
    assert remaining == ids[3:]
    assert redis_client.xpending(stream, "slow")["pending"] == 2

    redis_client.xack(stream, "slow", *ids[3:5])
    assert trim_all(redis_client, keys, 3600, {}) == 2
    redis_client.xreadgroup("slow", "c", {stream: ">"}, count=10)
    redis_client.xack(stream, "slow", *ids[5:])
    assert trim_all(redis_client, keys, 3600, {}) == 5
    assert redis_client.xlen(stream) == 0


def test_a_command_stream_nobody_reads_is_kept_whole(redis_client: redis.Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    stream = keys.command_stream("payment")
    redis_client.xadd(stream, {"n": "old"}, id="1000-0")  # 1970: older than any retention
    for i in range(3):
        redis_client.xadd(stream, {"n": str(i)})
    assert trim_all(redis_client, keys, 1, {}) == 0
    assert redis_client.xlen(stream) == 4


def test_an_event_stream_no_group_reads_keeps_its_retention(redis_client: redis.Redis) -> None:
    """Lifecycle events (`workflow.completed`) read with plain XREAD, or by nobody: without a
    bound they would fill Redis (+67 MB over a 200,000-workflow soak)."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    stream = keys.event_stream("workflow.completed")
    seconds, _ = redis_client.time()
    hour_ago = (seconds - 3600) * 1000
    for i in range(3):  # an hour old
        redis_client.xadd(stream, {"n": str(i)}, id=f"{hour_ago - 10 + i}-0")
    recent = [redis_client.xadd(stream, {"n": str(i)}) for i in range(2)]

    assert trim_all(redis_client, keys, 7200, {}) == 0, "all within two hours"
    assert trim_all(redis_client, keys, 1800, {}) == 3
    remaining = [e for e, _ in redis_client.xrange(stream)]  # type: ignore[union-attr]
    assert remaining == recent


def _order_fulfillment() -> Catalog:
    return load_catalog(default_registry())


def test_a_stream_a_declared_consumer_has_no_group_on_is_kept_whole_until_it_has_read_it(
        redis_client: redis.Redis) -> None:
    """`shipping` reacts to `payment.charged` in order_fulfillment but has not started (or its
    group was not re-created after Redis lost its data): the tracker has read and acknowledged
    every entry, and still they stay, even those older than the retention, until shipping's group
    exists and is done with them."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    declared = declared_groups(_order_fulfillment(), keys)
    stream = keys.event_stream("payment.charged")
    assert {"controller", "shipping", "notification"} <= declared[stream]
    seconds, _ = redis_client.time()
    old = redis_client.xadd(stream, {"n": "old"}, id=f"{(seconds - 7200) * 1000}-0")
    ids: list[Any] = [old, *(redis_client.xadd(stream, {"n": str(i)}) for i in range(4))]
    for group in ("controller", "notification"):
        redis_client.xgroup_create(stream, group, id="0")
        redis_client.xreadgroup(group, "c", {stream: ">"}, count=10)
        redis_client.xack(stream, group, *ids)

    assert trim_all(redis_client, keys, 3600, declared) == 0, "shipping is owed them all"
    assert [e for e, _ in redis_client.xrange(stream)] == ids  # type: ignore[union-attr]

    redis_client.xgroup_create(stream, "shipping", id="0")  # shipping starts: it reads them all
    redis_client.xreadgroup("shipping", "c", {stream: ">"}, count=10)
    redis_client.xack(stream, "shipping", *ids[:3])
    assert trim_all(redis_client, keys, 3600, declared) == 3
    assert [e for e, _ in redis_client.xrange(stream)] == ids[3:]  # type: ignore[union-attr]


def test_a_command_stream_whose_declared_participant_has_no_group_is_kept_whole(
        redis_client: redis.Redis) -> None:
    """Another group on `payment`'s command stream (a tap, a test) does not let the trim take
    what `payment`, declared by the flow and not started yet, is owed."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    stream = keys.command_stream("payment")
    ids: list[Any] = [redis_client.xadd(stream, {"n": str(i)}) for i in range(3)]
    redis_client.xgroup_create(stream, "tap", id="0")
    redis_client.xreadgroup("tap", "c", {stream: ">"}, count=10)
    redis_client.xack(stream, "tap", *ids)

    assert trim_all(redis_client, keys, 1, declared_groups(_order_fulfillment(), keys)) == 0
    assert redis_client.xlen(stream) == 3
