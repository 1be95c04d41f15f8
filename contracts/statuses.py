"""The contract's words for where a workflow, its steps and its compensations stand, and why a
workflow left `running`: `str` Enums, so that a member is the very string stored and sent."""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class WorkflowStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    NEEDS_ATTENTION = "needs_attention"


@unique
class Reason(StrEnum):
    """Why a workflow left `running`."""

    STEP_FAILED = "step_failed"
    SLA_BREACHED = "sla_breached"
    CANCELLED = "cancelled"


@unique
class StepStatus(StrEnum):
    """`pending`: prerequisites not met; `active`: met, waiting for its done/failed event."""

    PENDING = "pending"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATED = "compensated"  # the same word as a workflow's, another status


@unique
class CompensationStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"
