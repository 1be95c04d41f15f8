"""Noticing that Redis lost data: a marker key holds the current epoch, and the server's run id
changes with every restart.

When the marker is gone, Redis lost everything since the last snapshot; every process that
notices re-creates its consumer groups and re-publishes its recent outbox rows (consumers dedupe
by id), so that no workflow waits forever for a message that vanished. When only the run id
changed, Redis restarted from its files (the AOF, `everysec`): the last second or so of writes
before it stopped may be gone, so the rows published since a little before the previous check
are sent again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from contracts.streams import Keys

LOST, RESTARTED = "lost", "restarted"
_MARGIN = 5.0  # seconds before the last check still at risk: the AOF's fsync lag, with room


def current(client: redis.Redis, keys: Keys) -> str:
    """The epoch marker, set (once, whoever comes first) when absent."""
    client.set(keys.epoch(), uuid.uuid4().hex, nx=True)
    value = client.get(keys.epoch())
    return value.decode() if isinstance(value, bytes) else str(value)


def run_id(client: redis.Redis) -> str | None:
    """The server's run id (new at every start); None where INFO is not allowed."""
    try:
        info: Any = client.info("server")
    except redis.ResponseError:
        return None
    found = info.get("run_id")
    return str(found) if found else None


@dataclass
class Watch:
    """Remembers the epoch and the run id seen last. `changed()` is LOST once per loss of Redis
    data, RESTARTED once per restart that kept it, None otherwise; `at_risk_since` is the
    wall-clock time from which writes may be gone after a restart."""

    seen: str | None = None
    server: str | None = None
    checked_at: float = 0.0
    at_risk_since: float = 0.0

    def changed(self, client: redis.Redis, keys: Keys) -> str | None:
        now, server = current(client, keys), run_id(client)
        first = self.seen is None
        lost = not first and now != self.seen
        restarted = not first and not lost and None not in (server, self.server) and server != self.server
        self.at_risk_since = self.checked_at - _MARGIN
        self.seen, self.server, self.checked_at = now, server, time.time()
        return LOST if lost else RESTARTED if restarted else None
