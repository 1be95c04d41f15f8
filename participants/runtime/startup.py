"""Starting before the database or Redis: a process waits for them instead of exiting."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis
import structlog
from sqlalchemy.exc import OperationalError

log = structlog.get_logger("baton.startup")


def until_reachable(action: Callable[[], object], stop: threading.Event, what: str) -> bool:
    """Run `action` until the database and Redis let it through, pausing longer each time (up
    to 5 s); False when `stop` was set meanwhile. For what a process does once, at start."""
    pause = 0.5
    while True:
        try:
            action()
            return True
        except (OperationalError, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("unavailable at start: retrying", waiting_for=what, error=str(exc)[:200],
                        retry_in=pause)
        if stop.wait(pause):
            return False
        pause = min(pause * 2, 5.0)
