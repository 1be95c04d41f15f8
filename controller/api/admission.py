"""Admission control for kickoffs: while the consumers are far behind, new work is refused (429)
instead of piling up in Redis, whose memory is what an overload would exhaust.

The backlog is the most any consumer group of an event or command stream still has to process:
entries not yet delivered to it (`lag`, Redis 7.0) plus those delivered and not acknowledged.
It is measured at most once a second per process, so a flood costs Redis a few calls a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import structlog

from contracts.streams import Keys
from controller.domain.errors import Overloaded

log = structlog.get_logger("baton.admission")
RETRY_AFTER_SECONDS = 2


class Admission:
    def __init__(self, client: redis.Redis, keys: Keys, limit: int, ttl: float = 1.0) -> None:
        self.client, self.keys, self.limit, self.ttl = client, keys, limit, ttl
        self._lock = threading.Lock()
        self._measured_at = float("-inf")
        self._backlog = 0

    def check(self) -> None:
        """Raise `Overloaded` when the backlog is over the limit; admit when it cannot be read
        (the outbox holds what Redis cannot take, and the kickoff's own publish will say so)."""
        backlog = self.backlog()
        if backlog > self.limit:
            raise Overloaded(f"the system is {backlog} messages behind (limit {self.limit}); "
                             "retry shortly", RETRY_AFTER_SECONDS)

    def backlog(self) -> int:
        with self._lock:
            if time.monotonic() - self._measured_at >= self.ttl:
                try:
                    self._backlog = measure(self.client, self.keys)
                except redis.RedisError as exc:
                    log.warning("backlog unreadable; admitting", error=repr(exc)[:200])
                    self._backlog = 0
                self._measured_at = time.monotonic()
            return self._backlog


def measure(client: redis.Redis, keys: Keys) -> int:
    """One SCAN per pattern, then every stream's groups in one round trip (a stream deleted
    meanwhile answers an error, skipped)."""
    pipe = client.pipeline(transaction=False)
    for pattern in (keys.event_pattern(), keys.command_pattern()):
        for key in client.scan_iter(match=pattern, _type="STREAM", count=1000):
            pipe.xinfo_groups(key)
    answers = pipe.execute(raise_on_error=False)
    return max((_behind(g) for groups in answers if not isinstance(groups, Exception) for g in groups),
               default=0)


def _behind(group: dict[Any, Any]) -> int:
    info = {(k.decode() if isinstance(k, bytes) else k): v for k, v in group.items()}
    return int(info.get("lag") or 0) + int(info["pending"])  # lag is unknown after some deletions
