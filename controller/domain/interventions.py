"""Operator interventions on a workflow, pure like the lifecycle: each checks that it applies to the
workflow's state (NotApplicable otherwise, and nothing changes), mutates, and returns effects.

ACTIONS, at the end, is the one table of them: the routes, the `baton` commands, the bulk schema
and the OpenAPI document are built from it, and it says which statuses each applies to."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from contracts.api import DeadlineBody, InterventionBody, RetryBody, SignalBody
from contracts.flows import APPROVAL_STEP, COMMAND_STEP, Flow
from controller.domain import lifecycle as lc
from controller.domain.actions import Action, BulkUse, CliOption
from controller.domain.errors import InvalidInput
from controller.domain.statuses import CompensationStatus, Reason, StepStatus, WorkflowStatus


class NotApplicable(Exception):
    """The intervention does not apply to the workflow's state; the message says why."""


class UnknownStep(Exception):
    """The flow has no step of that name."""


def _require(wf: lc.Workflow, action: str, label: str | None = None) -> None:
    """The statuses an action applies to are the table's (ACTIONS, below)."""
    statuses = ACTIONS[action].applies_to
    if wf.status not in statuses:
        raise NotApplicable(f"workflow {wf.correlation_id} is {wf.status}; {label or action} applies "
                            f"only to {' or '.join(statuses)}")


def cancel(flow: Flow, wf: lc.Workflow, now: datetime) -> list[lc.Effect]:
    _require(wf, "cancel")
    wf.paused_at = None
    effects = lc.begin_compensation(flow, wf, Reason.CANCELLED, now)
    return effects + lc.advance(flow, wf, now)


def compensate(flow: Flow, wf: lc.Workflow, now: datetime) -> list[lc.Effect]:
    """Compensate now: a running or paused workflow, or one that needs attention: its failed
    compensations are sent again, or, set aside by the sweeper with none failed, its compensation
    goes on (or begins, if it had none)."""
    _require(wf, "compensate")
    if wf.status == WorkflowStatus.NEEDS_ATTENTION:
        if any(c.status == CompensationStatus.FAILED for c in wf.compensations.values()):
            return _resend_failed_compensations(flow, wf, now)
        if wf.compensations:
            wf.status = WorkflowStatus.COMPENSATING
            return [lc.Announce("workflow.compensating", wf.status, wf.reason), *lc.advance(flow, wf, now)]
    wf.paused_at = None
    effects = lc.begin_compensation(flow, wf, wf.reason or Reason.CANCELLED, now)
    return effects + lc.advance(flow, wf, now)


def retry(flow: Flow, wf: lc.Workflow, now: datetime, step: str | None = None) -> list[lc.Effect]:
    """Re-issue what is stuck: an active step's command or triggering events, or failed
    compensations of a workflow that needs attention."""
    _require(wf, "retry")
    if wf.status == WorkflowStatus.NEEDS_ATTENTION:
        return _resend_failed_compensations(flow, wf, now)
    if wf.status == WorkflowStatus.COMPENSATING:
        return _resend_sent_compensation(flow, wf, now)
    active = [s for s in flow.steps if wf.steps[s.name].status == StepStatus.ACTIVE
              and s.kind != APPROVAL_STEP and (step is None or s.name == step)]
    if not active:
        raise NotApplicable(f"workflow {wf.correlation_id} has no active step"
                            + (f" named {step}" if step else "") + " to retry")
    effects: list[lc.Effect] = []
    for s in active:
        if s.kind == COMMAND_STEP:
            effects.append(lc.send_step_command(flow, wf, s, now))
        else:
            effects += [_re_emit(wf, t) for t in s.reacts_to if t in wf.seen]
    if not effects:  # its triggers count as arrived only because the steps emitting them were skipped
        raise NotApplicable(f"workflow {wf.correlation_id} has no trigger of its active step to re-emit")
    unique = {e.type if isinstance(e, lc.Emit) else id(e): e for e in effects}  # one per trigger
    return list(unique.values())


