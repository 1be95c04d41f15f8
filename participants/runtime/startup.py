"""Starting before the database or Redis, or losing one: a process waits for them instead of exiting."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from sqlalchemy.exc import OperationalError

from participants.runtime.connect import UNAVAILABLE

log = structlog.get_logger("baton.startup")
_RETRIED: tuple[type[Exception], ...] = (OperationalError, *UNAVAILABLE)


def until_reachable(action: Callable[[], object], stop: threading.Event, what: str, *,
                    longest_pause: float = 5.0, quiet: bool = False) -> bool:
    """Run `action` until the database and Redis let it through, pausing longer each time (up
    to `longest_pause` seconds); False when `stop` was set meanwhile. Each failure is logged
    unless `quiet` (the caller has said once what it waits for)."""
    pause = min(0.5, longest_pause)
    while True:
        try:
            action()
            return True
        except _RETRIED as exc:
            if not quiet:
                log.warning("unavailable at start: retrying", waiting_for=what, error=str(exc)[:200],
                            retry_in=pause)
        if stop.wait(pause):
            return False
        pause = min(pause * 2, longest_pause)
