"""Carrying out an operator's intervention: under the workflow's lock, with its audit row and its
messages in the same transaction as the change; a refusal (409) changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, insert

from contracts.envelope import EVENT, Envelope
from contracts.errors import InvalidMessage
from contracts.flows import Flow
from controller.db import store
from controller.db.tables import audit
from controller.domain import interventions, lifecycle
from controller.domain.errors import Conflict, InvalidInput, NotFound
from controller.service import effects
from controller.service.bootstrap import Services
from participants.runtime import outbox


@dataclass(frozen=True)
class Intervention:
    action: str
    actor: str
    reason: str
    params: dict[str, Any] = field(default_factory=dict)


def intervene(services: Services, cid: str, request: Intervention, now: datetime) -> str:
    """Apply it; returns the audit's result line. NotFound, or Conflict when it does not apply."""
    with services.engine.begin() as conn:
        store.lock(conn, cid)
        wf = store.load(conn, cid)
        if wf is None:
            raise NotFound(f"no workflow {cid}")
        flow = services.catalog.get(wf.flow, wf.flow_version)
        before = store.snapshot(wf)
        try:
            changes = interventions.ACTIONS[request.action].decide(flow, wf, now=now, **request.params)
        except interventions.NotApplicable as exc:
            raise Conflict(str(exc)) from None
        except interventions.UnknownStep as exc:
            raise NotFound(str(exc)) from None
        try:
            sent = _carry_out(services, conn, flow, wf, changes, now)
        except InvalidMessage as exc:  # e.g. an approval whose outcome event lacks a field
            raise InvalidInput("the message this intervention emits would be invalid",
                               exc.errors) from None
        store.save(conn, wf, before)
        result = f"applied: {before.status} -> {wf.status}"
        _audit(conn, cid, request, now, result)
        pending = outbox.enqueue(conn, services.keys, sent, now)
    with structlog.contextvars.bound_contextvars(correlation_id=cid):
        outbox.publish_or_leave(services.engine, services.redis, pending, services.settings.crash_points)
    return result


def _carry_out(services: Services, conn: Connection, flow: Flow, wf: lifecycle.Workflow,
               changes: list[lifecycle.Effect], now: datetime) -> list[Envelope]:
    """Messages for the effects; an outcome the controller emits itself (an approval) is applied
    to the workflow at once, as the tracker would on receiving it."""
    sent = effects.to_messages(conn, services.registry, wf, changes, now)
    outcomes = {t for s in flow.steps for t in (s.done_on, s.failed_on) if t}
    for message in [m for m in sent if m.kind == EVENT and m.type in outcomes]:
        more = lifecycle.on_message(flow, wf, message.type, message.id, message.data, now)
        sent += effects.to_messages(conn, services.registry, wf, more, now)
    return sent


def _audit(conn: Connection, cid: str, request: Intervention, now: datetime, result: str) -> None:
    conn.execute(insert(audit).values(
        correlation_id=cid, actor=request.actor, action=request.action, reason=request.reason,
        at=now, result=result, details=_jsonable(request.params),
    ))


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in params.items()}

