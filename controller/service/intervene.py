"""Carrying out an operator's intervention in one unit of work: under the workflow's lock, with its
audit row and its messages in the same transaction as the change; a refusal (409) changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.envelope import EVENT
from contracts.errors import InvalidMessage
from contracts.flows import Flow
from controller.domain import interventions, lifecycle
from controller.domain.errors import Conflict, InvalidInput, NotFound
from controller.service.bootstrap import Services
from controller.service.unit_of_work import UnitOfWork, unit_of_work
from participants.runtime.db import retry_lost_races


@dataclass(frozen=True)
class Intervention:
    action: str
    actor: str
    reason: str
    params: dict[str, Any] = field(default_factory=dict)


@retry_lost_races  # a deadlock's victim rolled back: run again at once, not answered 503
def intervene(services: Services, cid: str, request: Intervention, now: datetime) -> str:
    """Apply it; returns the audit's result line. NotFound, or Conflict when it does not apply."""
    with unit_of_work(services, now, "operator") as uow:
        wf = uow.load([cid]).get(cid)
        if wf is None:
            raise NotFound(f"no workflow {cid}")
        try:
            flow = uow.flow(wf)
        except KeyError:
            raise Conflict(f"workflow {cid} runs {wf.flow} v{wf.flow_version}, which is not loaded: "
                           "load that version of the flow to act on it") from None
        try:
            changes = interventions.ACTIONS[request.action].decide(flow, wf, now=now, **request.params)
        except interventions.NotApplicable as exc:
            raise Conflict(str(exc)) from None
        except interventions.UnknownStep as exc:
            raise NotFound(str(exc)) from None
        try:
            _carry_out(uow, flow, wf, changes)
        except InvalidMessage as exc:  # e.g. an approval whose outcome event lacks a field
            raise InvalidInput("the message this intervention emits would be invalid",
                               exc.errors) from None
        result = f"applied: {uow.before(wf).status} -> {wf.status}"
        uow.audit({"correlation_id": cid, "actor": request.actor, "action": request.action,
                   "reason": request.reason, "at": now, "result": result,
                   "details": _jsonable(request.params)})
    return result


def _carry_out(uow: UnitOfWork, flow: Flow, wf: lifecycle.Workflow,
               changes: list[lifecycle.Effect]) -> None:
    """An outcome the controller emits itself (an approval) is applied to the workflow at once,
    as the tracker would on receiving it."""
    outcomes = {t for s in flow.steps for t in (s.done_on, s.failed_on) if t}
    for message in uow.apply(wf, changes):
        if message.kind == EVENT and message.type in outcomes:
            uow.apply(wf, lifecycle.on_message(flow, wf, message.type, message.id, message.data, uow.now))


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in params.items()}
