"""The tracker: reads every event stream of every loaded flow (group `controller`) through the
participant runtime, records each message once, and moves its workflow along.

It handles a whole batch at once: one lock statement for its workflows, one insert for its
messages, four queries to load the workflows, the lifecycle in memory message by message, and one
statement per kind of row to write back what changed."""

from __future__ import annotations

from datetime import datetime
from functools import partial

from sqlalchemy import Connection

from config.flows import Catalog
from contracts.envelope import Envelope
from contracts.payloads import Registry
from contracts.streams import CONTROLLER
from controller.db import store
from controller.domain import lifecycle
from controller.service import effects
from participants.runtime.participant import Participant


def build_tracker(catalog: Catalog, registry: Registry) -> Participant:
    return Participant(CONTROLLER, registry=registry, batch=partial(track, catalog, registry),
                       batch_types=tuple(catalog.event_types()))


def track(catalog: Catalog, registry: Registry, conn: Connection, batch: list[Envelope],
          now: datetime) -> list[list[Envelope]]:
    """What each message of the batch emits, in order. A message whose workflow has not started
    is only recorded: the start attaches it."""
    cids = [m.correlation_id for m in batch]
    store.lock_many(conn, cids)
    found = store.load_many(conn, cids)  # before the batch is recorded: each message is seen in turn
    before = {cid: store.snapshot(wf) for cid, wf in found.items()}
    store.record_messages(conn, batch, now)
    out: list[list[Envelope]] = []
    for message in batch:
        wf = found.get(message.correlation_id)
        if wf is None:
            out.append([])
            continue
        flow = catalog.get(wf.flow, wf.flow_version)
        changes = lifecycle.on_message(flow, wf, message.type, message.id, message.data, now)
        out.append(effects.to_messages(conn, registry, wf, changes, now))
    store.save_many(conn, [(wf, before[cid]) for cid, wf in found.items()])
    return out
