"""Noticing that Redis lost data: a marker key holds the current epoch, and the server's run id
changes with every restart.

When the marker is gone, Redis lost everything since the last snapshot; every process that
notices re-creates its consumer groups and re-publishes its recent outbox rows (consumers dedupe
by id), so that no workflow waits forever for a message that vanished. When only the run id
changed, Redis restarted from its files (the AOF, `everysec`): the last second or so of writes
before it stopped may be gone, so the rows published since a little before the previous check
are sent again.

What a process saw last is kept in its own database (`baton_redis_seen`), so that a process
started after a loss that happened while none of its kind ran notices it too.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Connection, select

from contracts.streams import Keys
from participants.runtime.db import upsert
from participants.runtime.tables import redis_seen

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


@dataclass(frozen=True)
class Seen:
    """What a process saw of Redis at one check: the epoch marker, the server's run id, and when
    (seconds since the Unix epoch)."""

    epoch: str
    server: str | None
    at: float

    @property
    def at_risk_since(self) -> datetime:
        """After a restart that kept the data, the writes since then may be gone."""
        return datetime.fromtimestamp(self.at - _MARGIN, UTC)


def look(client: redis.Redis, keys: Keys, now: float | None = None) -> Seen:
    return Seen(current(client, keys), run_id(client), time.time() if now is None else now)


def change(before: Seen | None, now: Seen) -> str | None:
    """LOST when the marker changed since `before`, RESTARTED when only the run id did, None
    otherwise (and when nothing was seen before: a first start)."""
    if before is None:
        return None
    if now.epoch != before.epoch:
        return LOST
    if None not in (now.server, before.server) and now.server != before.server:
        return RESTARTED
    return None


def load(conn: Connection, consumer: str, keys: Keys) -> Seen | None:
    """What the processes of `consumer` saw last, as they recorded it."""
    row = conn.execute(select(redis_seen).where(redis_seen.c.consumer == consumer,
                                                redis_seen.c.prefix == keys.prefix)).first()
    if row is None:
        return None
    return Seen(row.epoch, row.run_id, row.checked_at.timestamp())


def save(conn: Connection, consumer: str, keys: Keys, seen: Seen) -> None:
    values = {"epoch": seen.epoch, "run_id": seen.server,
              "checked_at": datetime.fromtimestamp(seen.at, UTC)}
    statement = upsert(conn, redis_seen).values(consumer=consumer, prefix=keys.prefix, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["consumer", "prefix"], set_=values))
