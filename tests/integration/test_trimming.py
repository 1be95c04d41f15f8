"""Stream trimming never removes an entry some consumer group has not read and acknowledged."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from contracts.streams import Keys
from controller.processes.trimming import trim_all


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

    assert trim_all(redis_client, keys, 3600) == 3
    remaining = [e for e, _ in redis_client.xrange(stream)]  # type: ignore[union-attr]
    assert remaining == ids[3:]
    assert redis_client.xpending(stream, "slow")["pending"] == 2

    redis_client.xack(stream, "slow", *ids[3:5])
    assert trim_all(redis_client, keys, 3600) == 2
    redis_client.xreadgroup("slow", "c", {stream: ">"}, count=10)
    redis_client.xack(stream, "slow", *ids[5:])
    assert trim_all(redis_client, keys, 3600) == 5
    assert redis_client.xlen(stream) == 0


def test_a_command_stream_nobody_reads_is_kept_whole(redis_client: redis.Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    stream = keys.command_stream("payment")
    redis_client.xadd(stream, {"n": "old"}, id="1000-0")  # 1970: older than any retention
    for i in range(3):
        redis_client.xadd(stream, {"n": str(i)})
    assert trim_all(redis_client, keys, 1) == 0
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

    assert trim_all(redis_client, keys, 7200) == 0, "all within two hours"
    assert trim_all(redis_client, keys, 1800) == 3
    remaining = [e for e, _ in redis_client.xrange(stream)]  # type: ignore[union-attr]
    assert remaining == recent
