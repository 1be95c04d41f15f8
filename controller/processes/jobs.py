"""Background work run by RQ workers (JSON-serialised, never pickled): the SLA sweep, stream trims,
folding the report's deltas into its rollup, and alert webhooks."""

from __future__ import annotations

from typing import Any

import requests
import structlog
from sqlalchemy.exc import OperationalError

from config.settings import load_settings
from contracts.timefmt import utcnow
from controller.db import views
from controller.processes import trimming
from controller.reporting import store as report_store
from controller.service import sweep as sweeper
from controller.service.bootstrap import Services, build_services

log = structlog.get_logger("baton.jobs")
WEBHOOK_TIMEOUT = 5.0


_bound: Services | None = None


def bind(services: Services) -> None:
    """Run this process's jobs on `services` (the `worker` process's own)."""
    global _bound
    _bound = services


def _services() -> Services:
    """One composition root per process: the one bound, else one built on the first job."""
    if _bound is None:
        bind(build_services(load_settings()))
    assert _bound is not None
    return _bound


def sweep() -> int:
    """Act on every workflow whose deadline or retry is due now."""
    try:
        return sweeper.sweep_once(_services(), utcnow())
    except OperationalError as exc:  # the next tick sweeps again; nothing is owed to this one
        log.warning("sweep skipped: database unavailable", error=str(exc)[:200])
        return 0


def trim_streams() -> int:
    """Bound Redis memory: drop stream entries every consumer group is done with, and those of
    event streams no group reads (and no loaded flow declares a consumer of) once older than
    BATON_STREAM_RETENTION. A stream a declared consumer has no group on yet is kept whole."""
    services = _services()
    removed = trimming.trim_all(services.redis, services.keys, services.settings.stream_retention,
                                trimming.declared_groups(services.catalog, services.keys))
    if removed:
        log.info("streams trimmed", entries=removed)
    return removed


def fold_report() -> None:
    """Fold the SLA report's deltas into its hourly rollup, so that the report reads few rows."""
    with _services().engine.begin() as conn:
        report_store.fold_deltas(conn)


def deliver_alert(correlation_id: str, url: str) -> int:
    """POST the workflow, as the API shows it, to the flow's alert webhook; raises to be retried."""
    services = _services()
    with services.engine.connect() as conn:
        body: dict[str, Any] = views.workflow(conn, services.catalog, correlation_id)
    with requests.Session() as session:
        response = session.post(url, json={"event": "workflow.needs_attention", "workflow": body},
                                timeout=WEBHOOK_TIMEOUT)
    response.raise_for_status()
    log.info("alert delivered", correlation_id=correlation_id, status=response.status_code)
    return response.status_code
