"""Turns the lifecycle's effects into messages: commands, emitted events, lifecycle announcements."""

from __future__ import annotations

from dataclasses import replace

from contracts.envelope import Envelope, new_command, new_event
from contracts.payloads import Registry
from contracts.streams import CONTROLLER
from controller.domain import lifecycle


def message_for(registry: Registry, wf: lifecycle.Workflow, effect: lifecycle.Effect) -> Envelope:
    """The envelope of one effect, its payload checked against the registry here (and vouched
    for: the runtime does not check it again before it leaves)."""
    if isinstance(effect, lifecycle.Command):
        return registry.vouch(_command(registry, wf, effect))
    if isinstance(effect, lifecycle.Announce):
        return registry.vouch(_announce(registry, wf, effect))
    return registry.vouch(_emit(registry, wf, effect))


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
