"""An alert webhook is queued once per `workflow.needs_attention`, however often the alerter sees
it: RQ does not dedupe job ids, and a rollback after `enqueue` redelivers the event."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.client import Pipeline
from sqlalchemy import create_engine

from config.flows import load_catalog
from config.settings import load_settings
from contracts import lifecycle_events
from contracts.envelope import new_event
from contracts.registry import default_registry
from contracts.streams import Keys
from contracts.timefmt import utcnow
from controller.processes.alerts import alert_queue, build_alerter
from participants.runtime.participant import Context


@pytest.fixture
def client(rq_redis_url: str) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(rq_redis_url)
    yield made
    made.close()


class Killed(BaseException):
    """The process dies here: `except Exception` clean-ups do not run."""


def _alerter(client: redis.Redis) -> tuple[Keys, Any, Any]:
    keys = Keys(f"a{uuid.uuid4().hex[:8]}")
    settings = load_settings({"BATON_STREAM_PREFIX": keys.prefix,
                              "BATON_ALERT_WEBHOOK": "http://127.0.0.1:9/hook"})
    registry = default_registry()
    alerter = build_alerter(load_catalog(registry), registry, settings, client)
    event = new_event(lifecycle_events.NEEDS_ATTENTION, {
        "flow": "order_fulfillment", "flow_version": 1, "correlation_id": "wf-1",
        "status": "needs_attention", "reason": "step_failed"},
        correlation_id="wf-1", causation_id="wf-1", source="controller")
    return keys, event, alerter.events[lifecycle_events.NEEDS_ATTENTION]


def test_an_alerter_killed_while_queueing_leaves_no_marker_and_the_redelivery_queues_it(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, event, handler = _alerter(client)
    registry = default_registry()
    engine = create_engine("sqlite://")
    real_execute = Pipeline.execute

    def dies(self: Pipeline, raise_on_error: bool = True) -> Any:
        raise Killed  # as kill -9 would: no handler of the alerter's runs

    try:
        with engine.connect() as conn:
            monkeypatch.setattr(Pipeline, "execute", dies)
            with pytest.raises(Killed):
                handler(event, Context(conn, event, utcnow(), "alerts", registry))
            monkeypatch.setattr(Pipeline, "execute", real_execute)
            assert not client.exists(keys.alert_queued(event.id)), "no marker without its job"
            handler(event, Context(conn, event, utcnow(), "alerts", registry))  # the redelivery
        assert alert_queue(client, keys).job_ids == [f"alert-{event.id}"]
    finally:
        engine.dispose()
        for key in [*client.scan_iter(match=f"*{keys.prefix}*"), f"rq:job:alert-{event.id}"]:
            client.delete(key)


def test_an_alert_seen_twice_is_queued_once(client: redis.Redis) -> None:
    keys, event, handler = _alerter(client)
    registry = default_registry()
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as conn:
            for _ in range(3):  # the first transaction rolled back: the event comes again
                handler(event, Context(conn, event, utcnow(), "alerts", registry))
        queue = alert_queue(client, keys)
        assert queue.job_ids == [f"alert-{event.id}"]
    finally:
        engine.dispose()
        for key in [*client.scan_iter(match=f"*{keys.prefix}*"), f"rq:job:alert-{event.id}"]:
            client.delete(key)
