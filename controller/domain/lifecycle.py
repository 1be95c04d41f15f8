"""A workflow's life as a pure state machine: no database, Redis or Flask; time is an argument.

`on_message` applies one recorded message, `on_time` what the clock makes due; both mutate the
workflow and return the effects the caller must carry out (commands and lifecycle events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from contracts import lifecycle_events as announce
from contracts.flows import COMMAND_STEP, Flow
from contracts.flows import Step as StepDef
from controller.domain.retrying import after_refusal, backoff, command_id, policy_of
from controller.domain.statuses import CompensationStatus, Reason, StepStatus, WorkflowStatus

# A step whose status no later message changes; a workflow undoing what was done.
_SETTLED = (StepStatus.DONE, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.COMPENSATED)
_UNDOING = (WorkflowStatus.COMPENSATING, WorkflowStatus.COMPENSATED, WorkflowStatus.NEEDS_ATTENTION)


@dataclass
class Step:
    name: str
    status: str = StepStatus.PENDING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    completed_seq: int | None = None
    attempts: int = 0
    command_id: str | None = None
    next_attempt_at: datetime | None = None
    result: dict[str, Any] | None = None  # {"id": done message id, "data": its payload}


@dataclass
class Compensation:
    step: str
    position: int
    command: str
    command_id: str
    status: str = CompensationStatus.PENDING
    attempts: int = 0
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class Workflow:
    correlation_id: str
    flow: str
    flow_version: int
    started_at: datetime
    start_message_id: str
    status: str = WorkflowStatus.RUNNING
    reason: str | None = None
    deadline: datetime | None = None
    finished_at: datetime | None = None
    paused_at: datetime | None = None
    steps: dict[str, Step] = field(default_factory=dict)
    compensations: dict[str, Compensation] = field(default_factory=dict)
    seen: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    participant: str
    type: str
    data: dict[str, Any]
    command_id: str
    attempt: int
    deadline: datetime
    causation_id: str


@dataclass(frozen=True)
class Announce:
    type: str
    status: str
    reason: str | None


@dataclass(frozen=True)
class Emit:
    """An event the controller publishes itself: an approval's outcome, a re-emitted trigger."""

    type: str
    data: dict[str, Any]
    causation_id: str
    message_id: str | None = None  # deterministic where a repeat must not make a second event


Effect = Command | Announce | Emit


def start(flow: Flow, correlation_id: str, start_message_id: str, data: dict[str, Any],
          now: datetime, sla_seconds: int | None = None) -> tuple[Workflow, list[Effect]]:
    wf = Workflow(
        correlation_id, flow.name, flow.version, now, start_message_id,
        deadline=now + timedelta(seconds=sla_seconds or flow.sla_seconds),
        steps={s.name: Step(s.name) for s in flow.steps},
    )
    wf.seen[flow.start_event] = (start_message_id, data)
    return wf, advance(flow, wf, now)


def on_message(flow: Flow, wf: Workflow, message_type: str, message_id: str,
               data: dict[str, Any], now: datetime) -> list[Effect]:
    wf.seen.setdefault(message_type, (message_id, data))
    effects: list[Effect] = []
    for step in flow.steps:
        if message_type == step.done_on:
            effects += _step_done(flow, wf, step, message_id, data, now)
        elif message_type == step.failed_on:
            effects += _step_failed(flow, wf, step, data, now)
        if step.compensation and message_type == step.compensation.answer:
            effects += _compensation_done(wf, step.name, now)
        elif step.compensation and message_type == step.compensation.failed_answer:
            effects += _compensation_failed(flow, wf, step.name, now, answered=True)
    return effects + advance(flow, wf, now)


def on_time(flow: Flow, wf: Workflow, now: datetime) -> list[Effect]:
    """Breaches and unanswered commands: what the sweeper finds due at `now`."""
    effects: list[Effect] = []
    if wf.status == WorkflowStatus.RUNNING:
        effects += _check_deadlines(flow, wf, now)
    for step in flow.steps:
        state = wf.steps[step.name]
        if wf.status == WorkflowStatus.RUNNING and _command_overdue(state, now):
            effects += _retry_step(flow, wf, step, now)
        compensating = wf.status == WorkflowStatus.COMPENSATING
        if compensating and state.status == StepStatus.ACTIVE and _overdue(state, now):
            state.next_attempt_at = None  # waited long enough for it to finish
        comp = wf.compensations.get(step.name)
        if compensating and comp and comp.status == CompensationStatus.SENT and _overdue(comp, now):
            effects += _compensation_failed(flow, wf, step.name, now)
    return effects + advance(flow, wf, now)


