"""The tracker: reads every event stream of every loaded flow (group `controller`) through the
participant runtime, records each message once, and moves its workflow along."""

from __future__ import annotations

from functools import partial

from config.flows import Catalog
from contracts.envelope import Envelope
from contracts.payloads import Registry
from contracts.streams import CONTROLLER
from controller import effects, lifecycle, store
from participants.participant import Context, Participant


def build_tracker(catalog: Catalog, registry: Registry) -> Participant:
    tracker = Participant(CONTROLLER, registry=registry)
    handler = partial(track, catalog)
    for message_type in catalog.event_types():
        tracker.events[message_type] = handler
    return tracker


def track(catalog: Catalog, message: Envelope, ctx: Context) -> list[Envelope]:
    conn = ctx.conn
    store.lock(conn, message.correlation_id)
    store.record_message(conn, message, ctx.now)
    wf = store.load(conn, message.correlation_id)
    if wf is None:
        return []  # recorded; attached to the workflow if one starts with this ID
    flow = catalog.get(wf.flow, wf.flow_version)
    before = store.snapshot(wf)
    changes = lifecycle.on_message(flow, wf, message.type, message.id, message.data, ctx.now)
    store.save(conn, wf, before)
    return effects.to_messages(conn, ctx.registry, wf, changes, ctx.now)
