"""Noticing that Redis lost its data (restarted empty): a marker key holds the current epoch.

When the marker is gone, Redis lost everything since the last snapshot; every process that
notices re-creates its consumer groups and re-publishes its recent outbox rows (consumers dedupe
by id), so that no workflow waits forever for a message that vanished.
"""

from __future__ import annotations

import uuid

import redis

from contracts.streams import Keys


def current(client: redis.Redis, keys: Keys) -> str:
    """The epoch marker, set (once, whoever comes first) when absent."""
    client.set(keys.epoch(), uuid.uuid4().hex, nx=True)
    value = client.get(keys.epoch())
    return value.decode() if isinstance(value, bytes) else str(value)


class Watch:
    """Remembers the epoch seen last; `changed()` is True once per loss of Redis data."""

    def __init__(self) -> None:
        self.seen: str | None = None

    def changed(self, client: redis.Redis, keys: Keys) -> bool:
        now = current(client, keys)
        lost = self.seen is not None and now != self.seen
        self.seen = now
        return lost
