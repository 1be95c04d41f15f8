"""The `worker` process (RQ) outlives a Redis outage that hits it in the middle of a job, and
stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from contracts.streams import Keys
from controller.cli.procfile import ROOT, Processes
from participants.runtime.redis_server import start_server, stop_server
from tests.system import wait_until

BIN = str(Path(sys.executable).parent)


def test_the_worker_comes_back_after_redis_goes_away_in_the_middle_of_a_job(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    binary = os.environ.get("BATON_TEST_REDIS_SERVER")
    url = start_server(data, appendonly=True, binary=binary)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    keys = Keys(f"w{uuid.uuid4().hex[:8]}")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "REDIS_URL": url, "PYTHONPATH": str(ROOT),
           "DATABASE_URL": f"sqlite:///{tmp_path}/baton.db", "BATON_STREAM_PREFIX": keys.prefix,
           "BATON_DATA_DIR": str(tmp_path / "data")}
    procs = Processes(env, tmp_path)
    client = redis.Redis.from_url(url)
    try:
        procs.start("worker")
        queue = Queue(keys.rq_queue("sweeps"), connection=client, serializer=JSONSerializer)
        slow = queue.enqueue("time.sleep", 3)
        wait_until(lambda: slow.get_status(refresh=True) == JobStatus.STARTED, 30, "the job to start")
        stop_server(data)  # the job ends while Redis is gone: RQ cannot record it
        time.sleep(4)
        start_server(data, port=port, appendonly=True, binary=binary)  # same address, AOF kept
        assert procs.running["worker"].poll() is None, (tmp_path / "worker.log").read_text()

        client = redis.Redis.from_url(url)
        queue = Queue(keys.rq_queue("sweeps"), connection=client, serializer=JSONSerializer)
        quick = queue.enqueue("time.sleep", 0)

        def finished() -> bool:
            return Job.fetch(quick.id, connection=client, serializer=JSONSerializer
                             ).get_status() == JobStatus.FINISHED
        wait_until(finished, 60, "a job after the outage")
    finally:
        codes = procs.stop_all()
        client.close()
        stop_server(data)
    assert codes == {"worker": 0}, (tmp_path / "worker.log").read_text()[-3000:]


def test_a_worker_killed_alone_takes_its_scheduler_with_it(tmp_path: Path, rq_redis_url: str) -> None:
    """`kill -9` of the worker's pid (not its group): RQ's scheduler, a fork of it, stops too and
    releases its lock, so that the worker started again runs a scheduler of its own."""
    keys = Keys(f"w{uuid.uuid4().hex[:8]}")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "REDIS_URL": rq_redis_url,
           "PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path}/baton.db",
           "BATON_STREAM_PREFIX": keys.prefix, "BATON_DATA_DIR": str(tmp_path / "data")}
    procs = Processes(env, tmp_path)

    def scheduler_of(pid: int) -> psutil.Process | None:
        children = psutil.Process(pid).children()  # no job is queued: no work horse
        return children[0] if children else None

    try:
        worker = procs.start("worker")
        scheduler = wait_until(lambda: scheduler_of(worker.pid), 30, "the worker's scheduler")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        wait_until(lambda: not scheduler.is_running() or scheduler.status() == psutil.STATUS_ZOMBIE,
                   10, "the orphaned scheduler to stop")
        again = procs.start("worker")
        wait_until(lambda: scheduler_of(again.pid), 30, "a scheduler of the worker started again")
    finally:
        codes = procs.stop_all()
    assert codes == {"worker": 0}, (tmp_path / "worker.log").read_text()[-3000:]
