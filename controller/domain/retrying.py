"""When the controller sends a command again: its deterministic id, and how long it waits before
each attempt (pure arithmetic; the lifecycle decides when it applies)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from contracts.flows import Flow, RetryPolicy

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


def policy_of(flow: Flow, step: str, compensation: bool = False) -> RetryPolicy:
    """The effective policy of a step's command, or of its compensation's."""
    found = flow.step(step)
    policy = found.compensation.retry if compensation and found.compensation else found.retry
    return policy or RetryPolicy(max_attempts=flow.command_max_attempts)


def after_refusal(policy: RetryPolicy, attempt: int, key: str) -> timedelta:
    """The wait from a `_failed` answer to `attempt` until the next: the policy's interval, up to a
    quarter more (so that refusals at once spread out), never past its `max_interval_seconds`."""
    seconds = policy.interval(attempt) * (1 + _jitter(key, attempt) / 4)
    return timedelta(seconds=min(seconds, policy.max_interval_seconds))