def next_due(wf: Workflow) -> datetime | None:
    """The earliest moment `on_time` could change something; None when nothing is owed."""
    times: list[datetime | None] = []
    if wf.status == WorkflowStatus.RUNNING:
        times.append(wf.deadline)
        for s in wf.steps.values():
            if s.status == StepStatus.ACTIVE:
                times += [s.deadline, s.next_attempt_at]
    elif wf.status == WorkflowStatus.COMPENSATING:
        times += [c.next_attempt_at for c in wf.compensations.values() if c.status == CompensationStatus.SENT]
        times += [s.next_attempt_at for s in wf.steps.values() if s.status == StepStatus.ACTIVE]
    present = [t for t in times if t is not None]
    return min(present) if present else None


def begin_compensation(flow: Flow, wf: Workflow, reason: str, now: datetime) -> list[Effect]:
    wf.status, wf.reason = WorkflowStatus.COMPENSATING, reason
    done = sorted(
        (s for s in wf.steps.values() if s.status == StepStatus.DONE and flow.step(s.name).compensation),
        key=lambda s: s.completed_seq or 0, reverse=True,
    )
    for step in done:
        _add_compensation(flow, wf, step.name)
    for step_def in flow.steps:
        # A step still at work may be about to finish, and then it must be compensated too: the
        # workflow is not called compensated before it answers, its deadline passes, or one
        # command timeout has gone by. A later answer reopens the compensation all the same.
        state = wf.steps[step_def.name]
        if state.status == StepStatus.ACTIVE:
            settle = now + timedelta(seconds=flow.command_timeout_seconds)
            if state.deadline is not None:
                settle = min(settle, state.deadline)
            wanted = step_def.compensation is not None and settle > now
            state.next_attempt_at = settle if wanted else None
    return [Announce(announce.COMPENSATING, wf.status, reason)]


def _step_done(flow: Flow, wf: Workflow, step: StepDef, message_id: str, data: dict[str, Any],
               now: datetime) -> list[Effect]:
    state = wf.steps[step.name]
    verdict = bool(step.fails_when) and _matches(step.fails_when, data)
    if state.status in _SETTLED and not (_late_success(step, state) and not verdict):
        return []
    if verdict:
        state.attempts = max(state.attempts, policy_of(flow, step.name).max_attempts)  # a verdict
        return _step_failed(flow, wf, step, data, now)
    state.status, state.finished_at = StepStatus.DONE, now
    state.completed_seq = 1 + max((s.completed_seq or 0 for s in wf.steps.values()), default=0)
    state.result = {"id": message_id, "data": data}
    state.next_attempt_at = None
    if wf.status in _UNDOING and step.compensation:
        _add_compensation(flow, wf, step.name, first=True)
        if wf.status == WorkflowStatus.COMPENSATED:
            wf.status, wf.finished_at = WorkflowStatus.COMPENSATING, None
            return [Announce(announce.COMPENSATING, wf.status, wf.reason)]
    return []


def _late_success(step: StepDef, state: Step) -> bool:
    """A command step failed for want of a success (its last attempt unanswered, or a stale
    `_failed` of an earlier one), then an attempt succeeded: its work was done and is undone."""
    return state.status == StepStatus.FAILED and step.kind == COMMAND_STEP and step.compensation is not None


def _step_failed(flow: Flow, wf: Workflow, step: StepDef, data: dict[str, Any],
                 now: datetime) -> list[Effect]:
    state = wf.steps[step.name]
    if state.status in _SETTLED:
        return []
    policy = policy_of(flow, step.name)
    if step.kind == COMMAND_STEP and state.attempts < policy.max_attempts:
        if state.status == StepStatus.ACTIVE:  # a refused attempt: the next when its policy says
            state.next_attempt_at = now + after_refusal(policy, state.attempts, state.command_id or "")
        return []
    state.status, state.finished_at, state.next_attempt_at = StepStatus.FAILED, now, None
    if wf.status != WorkflowStatus.RUNNING:
        return []
    return begin_compensation(flow, wf, Reason.STEP_FAILED, now)


