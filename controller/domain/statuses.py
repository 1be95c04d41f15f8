"""Statuses and reasons as the domain uses them: the contract's `str` Enums (`contracts.statuses`,
the bottom layer, so that the API's schemas validate with the same words)."""

from contracts.statuses import CompensationStatus, Reason, StepStatus, WorkflowStatus

__all__ = ["CompensationStatus", "Reason", "StepStatus", "WorkflowStatus"]