def skip(flow: Flow, wf: lc.Workflow, step: str, now: datetime) -> list[lc.Effect]:
    """The participant did the work out of band: the step is done without its event."""
    _require(wf, "skip")
    _step(flow, wf, step)
    state = wf.steps[step]
    if state.status not in (StepStatus.PENDING, StepStatus.ACTIVE):
        raise NotApplicable(f"step {step} of workflow {wf.correlation_id} is {state.status}; "
                            "skip applies only to a pending or active step")
    state.status, state.finished_at, state.next_attempt_at = StepStatus.SKIPPED, now, None
    return lc.advance(flow, wf, now)  # what waited for its event may go on: see lc.arrived


def pause(flow: Flow, wf: lc.Workflow, now: datetime) -> list[lc.Effect]:
    _require(wf, "pause")
    wf.status, wf.paused_at = WorkflowStatus.PAUSED, now
    return []


def resume(flow: Flow, wf: lc.Workflow, now: datetime) -> list[lc.Effect]:
    """The clock restarts where it stopped: every deadline moves by the time spent paused."""
    _require(wf, "resume")
    paused_for = now - (wf.paused_at or now)
    _later(wf.deadline, paused_for, "deadline")  # refused before anything changes
    wf.status, wf.paused_at = WorkflowStatus.RUNNING, None
    wf.deadline = wf.deadline + paused_for if wf.deadline else None
    for state in wf.steps.values():
        if state.status == StepStatus.ACTIVE:
            state.deadline = state.deadline + paused_for if state.deadline else None
            if state.next_attempt_at:
                state.next_attempt_at += paused_for
    failed = [s for s in flow.steps if wf.steps[s.name].status == StepStatus.FAILED]
    if failed:  # a failure that arrived while paused
        return lc.begin_compensation(flow, wf, Reason.STEP_FAILED, now) + lc.advance(flow, wf, now)
    return lc.advance(flow, wf, now)


def move_deadline(flow: Flow, wf: lc.Workflow, now: datetime, deadline: datetime | None = None,
                  extend_seconds: int | None = None) -> list[lc.Effect]:
    _require(wf, "deadline")
    if deadline is None:
        deadline = _later(wf.deadline or now, timedelta(seconds=extend_seconds or 0), "extend_seconds")
    wf.deadline = deadline
    return []


def signal(flow: Flow, wf: lc.Workflow, name: str, now: datetime, step: str | None = None,
           data: dict[str, Any] | None = None, why: str | None = None) -> list[lc.Effect]:
    """Answer an approval step: `approve` emits its done event, `reject` its failed event."""
    _require(wf, "signal", f"signal {name}")
    waiting = [s for s in flow.steps if s.kind == APPROVAL_STEP
               and wf.steps[s.name].status == StepStatus.ACTIVE and (step is None or s.name == step)]
    if not waiting:
        raise NotApplicable(f"workflow {wf.correlation_id} has no approval step waiting"
                            + (f" named {step}" if step else ""))
    target = waiting[0]
    if name == "approve":
        outcome = target.done_on
    elif name == "reject" and target.failed_on:
        outcome = target.failed_on
    else:
        raise NotApplicable(f"step {target.name} accepts the signals approve and reject, not {name}")
    # the operator may add to the outcome, never change whose it is; a rejection says why
    payload = {**(data or {}), **_start_data(flow, wf)}
    if name == "reject" and why:
        payload.setdefault("reason", why)
    message_id = lc.command_id(wf.correlation_id, f"signal:{target.name}")
    return [lc.Emit(outcome, payload, wf.start_message_id, message_id)]


def _later(moment: datetime | None, by: timedelta, field: str) -> datetime | None:
    """`moment + by`, or a 422 naming `field` when that passes year 9999."""
    try:
        return moment + by if moment else None
    except OverflowError:
        raise InvalidInput(f"moving the deadline {moment} by {by} passes year 9999; move the "
                           "deadline first", {field: ["would pass year 9999"]}) from None


def _start_data(flow: Flow, wf: lc.Workflow) -> dict[str, Any]:
    return dict(wf.seen.get(flow.start_event, ("", {}))[1])


