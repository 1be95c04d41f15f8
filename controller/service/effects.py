"""Turns the lifecycle's effects into messages: commands and lifecycle events, sent via the outbox."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection

from contracts.envelope import Envelope, new_command, new_event
from contracts.payloads import Registry
from contracts.streams import CONTROLLER
from controller.db import store
from controller.domain import lifecycle


def to_messages(conn: Connection, registry: Registry, wf: lifecycle.Workflow,
                effects: list[lifecycle.Effect], now: datetime) -> list[Envelope]:
    """The envelopes to enqueue; each command is also put on the workflow's timeline."""
    out: list[Envelope] = []
    for effect in effects:
        if isinstance(effect, lifecycle.Command):
            message = _command(registry, wf, effect)
            store.record_message(conn, message, now)
            out.append(message)
        elif isinstance(effect, lifecycle.Announce):
            out.append(_announce(registry, wf, effect))
        else:
            message = _emit(registry, wf, effect)
            store.record_message(conn, message, now)
            out.append(message)
    return out


def _command(registry: Registry, wf: lifecycle.Workflow, cmd: lifecycle.Command) -> Envelope:
    version = registry.latest(cmd.type)
    data = registry.validate(cmd.type, version, cmd.data)
    message = new_command(
        cmd.type, data, target=cmd.participant, correlation_id=wf.correlation_id,
        causation_id=cmd.causation_id, deadline=cmd.deadline, source=CONTROLLER,
        version=version, message_id=cmd.command_id,
    )
    return replace(message, attempt=cmd.attempt)  # a retry: the same id, the next attempt


def _emit(registry: Registry, wf: lifecycle.Workflow, emit: lifecycle.Emit) -> Envelope:
    version = registry.latest(emit.type)
    return new_event(emit.type, registry.validate(emit.type, version, emit.data),
                     correlation_id=wf.correlation_id, causation_id=emit.causation_id,
                     source=CONTROLLER, version=version, message_id=emit.message_id)


def _announce(registry: Registry, wf: lifecycle.Workflow, ann: lifecycle.Announce) -> Envelope:
    data = {"flow": wf.flow, "flow_version": wf.flow_version, "correlation_id": wf.correlation_id,
            "status": ann.status, "reason": ann.reason}
    return new_event(ann.type, registry.validate(ann.type, 1, data),
                     correlation_id=wf.correlation_id, causation_id=wf.start_message_id,
                     source=CONTROLLER)
