"""Noticing that Redis lost data: a marker key holds the current epoch, and the server's run id
changes with every restart.

When the marker is gone, Redis lost everything since the last snapshot; every process that
notices re-creates its consumer groups and re-publishes its recent outbox rows (consumers dedupe
by id), so that no workflow waits forever for a message that vanished. When only the run id
changed, Redis restarted from its files (the AOF, `everysec`): the last second or so of writes
before it stopped may be gone, so the rows published since a little before the previous check
are sent again.

On a Redis Cluster each primary holds data of its own and may lose it alone: each gets a marker
of its own (a key with a hash tag of a slot it serves), and the epoch is a digest of them all; the
run id is a digest of every primary's, so that a failover (a replica promoted, which may lack the
last writes its primary acknowledged) counts as a restart.

What a process saw last is kept in its own database (`baton_redis_seen`), so that a process
started after a loss that happened while none of its kind ran notices it too.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Connection, select

from contracts.streams import Keys
from participants.runtime import connect
from participants.runtime.db import upsert
from participants.runtime.tables import redis_seen

LOST, RESTARTED = "lost", "restarted"
_MARGIN = 5.0  # seconds before the last check still at risk: the AOF's fsync lag, with room


def current(client: redis.Redis, keys: Keys) -> str:
    """The epoch: the marker of each server that holds data, each set (once, whoever comes
    first) when absent; on a cluster, a digest of the primaries' markers."""
    values = []
    for key in markers(client, keys):
        client.set(key, uuid.uuid4().hex, nx=True)
        value = client.get(key)
        values.append(value.decode() if isinstance(value, bytes) else str(value))
    return values[0] if len(values) == 1 else _digest(values, 16)


def markers(client: redis.Redis, keys: Keys) -> list[str]:
    """The epoch marker's key on each server: one on a single server; on a cluster one per
    primary, the first `Keys.epoch_on(n)` it serves (the same keys while the slots stay put)."""
    if not connect.is_cluster(client):
        return [keys.epoch()]
    found = [connect.key_on(client, name, keys.epoch_on) for name, _ in connect.primaries(client)]
    return sorted((k for k in found if k), key=lambda k: (len(k), k))


def run_id(client: redis.Redis) -> str | None:
    """The server's run id (new at every start), a digest of every primary's on a cluster (new
    at every restart or failover); None where INFO is not allowed."""
    ids = []
    for _, server in connect.primaries(client):
        try:
            info: Any = server.info("server")
        except redis.ResponseError:
            return None
        if not info.get("run_id"):
            return None
        ids.append(str(info["run_id"]))
    return ids[0] if len(ids) == 1 else _digest(ids, 20)


def _digest(values: list[str], size: int) -> str:
    """Fits the columns of `baton_redis_seen` whatever the number of primaries."""
    return hashlib.blake2b(",".join(values).encode(), digest_size=size).hexdigest()


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
