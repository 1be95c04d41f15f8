"""The `worker`'s RQ loop and a SIGTERM that came before RQ installed its own handler."""

from __future__ import annotations

import signal
import threading
import uuid
from typing import Any

import redis
from rq import Worker
from rq.serializers import JSONSerializer

from controller.processes.worker import _Worker


def test_a_stop_requested_before_rq_handled_signals_ends_its_loop_before_it_waits(
        rq_redis_url: str) -> None:
    """RQ's `work()` starts its scheduler, then installs its signal handlers: a SIGTERM in between
    reached only Baton's handler, which set the stop event. The loop stops at its first turn, and
    never waits for a job (which it did, for up to a minute, past the supervisor's SIGKILL)."""
    stop = threading.Event()
    stop.set()  # what Baton's handler did with that SIGTERM
    client = redis.Redis.from_url(rq_redis_url)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = _Worker([f"t{uuid.uuid4().hex[:8]}:sweeps"], connection=client,
                     serializer=JSONSerializer, stop=stop)
    waits: list[Any] = []

    def wait_for_a_job(*args: Any, **kwargs: Any) -> None:
        waits.append(args)
        return None  # "no job": RQ's loop ends

    worker.dequeue_job_and_maintain_ttl = wait_for_a_job  # type: ignore[method-assign]
    try:
        assert worker.work(with_scheduler=False) is False  # no job done
        assert waits == []
        assert worker.name not in {w.name for w in Worker.all(connection=client)}  # torn down
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        client.close()
