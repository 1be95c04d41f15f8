"""The alerter: a consumer of `workflow.needs_attention` that queues the flow's webhook as an RQ job.

A redelivered event (RQ does not dedupe job ids; a rollback after the enqueue redelivers it)
does not queue a second delivery: a marker per event is written in the same Redis transaction as
the job (MULTI/EXEC, watching the marker), so the alert is queued exactly when the marker is, and a
crash between the two cannot leave one without the other.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from config.flows import Catalog
from config.settings import Settings
from contracts import lifecycle_events
from contracts.envelope import Envelope
from contracts.payloads import Registry
from contracts.streams import Keys
from participants.runtime.participant import Context, Participant

NAME = "alerts"
MARKER_TTL = 30 * 86400  # seconds: far longer than any redelivery of the event


def alert_queue(client: redis.Redis, keys: Keys) -> Queue:
    return Queue(keys.rq_queue("alerts"), connection=client, serializer=JSONSerializer)


def build_alerter(catalog: Catalog, registry: Registry, settings: Settings,
                  client: redis.Redis) -> Participant:
    # By function, so that a rename fails loudly. Imported here: what the job needs (views,
    # requests) is the worker's to load, not the alerter's.
    from controller.processes import jobs

    keys = Keys(settings.stream_prefix)
    queue = alert_queue(client, keys)
    intervals = list(settings.alert_retry_intervals)
    alerter = Participant(NAME, registry=registry)

    @alerter.on_event(lifecycle_events.NEEDS_ATTENTION)
    def needs_attention(message: Envelope, ctx: Context) -> list[Envelope]:
        url = _flow_webhook(catalog, message.data["flow"], message.data["flow_version"]) \
            or settings.alert_webhook
        if url:
            _queue_once(client, keys.alert_queued(message.id), lambda pipe: queue.enqueue(
                jobs.deliver_alert, message.correlation_id, url, job_id=f"alert-{message.id}",
                retry=Retry(max=len(intervals), interval=intervals), job_timeout=30,
                failure_ttl=7 * 86400, pipeline=pipe))
        return []

    return alerter


def _queue_once(client: redis.Redis, marker: str, enqueue: Callable[[Pipeline], object]) -> None:
    """The job and its marker in one transaction; nothing if the marker is there. A concurrent
    twin makes EXEC fail (WatchError): its event is redelivered and then finds the marker."""
    with client.pipeline() as pipe:
        pipe.watch(marker)
        if pipe.exists(marker):
            return
        pipe.multi()
        pipe.set(marker, "1", ex=MARKER_TTL)
        enqueue(pipe)
        pipe.execute()


def _flow_webhook(catalog: Catalog, name: str, version: int) -> str | None:
    """The flow's own webhook; none for a flow version no longer loaded (the sweeper sets such a
    workflow aside as needing attention: its alert goes to the default webhook)."""
    try:
        return catalog.get(name, version).alert_webhook
    except KeyError:
        return None
