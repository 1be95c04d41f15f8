"""The tracker: reads every event stream of every loaded flow (group `controller`) through the
participant runtime, records each message once, and moves its workflow along.

It handles a whole batch at once, in the runtime's transaction: one lock statement for its
workflows, four queries to load them, the lifecycle in memory message by message, then the unit
of work writes back what changed, one statement per kind of row."""

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
from controller.service.unit_of_work import UnitOfWork
from participants.runtime.participant import Participant


def build_tracker(catalog: Catalog, registry: Registry) -> Participant:
    return Participant(CONTROLLER, registry=registry, batch=partial(track, catalog, registry),
                       batch_types=tuple(catalog.event_types()), lock=lock_batch)


def lock_batch(conn: Connection, batch: list[Envelope]) -> None:
    """Every workflow lock the batch's messages will take, in one sorted statement: what the
    runtime's per-message fallback takes first, as `track` does for the whole batch."""
    store.lock_many(conn, (m.correlation_id for m in batch))


def track(catalog: Catalog, registry: Registry, conn: Connection, batch: list[Envelope],
          now: datetime) -> list[list[Envelope]]:
    """What each message of the batch emits, in order (the runtime enqueues and publishes it). A
    message whose workflow has not started is only recorded: the start attaches it."""
    uow = UnitOfWork(conn, catalog, registry, now)
    found = uow.load(m.correlation_id for m in batch)  # each message is seen in turn: load first
    uow.receive(batch)
    out: list[list[Envelope]] = []
    for message in batch:
        wf = found.get(message.correlation_id)
        if wf is None:
            out.append([])
            continue
        changes = lifecycle.on_message(uow.flow(wf), wf, message.type, message.id, message.data, now)
        out.append(uow.apply(wf, changes))
    uow.flush()
    return out
