"""Outbox rows a web process published after their commit and has not marked sent yet.

The next kickoff marks them in its own transaction, so that a kickoff commits once: the claim
`outbox.publish` makes in a transaction of its own is the second commit this saves. What no
kickoff comes for within IDLE_SECONDS is marked in a transaction of its own, well before the
relay's grace (at least 5 s) would publish it again. A row published and never marked (the
process died in between) is only published twice: delivery is at least once, consumers dedupe by id.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from participants.runtime import outbox

log = structlog.get_logger("baton.outbox")
IDLE_SECONDS = 1.0


class Unmarked:
    def __init__(self, engine: Engine, idle_seconds: float = IDLE_SECONDS) -> None:
        self._engine, self._idle = engine, idle_seconds
        self._seqs: list[int] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False

    def take(self) -> list[int]:
        """The rows to mark sent in the caller's transaction (given back with `add` if it fails)."""
        with self._lock:
            seqs, self._seqs = self._seqs, []
        return seqs

    def add(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._seqs += seqs
            if self._timer is None and not self._closed:
                self._timer = threading.Timer(self._idle, self._mark_left)
                self._timer.daemon = True
                self._timer.start()

    def close(self) -> None:
        """No more timers; what is left is marked now."""
        with self._lock:
            self._closed, timer, self._timer = True, self._timer, None
        if timer is not None:
            timer.cancel()
        self._mark_left()

    def _mark_left(self) -> None:
        with self._lock:
            self._timer = None
        seqs = self.take()
        if not seqs:
            return
        try:
            with self._engine.begin() as conn:
                outbox.mark_sent(conn, seqs)
        except SQLAlchemyError as exc:
            log.warning("marking published rows failed; the relay will send them again",
                        error=repr(exc)[:200], messages=len(seqs))