def _retry_step(flow: Flow, wf: Workflow, step: StepDef, now: datetime) -> list[Effect]:
    state = wf.steps[step.name]
    if state.attempts >= policy_of(flow, step.name).max_attempts:
        state.status, state.finished_at, state.next_attempt_at = StepStatus.FAILED, now, None
        return begin_compensation(flow, wf, Reason.STEP_FAILED, now)
    return [send_step_command(flow, wf, step, now)]


def send_step_command(flow: Flow, wf: Workflow, step: StepDef, now: datetime) -> Command:
    state = wf.steps[step.name]
    state.attempts += 1
    state.command_id = state.command_id or command_id(wf.correlation_id, f"step:{step.name}")
    wait = backoff(flow.command_timeout_seconds, state.attempts, state.command_id)
    state.next_attempt_at = now + wait
    data: dict[str, Any] = {}
    for t in (flow.start_event, *step.reacts_to):
        data.update(wf.seen.get(t, ("", {}))[1])
    cause = wf.seen.get(step.reacts_to[-1], (wf.start_message_id, {}))[0]
    return Command(step.participant, step.command or "", data, state.command_id, state.attempts,
                   now + wait, cause)


def _add_compensation(flow: Flow, wf: Workflow, step_name: str, first: bool = False) -> None:
    if step_name in wf.compensations:
        return
    comp_def = flow.step(step_name).compensation
    assert comp_def is not None
    positions = [c.position for c in wf.compensations.values()]
    position = (min(positions, default=1) - 1) if first else (max(positions, default=-1) + 1)
    wf.compensations[step_name] = Compensation(
        step_name, position, comp_def.command, command_id(wf.correlation_id, f"comp:{step_name}")
    )


def _compensation_done(wf: Workflow, step_name: str, now: datetime) -> list[Effect]:
    """A success answer. One that arrives after the compensation gave up (an attempt's success
    outrunning an earlier attempt's `_failed`) still counts: the work was done. A workflow left
    needing attention for nothing else goes back to compensating what remains."""
    comp = wf.compensations.get(step_name)
    if comp is None or comp.status == CompensationStatus.DONE:
        return []
    gave_up = comp.status == CompensationStatus.FAILED
    comp.status, comp.finished_at, comp.next_attempt_at = CompensationStatus.DONE, now, None
    wf.steps[step_name].status = StepStatus.COMPENSATED
    if gave_up and wf.status == WorkflowStatus.NEEDS_ATTENTION and all(
            c.status != CompensationStatus.FAILED for c in wf.compensations.values()):
        wf.status = WorkflowStatus.COMPENSATING
        return [Announce(announce.COMPENSATING, wf.status, wf.reason)]
    return []


def _compensation_failed(flow: Flow, wf: Workflow, step_name: str, now: datetime,
                         answered: bool = False) -> list[Effect]:
    """A `_failed` answer (retried when its policy says) or a timeout (now); after the last, give up."""
    comp = wf.compensations.get(step_name)
    if comp is None or comp.status != CompensationStatus.SENT:
        return []
    policy = policy_of(flow, step_name, compensation=True)
    if comp.attempts < policy.max_attempts and answered:
        comp.next_attempt_at = now + after_refusal(policy, comp.attempts, comp.command_id)
        return []
    if comp.attempts < policy.max_attempts:
        return [send_compensation(flow, wf, comp, now)]
    comp.status, comp.finished_at, comp.next_attempt_at = CompensationStatus.FAILED, now, None
    wf.status = WorkflowStatus.NEEDS_ATTENTION
    return [Announce(announce.NEEDS_ATTENTION, wf.status, wf.reason)]


def send_compensation(flow: Flow, wf: Workflow, comp: Compensation, now: datetime) -> Command:
    comp.status, comp.sent_at = CompensationStatus.SENT, comp.sent_at or now
    comp.attempts += 1
    wait = backoff(flow.command_timeout_seconds, comp.attempts, comp.command_id)
    comp.next_attempt_at = now + wait
    step = wf.steps[comp.step]
    result = step.result or {"id": wf.start_message_id, "data": {}}
    data = {**result["data"], "reason": wf.reason or ""}
    return Command(flow.step(comp.step).participant, comp.command, data, comp.command_id,
                   comp.attempts, now + wait, result["id"])


