"""The outbox relay: the safety net that publishes what a writer committed but did not send."""

from __future__ import annotations

import threading
from datetime import timedelta

import structlog
from sqlalchemy.exc import OperationalError

from controller.service.bootstrap import Services
from participants.runtime import outbox
from participants.runtime.connect import UNAVAILABLE

log = structlog.get_logger("baton.relay")
_PASSING: tuple[type[Exception], ...] = (OperationalError, *UNAVAILABLE)


def run_relay(services: Services, stop: threading.Event) -> None:
    interval = services.settings.relay_interval
    # Rows younger than this are being published by their writer right now.
    grace = timedelta(seconds=max(2 * interval, 5.0))
    log.info("relay started", interval=interval)
    while not stop.is_set():
        try:
            sent = outbox.relay_once(services.engine, services.redis, grace=grace,
                                     crash_points=services.settings.crash_points)
        except _PASSING as exc:
            log.warning("relay backing off", error=str(exc)[:200])
            sent = 0
        if sent:
            log.info("relayed", messages=sent)
        else:
            stop.wait(interval)
    log.info("relay stopped")
