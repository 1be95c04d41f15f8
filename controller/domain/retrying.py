"""When the controller sends a command again: its deterministic id, and how long it waits before
each attempt (pure arithmetic; the lifecycle decides when it applies)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

_NAMESPACE = uuid.UUID("7b1f5a9e-9c0e-4b8e-9a51-4f3c2d6e8a10")


def command_id(correlation_id: str, purpose: str) -> str:
    """Deterministic, so that two trackers deciding the same thing send the same message."""
    return str(uuid.uuid5(_NAMESPACE, f"{correlation_id}:{purpose}"))


def backoff(timeout: float, attempt: int, key: str) -> timedelta:
    """Exponential in the attempt, capped, with a jitter derived from `key` (no randomness here)."""
    base = min(timeout * 2 ** (attempt - 1), timeout * 16)
    return timedelta(seconds=base * (1 + _jitter(key, attempt) / 4))


def _jitter(key: str, attempt: int) -> float:
    """A fraction in [0, 1], the same for the same command and attempt."""
    return int(hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:4], 16) / 0xFFFF
