"""Events the controller emits as a workflow changes state, so others react without polling."""

from __future__ import annotations

from marshmallow import fields

from contracts.payloads import Payload, Registry

COMPLETED = "workflow.completed"
COMPENSATING = "workflow.compensating"
COMPENSATED = "workflow.compensated"
NEEDS_ATTENTION = "workflow.needs_attention"


class WorkflowChanged(Payload):
    flow = fields.Str(required=True)
    flow_version = fields.Int(required=True)
    correlation_id = fields.Str(required=True)
    status = fields.Str(required=True)
    reason = fields.Str(load_default=None, allow_none=True)


def register(registry: Registry) -> None:
    for message_type in (COMPLETED, COMPENSATING, COMPENSATED, NEEDS_ATTENTION):
        registry.register(message_type, WorkflowChanged())