def _step(flow: Flow, wf: lc.Workflow, name: str) -> Any:
    try:
        return flow.step(name)
    except KeyError:
        raise UnknownStep(f"flow {flow.name} v{flow.version} has no step {name!r}") from None


def _re_emit(wf: lc.Workflow, message_type: str) -> lc.Emit:
    """The triggering event again, as a new message caused by the original (its causation kept)."""
    original_id, data = wf.seen[message_type]
    return lc.Emit(message_type, data, original_id)


def _resend_failed_compensations(flow: Flow, wf: lc.Workflow, now: datetime) -> list[lc.Effect]:
    failed = [c for c in wf.compensations.values() if c.status == CompensationStatus.FAILED]
    if not failed:
        raise NotApplicable(f"workflow {wf.correlation_id} has no failed compensation")
    for comp in failed:
        comp.status = CompensationStatus.PENDING
    wf.status = WorkflowStatus.COMPENSATING
    return [lc.Announce("workflow.compensating", wf.status, wf.reason), *lc.advance(flow, wf, now)]


def _resend_sent_compensation(flow: Flow, wf: lc.Workflow, now: datetime) -> list[lc.Effect]:
    sent = [c for c in wf.compensations.values() if c.status == CompensationStatus.SENT]
    if not sent:
        raise NotApplicable(f"workflow {wf.correlation_id} has no compensation waiting for an answer")
    return [lc.send_compensation(flow, wf, c, now) for c in sent]


_W = WorkflowStatus
ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("cancel", cancel, (_W.RUNNING, _W.PAUSED), InterventionBody, "cancel",
           "Stop the workflow and compensate what was done.", bulk=BulkUse(),
           cli_help="Stop a workflow and compensate what was done."),
    Action("compensate", compensate, (_W.RUNNING, _W.PAUSED, _W.NEEDS_ATTENTION), InterventionBody,
           "compensate", "Compensate now: a running, paused or needs_attention workflow.",
           bulk=BulkUse(), cli_help="Compensate now (a stalled or needs_attention workflow)."),
    Action("retry", retry, (_W.RUNNING, _W.NEEDS_ATTENTION, _W.COMPENSATING), RetryBody, "retry",
           "Re-send a stalled step's command or re-emit its triggering event; re-send a compensation.",
           params=("step",), bulk=BulkUse(params=("step",)),
           cli_help="Re-issue a stalled step, or re-send a failed compensation.",
           cli_options=(CliOption("--step", "step", "Only this step."),)),
    Action("skip", skip, (_W.RUNNING, _W.PAUSED), InterventionBody, "steps/<step>/skip",
           "Mark a step done without its event: its work was done out of band.",
           cli_help="Mark STEP done without its event (its work was done out of band)."),
    Action("pause", pause, (_W.RUNNING,), InterventionBody, "pause",
           "Stop the SLA clock; the controller issues nothing for the workflow until it resumes.",
           bulk=BulkUse(), cli_help="Pause: the SLA clock stops and nothing is issued."),
    Action("resume", resume, (_W.PAUSED,), InterventionBody, "resume", None, bulk=BulkUse(),
           cli_help="Resume a paused workflow."),
    Action("deadline", move_deadline, (_W.RUNNING, _W.PAUSED), DeadlineBody, "deadline",
           "Move the whole workflow's deadline: to `deadline`, or by `extend_seconds`.",
           params=("deadline", "extend_seconds"),
           bulk=BulkUse(params=("extend_seconds",), required=("extend_seconds",)),
           cli_help="Move a workflow's deadline.",
           cli_options=(CliOption("--at", "deadline", "New deadline, RFC 3339 UTC."),
                        CliOption("--extend", "extend_seconds", "Seconds to add.", int))),
    Action("signal", signal, (_W.RUNNING,), SignalBody, "signals/<name>",
           "Answer an approval step: `approve` or `reject`.", params=("step", "data"),
           reason_as="why", cli_help="Answer an approval step: NAME is approve or reject.",
           cli_options=(CliOption("--step", "step"), CliOption(
               "--data", "data", "Extra data for the outcome event: JSON or @file.", json=True))),
)}
