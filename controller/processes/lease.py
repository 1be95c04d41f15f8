"""A lease in Redis that one process of a kind holds at a time (the active clock): taken with
SET NX PX and a token of its own, renewed by its holder at every tick, given back on a clean stop.
When the holder dies it expires within its TTL and a standby takes it at its next tick."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

import redis

# Compare the token first: a holder that stalled past its TTL must not renew or drop a lease
# another process has taken since.
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")


def _token() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Lease:
    client: redis.Redis
    key: str
    ttl: float  # seconds
    token: str = field(default_factory=_token)
    held: bool = False

    def hold(self) -> bool:
        """Renew the lease if this process holds it, else try to take it; True while held."""
        ttl_ms = max(1, int(self.ttl * 1000))
        if self.held and self.client.eval(_RENEW, 1, self.key, self.token, ttl_ms):
            return True
        self.held = bool(self.client.set(self.key, self.token, nx=True, px=ttl_ms))
        return self.held

    def release(self) -> None:
        """Give the lease back at once (a clean stop), so a standby need not wait for its TTL."""
        if self.held:
            self.client.eval(_RELEASE, 1, self.key, self.token)
            self.held = False

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
