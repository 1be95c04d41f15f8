"""Alert webhooks: the alerter queues an RQ job with RQ's retry, and the `worker` process (a real RQ
worker, on real Redis) delivers it to a real HTTP server; a webhook that never answers well ends in
RQ's failed-job registry."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import Engine

from config.flows import load_catalog
from config.settings import Settings, load_settings
from contracts import lifecycle_events
from contracts.envelope import new_event
from contracts.registry import default_registry
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.cli.procfile import ROOT, Processes
from controller.db import migrate
from controller.processes.alerts import alert_queue, build_alerter
from controller.service.bootstrap import Services
from controller.service.start import StartRequest, start_workflow
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime
from tests.system import order_input, wait_until

INTERVALS = "1,1"  # two retries, a second apart: three POSTs at most


class _Hook(BaseHTTPRequestHandler):
    """Answers `/flaky/...` 500 the first time and 204 after; `/down/...` always 500."""

    calls: dict[str, list[dict[str, Any]]] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        seen = _Hook.calls.setdefault(self.path, [])
        seen.append(body)
        ok = self.path.startswith("/flaky/") and len(seen) > 1
        self.send_response(204 if ok else 500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


_REGISTRY = default_registry()
_CATALOG = load_catalog(_REGISTRY)


@dataclass
class Alerting:
    """A workflow in the database, the `worker` process, a webhook server."""

    engine: Engine
    client: redis.Redis
    keys: Keys
    hook: str
    correlation_id: str

    def needs_attention(self, path: str) -> Job:
        """The alerter, configured as the `alerts` process would be from its environment, handles
        a `workflow.needs_attention` of the workflow: the job it queued for the webhook at `path`."""
        settings = load_settings({"BATON_STREAM_PREFIX": self.keys.prefix,
                                  "BATON_ALERT_WEBHOOK": f"{self.hook}{path}",
                                  "BATON_ALERT_RETRY_INTERVALS": INTERVALS})
        runtime = Runtime(build_alerter(_CATALOG, _REGISTRY, settings, self.client), self.engine,
                          self.client, self.keys, Options(block_ms=20, linger_ms=0))
        runtime.setup()
        event = new_event(lifecycle_events.NEEDS_ATTENTION, {
            "flow": "order_fulfillment", "flow_version": 1, "correlation_id": self.correlation_id,
            "status": "needs_attention", "reason": "step_failed"},
            correlation_id=self.correlation_id, causation_id=self.correlation_id, source="controller")
        self.client.xadd(self.keys.event_stream(event.type), event.to_fields())  # type: ignore[arg-type]
        wait_until(runtime.poll, 10, "the alerter to handle the event")
        return Job.fetch(f"alert-{event.id}", connection=self.client, serializer=JSONSerializer)


@pytest.fixture
def alerting(tmp_path: Path, pg_database_url: str, redis_url: str) -> Iterator[Alerting]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    keys = Keys(f"a{uuid.uuid4().hex[:8]}")
    engine = make_engine(pg_database_url)
    client = redis.Redis.from_url(redis_url)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "DATABASE_URL": pg_database_url,
           "BATON_STREAM_PREFIX": keys.prefix, "BATON_DATA_DIR": str(tmp_path / "data")}
    procs = Processes(env, tmp_path)
    try:
        migrate.upgrade(engine)
        request = StartRequest("order_fulfillment", order_input(), actor="test",
                               correlation_id=f"wf-{uuid.uuid4().hex[:12]}")
        started = start_workflow(Services(Settings(stream_prefix=keys.prefix), engine, client, _CATALOG,
                                          _REGISTRY, keys), request, utcnow())
        procs.start("worker")
        yield Alerting(engine, client, keys, f"http://127.0.0.1:{server.server_port}",
                       started.correlation_id)
    finally:
        codes = procs.stop_all()
        server.shutdown()
        server.server_close()
        for key in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()
    assert codes == {"worker": 0}, (tmp_path / "worker.log").read_text()[-3000:]


def test_a_webhook_that_fails_once_is_posted_again_and_the_job_finishes(alerting: Alerting) -> None:
    path = f"/flaky/{uuid.uuid4().hex}"
    job = alerting.needs_attention(path)
    assert job.retries_left == 2 and job.retry_intervals == [1, 1]
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, "the job to finish")
    posts = _Hook.calls[path]
    assert len(posts) == 2  # the 500, then the retry that got 204
    assert all(p["workflow"]["correlation_id"] == alerting.correlation_id for p in posts)
    assert job.return_value() == 204


def test_a_webhook_that_always_fails_ends_in_the_failed_job_registry(alerting: Alerting) -> None:
    path = f"/down/{uuid.uuid4().hex}"
    job = alerting.needs_attention(path)
    queue = alert_queue(alerting.client, alerting.keys)
    wait_until(lambda: job.id in queue.failed_job_registry.get_job_ids(), 30,
               "the job in the failed-job registry")
    assert len(_Hook.calls[path]) == 3  # the first attempt and both retries, then no more
    job.refresh()
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0
    assert "500 Server Error" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
