"""The clock: queues an SLA sweep on the RQ workers every interval, and every 30 s a stream trim
and a fold of the report's deltas; several clocks may run.

A sweep not started within a few intervals expires, so sweeps never pile up while workers are down.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog
from rq import Queue
from rq.serializers import JSONSerializer

from controller.service.bootstrap import Services

log = structlog.get_logger("baton.clock")


def sweep_queue(client: redis.Redis, services: Services) -> Queue:
    return Queue(services.keys.rq_queue("sweeps"), connection=client, serializer=JSONSerializer)


TRIM_EVERY = 30.0  # seconds between stream trims, and between folds of the report's deltas


def run_clock(services: Services, stop: threading.Event) -> None:
    # By function, so that a rename fails loudly. Imported here: what the jobs need (the sweeper,
    # requests) is the worker's to load, not the clock's.
    from controller.processes import jobs

    interval = services.settings.sweep_interval
    queue = sweep_queue(services.rq, services)
    log.info("clock started", interval=interval)
    last_trim = 0.0
    while not stop.is_set():
        try:
            if queue.count == 0:  # one sweep waiting is enough
                queue.enqueue(jobs.sweep, ttl=max(5, int(interval * 5)),
                              result_ttl=0, failure_ttl=3600, job_timeout=120)
            if time.monotonic() - last_trim >= TRIM_EVERY:
                for job in (jobs.trim_streams, jobs.fold_report):
                    queue.enqueue(job, ttl=int(TRIM_EVERY), result_ttl=0, failure_ttl=3600, job_timeout=300)
                last_trim = time.monotonic()
        except redis.ConnectionError as exc:
            log.warning("clock cannot reach Redis", error=str(exc)[:200])
        stop.wait(interval)
    log.info("clock stopped")
