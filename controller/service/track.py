"""The tracker: reads every event stream of every loaded flow (group `controller`) through the
participant runtime, records each message once, and moves its workflow along.

It handles a whole batch at once, in the runtime's transaction: one lock statement for its
workflows, one query to load them (four on SQLite), the lifecycle in memory message by message,
then the unit of work writes back what changed, one statement per kind of row."""

from __future__ import annotations

from datetime import datetime
from functools import partial

import structlog
from sqlalchemy import Connection

from config.flows import Catalog
from contracts.envelope import Envelope
from contracts.payloads import Registry
from contracts.streams import CONTROLLER
from controller.db import store
from controller.domain import lifecycle
from controller.domain.statuses import WorkflowStatus
from controller.service.unit_of_work import UnitOfWork
from participants.runtime.participant import Participant


def build_tracker(catalog: Catalog, registry: Registry) -> Participant:
    return Participant(CONTROLLER, registry=registry, batch=partial(track, catalog, registry),
                       batch_types=tuple(catalog.event_types()), lock=lock_batch,
                       ignore=partial(own_start_event, _start_only(catalog)))


def own_start_event(start_types: frozenset[str], message: Envelope) -> bool:
    """A start event the controller published itself: the kickoff recorded it on the timeline and
    applied it to the new workflow in the same transaction, so it tells the tracker nothing."""
    return message.source == CONTROLLER and message.type in start_types


def _start_only(catalog: Catalog) -> frozenset[str]:
    """The start events of the loaded flows that no step or compensation waits for as its answer."""
    answers = {t for flow in catalog.flows.values() for step in flow.steps
               for t in (step.done_on, step.failed_on,
                         *((step.compensation.answer, step.compensation.failed_answer)
                           if step.compensation else ()))}
    return frozenset(f.start_event for f in catalog.flows.values()) - answers


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
    aside: set[str] = set()
    for message in batch:
        wf = found.get(message.correlation_id)
        if wf is None:
            out.append([])
            continue
        out.append(_decide(uow, wf, message, aside))
    uow.flush()
    return out


def _decide(uow: UnitOfWork, wf: lifecycle.Workflow, message: Envelope, aside: set[str]) -> list[Envelope]:
    """What the lifecycle makes of one message. A workflow it cannot decide (its flow version no
    longer loaded, a command whose payload fails validation) is set aside for an operator, once;
    its later messages are only recorded, and the batch's other workflows go on."""
    if wf.correlation_id in aside or (wf.status == WorkflowStatus.NEEDS_ATTENTION
                                      and (wf.flow, wf.flow_version) not in uow.catalog.flows):
        return []
    try:
        flow = uow.flow(wf)
        return uow.apply(wf, lifecycle.on_message(flow, wf, message.type, message.id, message.data,
                                                  uow.now))
    except Exception as exc:  # whatever it is: one bad workflow must not stop the tracker
        aside.add(wf.correlation_id)
        with structlog.contextvars.bound_contextvars(correlation_id=wf.correlation_id):
            return uow.set_aside(wf, exc, actor="tracker")
