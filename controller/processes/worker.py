"""The `worker` process: an RQ worker for sweeps and alert webhooks that outlives a Redis outage.

RQ forks a work horse per job. The horse runs the job on the worker's own services, inherited
(`jobs.bind`), with a connection pool of its own: a horse that built its composition root again
(flow catalog, engine, registry) cost an idle worker 3.7 CPU s in 5 s at the tests' sweep interval
of 0.2 s. The worker itself does no database work, so a horse or RQ's scheduler (also a fork)
never inherits a connection in a transaction.

RQ's scheduler, a fork of the worker too, does not watch its parent: a worker killed alone
(`kill -9` of its pid, not its group) left it running, with the worker's database sockets and
the scheduler's lock, so the worker started again ran no scheduler of its own. Every fork now
gets SIGTERM when the worker dies (Linux's parent-death signal), on which the scheduler releases
its lock and stops. A work horse clears it: it finishes its job, as before.

RQ's work loop quits on an unexpected Redis error (a restart, a timeout) and would leave the
process idle or gone; here it is started again once Redis answers, until SIGTERM. RQ installs its
own SIGTERM handler while it works (a warm shutdown: the job at hand finishes); it also sets our
stop event, so that a stop is never mistaken for a failure. A SIGTERM that came before RQ's
handler (while it started its scheduler) stops RQ's loop at its first turn.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
from typing import Any

import redis
import structlog
from rq import Worker
from rq.serializers import JSONSerializer

from controller.processes import jobs
from controller.service.bootstrap import Services
from participants.runtime.db import own_pool_in_fork

log = structlog.get_logger("baton.worker")


class _Worker(Worker):
    def __init__(self, *args: Any, stop: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_event = stop

    def request_stop(self, signum: Any, frame: Any) -> None:
        self._stop_event.set()
        super().request_stop(signum, frame)

    def _install_signal_handlers(self) -> None:
        """RQ installs its handlers after it has started its scheduler: a SIGTERM before that
        reached only ours, and RQ went on to wait for jobs. Its loop stops at its first turn."""
        super()._install_signal_handlers()
        if self._stop_event.is_set():
            self._stop_requested = True

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        _on_parent_death(0)  # a horse finishes its job, whatever becomes of the worker


def run_worker(services: Services, stop: threading.Event) -> None:
    # alerts first: they are rare, and a steady stream of sweeps must not starve them
    queues = [services.keys.rq_queue("alerts"), services.keys.rq_queue("sweeps")]
    jobs.bind(services)
    if sys.platform.startswith("linux"):
        _libc()  # loaded here, not again in each fork
    os.register_at_fork(after_in_child=lambda: _in_fork(services))
    while not stop.is_set():
        try:
            worker = _Worker(queues, connection=services.rq, serializer=JSONSerializer,
                             maintenance_interval=30, stop=stop)
            # RQ raised the socket timeout above its blocking dequeue's; connections made before
            # keep Baton's shorter one (BATON_REDIS_TIMEOUT): make them again.
            services.rq.connection_pool.disconnect()
            worker.work(with_scheduler=True, logging_level="WARNING")
        except redis.RedisError as exc:  # raised before or after its loop (birth, teardown)
            log.warning("RQ worker failed", error=repr(exc)[:200])
        _handle_signals(stop)  # RQ's handlers belong to the worker that just ended
        if not stop.is_set():
            log.warning("RQ worker loop ended; starting another once Redis answers")
            _wait_for_redis(services.rq, stop)


_PR_SET_PDEATHSIG = 1


def _in_fork(services: Services) -> None:
    """What a fork of the worker does first: SIGTERM on the worker's death, and a pool of its own."""
    _on_parent_death(signal.SIGTERM)
    own_pool_in_fork(services.engine)


def _on_parent_death(signum: int) -> None:
    """The signal this process gets when its parent dies (0: none). Linux only: elsewhere an
    orphan goes on as RQ's would."""
    if sys.platform.startswith("linux"):
        _libc().prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


@functools.cache
def _libc() -> Any:
    """The C library, loaded once in the worker: each job's fork calls `prctl` twice."""
    return ctypes.CDLL(None, use_errno=True)


def _handle_signals(stop: threading.Event) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def _wait_for_redis(client: redis.Redis, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            client.ping()
            return
        except redis.RedisError:
            continue
