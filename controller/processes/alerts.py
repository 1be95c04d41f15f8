"""The alerter: a consumer of `workflow.needs_attention` that queues the flow's webhook as an RQ job.

A redelivered event (RQ does not dedupe job ids; a rollback after the enqueue redelivers it)
does not queue a second delivery: a marker set with NX before the enqueue (removed if it fails) says
the event's alert was queued.
"""

from __future__ import annotations

import redis
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
        flow = catalog.get(message.data["flow"], message.data["flow_version"])
        url = flow.alert_webhook or settings.alert_webhook
        if url and client.set(keys.alert_queued(message.id), "1", nx=True, ex=MARKER_TTL):
            try:
                queue.enqueue(jobs.deliver_alert, message.correlation_id, url, job_id=f"alert-{message.id}",
                              retry=Retry(max=len(intervals), interval=intervals), job_timeout=30,
                              failure_ttl=7 * 86400)
            except Exception:  # not queued: the redelivery must try again
                client.delete(keys.alert_queued(message.id))
                raise
        return []

    return alerter
