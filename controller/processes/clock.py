"""The clock: queues an SLA sweep on the RQ workers every interval, and every 30 s a stream trim
and a fold of the report's deltas.

Several clocks may run: one is active, the holder of a lease in Redis (`P:lease:clock`, see
`lease.py`), the others stand by and take the lease within `lease_ttl` of the active one's death.
A sweep not started within a few intervals expires, so sweeps never pile up while workers are down.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog
from rq import Queue
from rq.serializers import JSONSerializer

from controller.processes.lease import Lease
from controller.service.bootstrap import Services

log = structlog.get_logger("baton.clock")


def sweep_queue(client: redis.Redis, services: Services) -> Queue:
    return Queue(services.keys.rq_queue("sweeps"), connection=client, serializer=JSONSerializer)


TRIM_EVERY = 30.0  # seconds between stream trims, and between folds of the report's deltas


def lease_ttl(interval: float) -> float:
    """Renewed at every tick: three ticks may be missed before a standby takes over."""
    return max(3.0, 3 * interval)


def clock_lease(services: Services) -> Lease:
    return Lease(services.redis, services.keys.lease("clock"), lease_ttl(services.settings.sweep_interval))


def run_clock(services: Services, stop: threading.Event, lease: Lease | None = None) -> None:
    interval = services.settings.sweep_interval
    queue = sweep_queue(services.rq, services)
    lease = lease or clock_lease(services)
    log.info("clock started", interval=interval, lease_ttl=lease.ttl)
    last_trim = 0.0
    while not stop.is_set():
        try:
            was_active = lease.held
            if lease.hold():
                if not was_active:
                    log.info("clock active: holds the lease", token=lease.token)
                last_trim = tick(queue, interval, last_trim)
            elif was_active:
                log.warning("clock lost its lease: standing by", holder=lease.holder())
        except redis.RedisError as exc:
            log.warning("clock cannot reach Redis", error=str(exc)[:200])
        stop.wait(interval)
    try:
        lease.release()
    except redis.RedisError as exc:  # it expires on its own
        log.warning("clock could not give its lease back", error=str(exc)[:200])
    log.info("clock stopped")


def tick(queue: Queue, interval: float, last_trim: float) -> float:
    """Queue a sweep unless one is waiting, and the periodic jobs when due; when they last were."""
    # By function, so that a rename fails loudly. Imported here: what the jobs need (the sweeper,
    # requests) is the worker's to load, not the clock's.
    from controller.processes import jobs

    if queue.count == 0:  # one sweep waiting is enough
        queue.enqueue(jobs.sweep, ttl=max(5, int(interval * 5)),
                      result_ttl=0, failure_ttl=3600, job_timeout=120)
    if time.monotonic() - last_trim >= TRIM_EVERY:
        for job in (jobs.trim_streams, jobs.fold_report):
            queue.enqueue(job, ttl=int(TRIM_EVERY), result_ttl=0, failure_ttl=3600, job_timeout=300)
        last_trim = time.monotonic()
    return last_trim
