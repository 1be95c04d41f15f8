"""A partition consumer restarted under its name (BATON_CONSUMER) knows its leases by their token:
it takes back those of its share at once and releases those of another's share, instead of
leaving every one of them to expire (a TTL during which those partitions were read by no one)."""

from __future__ import annotations

import uuid

import redis

from contracts.streams import Keys
from participants.runtime.leases import Leases

TTL = 30.0  # long: nothing in these tests may wait for a lease to expire


def test_a_consumer_restarted_under_its_name_sorts_out_its_leases_at_once(
        redis_client: redis.Redis) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    partitions = [f"{keys.prefix}:event:x:{n}" for n in range(4)]

    def leases(consumer: str) -> Leases:
        return Leases(redis_client, keys, "g", consumer, partitions, ttl=TTL)

    before = leases("c1")
    assert sorted(before.refresh()) == partitions  # alone: every partition
    restarted, other = leases("c1"), leases("c2")  # `before` is gone, as after a kill -9
    other.refresh()  # c2 beats: half of the partitions are its share, still held by c1's name
    assert restarted.refresh() == partitions[0::2]  # its share back at once, not after the TTL
    assert restarted.held() == set(partitions[0::2])
    assert other.refresh() == partitions[1::2]  # what c1 held of c2's share was let go
    assert leases("c3").refresh() == []  # someone else's name takes nothing
    for p in partitions:
        redis_client.delete(keys.partition_lease("g", p))
    redis_client.delete(keys.members("g"))
