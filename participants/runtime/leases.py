"""Which partitions of a partitioned event type a consumer reads: within one consumer group, one
consumer at a time per partition, so that the entries of one key are handled in order.

Each consumer beats in a sorted set of its group's members; the live ones (a beat younger than
the lease's TTL) share the partitions round-robin in sorted order. A consumer holds a lease per
partition it reads (`SET NX PX` with its name as the token), renews those of its share, releases
those no longer in it (a new replica took them over), and takes a free one of its share. A
crashed consumer's leases expire after the TTL; whoever takes one over claims the partition's
pending entries and handles them before reading anything new. A consumer restarted under its
name (BATON_CONSUMER) knows its leases by their token: on its first refresh it takes back those of
its share at once and releases the others, instead of leaving every one to expire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from contracts.streams import Keys

# Renew (or release) a lease only while it is still this consumer's.
_MINE = "if redis.call('get', KEYS[1]) == ARGV[1] then "
_RENEW = _MINE + "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = _MINE + "return redis.call('del', KEYS[1]) end return 0"
# Take a free lease, or one already this consumer's (held before it restarted under its name).
_TAKE = (_MINE + "return redis.call('pexpire', KEYS[1], ARGV[2]) end "
         "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end return 0")


def _eval(pipe: Any, script: str, key: str, *args: str) -> None:
    """Queue EVAL of `script` over one key. As a raw command: a cluster's pipeline has no `eval`
    (redis-py's raises), but routes a raw EVAL by its key like any command."""
    pipe.execute_command("EVAL", script, 1, key, *args)


RETRY_TAKE = 0.2  # seconds: how soon a consumer tries again to take a partition of its share


def share(partitions: list[str], live: list[str], consumer: str) -> set[str]:
    """The partitions `consumer` is to read: the i-th (in the order given) goes to the
    (i mod n)-th of the n live consumers, sorted by name."""
    members = sorted(live)
    if consumer not in members:
        members = sorted([*members, consumer])
    return {p for i, p in enumerate(partitions) if members[i % len(members)] == consumer}


@dataclass
class Leases:
    client: redis.Redis
    keys: Keys
    group: str
    consumer: str
    partitions: list[str]  # every partition stream the participant reads, in a fixed order
    ttl: float  # seconds: a crashed consumer's partitions move after this
    owned: set[str] = field(default_factory=set)
    _next: float = 0.0
    _valid_until: float = 0.0  # monotonic: `owned` is trusted until then (half a TTL after a refresh)
    _started: bool = False  # refreshed once: what it held before a restart is sorted out

    def due(self) -> bool:
        return bool(self.partitions) and time.monotonic() >= self._next

    def held(self) -> set[str]:
        """The partitions this consumer may read now. A consumer that could not refresh in time
        (a long batch, a stalled machine) reads none of them until it has: its leases may have
        expired and been taken, and two readers of one partition would break the order per key."""
        return self.owned if time.monotonic() < self._valid_until else set()

    def refresh(self) -> list[str]:
        """Beat, keep this consumer's share and take what of it is free; returns the partitions
        newly taken, in order, whose pending entries the caller handles first."""
        began = time.monotonic()
        self._next = began + self.ttl / 3
        mine = share(self.partitions, self._live(), self.consumer)
        ttl_ms = str(int(self.ttl * 1000))
        keep = [p for p in self.partitions if p in self.owned and p in mine]
        drop = [p for p in self.partitions if p not in mine and (p in self.owned or not self._started)]
        take = [p for p in self.partitions if p in mine and p not in self.owned]
        pipe = self.client.pipeline(transaction=False)
        for p in keep:
            _eval(pipe, _RENEW, self.keys.partition_lease(self.group, p), self.consumer, ttl_ms)
        for p in drop:
            _eval(pipe, _RELEASE, self.keys.partition_lease(self.group, p), self.consumer)
        for p in take:
            _eval(pipe, _TAKE, self.keys.partition_lease(self.group, p), self.consumer, ttl_ms)
        replies: list[Any] = pipe.execute()
        self._started = True
        kept = {p for p, ok in zip(keep, replies[:len(keep)], strict=True) if ok}
        taken = [p for p, ok in zip(take, replies[len(keep) + len(drop):], strict=True) if ok]
        self.owned = kept | set(taken)
        self._valid_until = began + self.ttl / 2  # each lease was set or renewed after `began`
        if len(self.owned) < len(mine):  # its share is still held by the one handing it over:
            self._next = time.monotonic() + min(self.ttl / 3, RETRY_TAKE)  # not idle for a third
        return taken

    def release(self) -> None:
        """On a clean stop: leave the group, free every lease at once for the others."""
        if not self.partitions:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.members(self.group), self.consumer)
        for p in self.owned:
            _eval(pipe, _RELEASE, self.keys.partition_lease(self.group, p), self.consumer)
        pipe.execute()
        self.owned = set()

    def _live(self) -> list[str]:
        now_ms = int(time.time() * 1000)
        key = self.keys.members(self.group)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, {self.consumer: now_ms})
        pipe.zremrangebyscore(key, "-inf", now_ms - int(self.ttl * 1000))
        pipe.zrange(key, 0, -1)
        members: list[Any] = pipe.execute()[2]
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]