def advance(flow: Flow, wf: Workflow, now: datetime) -> list[Effect]:
    if wf.status == WorkflowStatus.RUNNING:
        return _advance_running(flow, wf, now)
    if wf.status != WorkflowStatus.PAUSED:
        # "active" means prerequisites met, whatever the workflow's state: arrivals after it
        # completed or began compensating still move steps along, though nothing is issued.
        _activate_ready(flow, wf, now, issue=False)
    if wf.status == WorkflowStatus.COMPENSATING:
        return _advance_compensating(flow, wf, now)
    return []


def _advance_running(flow: Flow, wf: Workflow, now: datetime) -> list[Effect]:
    effects = _activate_ready(flow, wf, now, issue=True)
    if all(wf.steps[n].status in (StepStatus.DONE, StepStatus.SKIPPED) for n in flow.completes_when):
        wf.status, wf.finished_at = WorkflowStatus.COMPLETED, now
        effects.append(Announce(announce.COMPLETED, wf.status, None))
    return effects


def _activate_ready(flow: Flow, wf: Workflow, now: datetime, issue: bool) -> list[Effect]:
    effects: list[Effect] = []
    ready = _ready(flow, wf)
    while ready:
        for step in ready:
            effects += _activate(flow, wf, step, now, issue)
        ready = _ready(flow, wf)  # a step skipped by its condition may unblock others
    return effects


def _ready(flow: Flow, wf: Workflow) -> list[StepDef]:
    return [s for s in flow.steps if wf.steps[s.name].status == StepStatus.PENDING
            and all(arrived(flow, wf, t) for t in s.reacts_to)]


def arrived(flow: Flow, wf: Workflow, message_type: str) -> bool:
    """Whether what waits for this event may go on: it was received and its step did not fail on
    it (a `fails_when` verdict), or the step that emits it was skipped (by an operator, or by its
    condition)."""
    producers = [wf.steps[s.name].status for s in flow.steps if s.done_on == message_type]
    if StepStatus.SKIPPED in producers:
        return True
    return message_type in wf.seen and StepStatus.FAILED not in producers


def _activate(flow: Flow, wf: Workflow, step: StepDef, now: datetime, issue: bool) -> list[Effect]:
    state = wf.steps[step.name]
    if step.when and not _matches(step.when, _trigger_data(wf, step)):
        state.status, state.finished_at = StepStatus.SKIPPED, now  # its condition is false: never started
        return []
    state.status, state.started_at = StepStatus.ACTIVE, now
    state.deadline = now + timedelta(seconds=step.sla_seconds)
    if step.kind == COMMAND_STEP and issue:
        return [send_step_command(flow, wf, step, now)]
    return []  # an event step waits for its participant, an approval step for a signal


def _trigger_data(wf: Workflow, step: StepDef) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for t in step.reacts_to:
        data.update(wf.seen.get(t, ("", {}))[1])
    return data


def _matches(condition: tuple[tuple[str, Any], ...], data: dict[str, Any]) -> bool:
    return all(data.get(name) == value for name, value in condition)


def _advance_compensating(flow: Flow, wf: Workflow, now: datetime) -> list[Effect]:
    ordered = sorted(wf.compensations.values(), key=lambda c: c.position)
    if any(c.status == CompensationStatus.SENT for c in ordered):
        return []
    waiting = [c for c in ordered if c.status == CompensationStatus.PENDING]
    if waiting:
        return [send_compensation(flow, wf, waiting[0], now)]
    if any(s.status == StepStatus.ACTIVE and s.next_attempt_at is not None for s in wf.steps.values()):
        return []  # a step at work may still finish and owe a compensation
    wf.status, wf.finished_at = WorkflowStatus.COMPENSATED, now
    return [Announce(announce.COMPENSATED, wf.status, wf.reason)]


def _check_deadlines(flow: Flow, wf: Workflow, now: datetime) -> list[Effect]:
    late = wf.deadline is not None and now >= wf.deadline
    late = late or any(
        s.status == StepStatus.ACTIVE and s.deadline is not None and now >= s.deadline
        for s in wf.steps.values()
    )
    return begin_compensation(flow, wf, Reason.SLA_BREACHED, now) if late else []


def _command_overdue(state: Step, now: datetime) -> bool:
    due = state.next_attempt_at
    return state.status == StepStatus.ACTIVE and due is not None and now >= due


def _overdue(item: Step | Compensation, now: datetime) -> bool:
    return item.next_attempt_at is not None and now >= item.next_attempt_at
