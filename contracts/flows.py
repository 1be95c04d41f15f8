"""A flow definition: its schema, the frozen objects it loads into, and the checks a flow must pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from contracts import lifecycle_events
from contracts.envelope import COMMAND, NAME_PATTERN, TYPE_PATTERN
from contracts.errors import FlowDefinitionError
from contracts.payloads import Registry, failed_type

EVENT_STEP, COMMAND_STEP, APPROVAL_STEP = "event", "command", "approval"
_TYPE = validate.Regexp(TYPE_PATTERN, error="must be a message type such as payment.charged")
_NAME = validate.Regexp(NAME_PATTERN, error="must be lower case letters, digits, _ or -")
_LIFECYCLE = frozenset({lifecycle_events.COMPLETED, lifecycle_events.COMPENSATING,
                        lifecycle_events.COMPENSATED, lifecycle_events.NEEDS_ATTENTION})


@dataclass(frozen=True)
class RetryPolicy:
    """How the controller sends a command again after its `<command>_failed` answer (contract
    v1.1). An unanswered attempt is sent again when the flow's `command_timeout_seconds`, doubled
    at each attempt, has passed; `max_attempts` bounds both."""

    initial_interval_seconds: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval_seconds: float = 30.0
    max_attempts: int = 5

    def interval(self, attempt: int) -> float:
        """Seconds from the refusal of `attempt` (from 1) to the next attempt."""
        grown = self.initial_interval_seconds * self.backoff_coefficient ** (max(attempt, 1) - 1)
        return min(grown, self.max_interval_seconds)


@dataclass(frozen=True)
class Compensation:
    command: str
    answer: str
    retry: RetryPolicy = RetryPolicy()

    @property
    def failed_answer(self) -> str:
        return failed_type(self.command)


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    participant: str
    reacts_to: tuple[str, ...]
    done_on: str
    failed_on: str | None
    command: str | None
    sla_seconds: int
    required: bool
    compensation: Compensation | None
    # Conditions on event data, as (field, value) pairs that must all be equal:
    # `when` on the triggering events (false: the step is skipped), `fails_when` on its done event.
    when: tuple[tuple[str, Any], ...] = ()
    fails_when: tuple[tuple[str, Any], ...] = ()
    retry: RetryPolicy | None = None  # a command step's; the others send nothing to retry


@dataclass(frozen=True)
class Flow:
    name: str
    version: int
    start_event: str
    sla_seconds: int
    steps: tuple[Step, ...]
    completes_when: tuple[str, ...]
    search_attributes: tuple[str, ...]
    alert_webhook: str | None
    command_timeout_seconds: float
    command_max_attempts: int
    description: str = ""
    # Events whose `data.progress` (an object of counts) is the workflow's progress: the latest of
    # them (controller/domain/progress.py) is what GET /v1/workflows/<cid> shows (a bulk flow's
    # SKUs done, failed...). The controller reads them whether or not a step waits for one.
    progress_on: tuple[str, ...] = ()

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def event_types(self) -> tuple[str, ...]:
        """Every event type whose stream the controller reads for this flow."""
        seen: dict[str, None] = {self.start_event: None}
        for step in self.steps:
            for t in (*step.reacts_to, step.done_on, step.failed_on):
                if t:
                    seen[t] = None
            if step.compensation:
                seen[step.compensation.answer] = None
                seen[step.compensation.failed_answer] = None
        seen.update(dict.fromkeys(self.progress_on))  # a progress report that no step waits for
        return tuple(seen)

    def message_types(self) -> tuple[str, ...]:
        """Every message type the flow names, events and commands, in the order it names them."""
        seen: dict[str, None] = {self.start_event: None}
        for step in self.steps:
            seen.update(dict.fromkeys(t for t in (*step.reacts_to, step.command, step.done_on,
                                                  step.failed_on) if t))
            if step.compensation:
                comp = step.compensation
                seen.update(dict.fromkeys((comp.command, comp.answer, comp.failed_answer)))
        seen.update(dict.fromkeys(self.progress_on))
        return tuple(seen)


class RetrySchema(Schema):
    """Each field defaults to RetryPolicy's, `max_attempts` to the flow's `command_max_attempts`."""

    class Meta:
        unknown = RAISE

    initial_interval_seconds = fields.Float(validate=validate.Range(min=0.1, max=3600))
    backoff_coefficient = fields.Float(validate=validate.Range(min=1, max=10))
    max_interval_seconds = fields.Float(validate=validate.Range(min=0.1, max=86400))
    max_attempts = fields.Int(strict=True, validate=validate.Range(min=1, max=100))

    @validates_schema
    def _cap_above_start(self, data: dict[str, Any], **kwargs: Any) -> None:
        start = data.get("initial_interval_seconds", RetryPolicy.initial_interval_seconds)
        if start > data.get("max_interval_seconds", RetryPolicy.max_interval_seconds):
            raise ValidationError(f"must be at least initial_interval_seconds ({start:g})",
                                  "max_interval_seconds")


class CompensationSchema(Schema):
    class Meta:
        unknown = RAISE

    command = fields.Str(required=True, validate=_TYPE)
    answer = fields.Str(required=True, validate=_TYPE)
    retry = fields.Nested(RetrySchema, load_default=None)


class StepSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.Str(required=True, validate=_NAME)
    kind = fields.Str(load_default=EVENT_STEP,
                      validate=validate.OneOf([EVENT_STEP, COMMAND_STEP, APPROVAL_STEP]))
    participant = fields.Str(required=True, validate=_NAME)
    reacts_to = fields.List(fields.Str(validate=_TYPE), required=True,
                            validate=validate.Length(min=1))
    done_on = fields.Str(required=True, validate=_TYPE)
    failed_on = fields.Str(load_default=None, validate=_TYPE)
    command = fields.Str(load_default=None, validate=_TYPE)
    sla_seconds = fields.Int(load_default=None, strict=True, validate=validate.Range(min=1))
    required = fields.Bool(load_default=True)
    compensation = fields.Nested(CompensationSchema, load_default=None)
    when = fields.Dict(keys=fields.Str(), values=fields.Raw(), load_default=dict)
    fails_when = fields.Dict(keys=fields.Str(), values=fields.Raw(), load_default=dict)
    retry = fields.Nested(RetrySchema, load_default=None)

    @validates_schema
    def _retry_of_a_command(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("retry") is not None and data.get("kind") != COMMAND_STEP:
            raise ValidationError("only a step of kind command is retried by the controller; an "
                                  "event step's participant retries its own work", "retry")


class FlowSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.Str(required=True, validate=_NAME)
    version = fields.Int(required=True, strict=True, validate=validate.Range(min=1))
    description = fields.Str(load_default="")
    start_event = fields.Str(required=True, validate=_TYPE)
    sla_seconds = fields.Int(load_default=300, strict=True, validate=validate.Range(min=1))
    step_sla_seconds = fields.Int(load_default=60, strict=True, validate=validate.Range(min=1))
    steps = fields.List(fields.Nested(StepSchema), required=True, validate=validate.Length(min=1))
    completes_when = fields.List(fields.Str(validate=_NAME), load_default=None)
    search_attributes = fields.List(fields.Str(validate=_NAME), load_default=list)
    alert_webhook = fields.Url(load_default=None, require_tld=False)
    command_timeout_seconds = fields.Float(load_default=10.0, validate=validate.Range(min=0.1))
    command_max_attempts = fields.Int(load_default=5, strict=True,
                                      validate=validate.Range(min=1, max=100))
    progress_on = fields.List(fields.Str(validate=_TYPE), load_default=list)
    # Message types the file declares: read and registered by `contracts.declarations` before
    # any flow is loaded, since a flow may use a type another file declares.
    messages = fields.Raw(load_default=None)


_SCHEMA = FlowSchema()


def load_flow(document: Mapping[str, Any], registry: Registry, source: str) -> Flow:
    """Validate a parsed flow document; errors name `source` and the field at fault."""
    try:
        raw = _SCHEMA.load(dict(document))
    except ValidationError as exc:
        raise FlowDefinitionError(source, dict(exc.messages_dict)) from exc
    flow = _build(raw)
    problems = _check(flow, registry)
    if problems:
        raise FlowDefinitionError(source, problems)
    return flow


def _build(raw: dict[str, Any]) -> Flow:
    steps = tuple(_build_step(s, raw["step_sla_seconds"], raw["command_max_attempts"])
                  for s in raw["steps"])
    required = tuple(s.name for s in steps if s.required)
    return Flow(
        name=raw["name"], version=raw["version"], description=raw["description"],
        start_event=raw["start_event"], sla_seconds=raw["sla_seconds"], steps=steps,
        completes_when=tuple(raw["completes_when"] or required),
        search_attributes=tuple(raw["search_attributes"]), alert_webhook=raw["alert_webhook"],
        command_timeout_seconds=raw["command_timeout_seconds"],
        command_max_attempts=raw["command_max_attempts"], progress_on=tuple(raw["progress_on"]),
    )


def _build_step(raw: dict[str, Any], default_sla: int, max_attempts: int) -> Step:
    kind = raw["kind"]
    failed_on = raw["failed_on"]
    if kind == COMMAND_STEP and raw["command"] and not failed_on:
        failed_on = failed_type(raw["command"])
    comp = raw["compensation"]
    return Step(
        name=raw["name"], kind=kind, participant=raw["participant"],
        reacts_to=tuple(raw["reacts_to"]), done_on=raw["done_on"], failed_on=failed_on,
        command=raw["command"], sla_seconds=raw["sla_seconds"] or default_sla,
        required=raw["required"],
        compensation=comp and Compensation(comp["command"], comp["answer"],
                                           _policy(comp["retry"], max_attempts)),
        when=tuple(sorted(raw["when"].items())), fails_when=tuple(sorted(raw["fails_when"].items())),
        retry=_policy(raw["retry"], max_attempts) if kind == COMMAND_STEP else None,
    )


def _policy(raw: dict[str, Any] | None, max_attempts: int) -> RetryPolicy:
    """The effective policy: what the flow gives, RetryPolicy's defaults for the rest."""
    return RetryPolicy(**{"max_attempts": max_attempts, **(raw or {})})


def _check(flow: Flow, registry: Registry) -> dict[str, object]:
    problems: dict[str, object] = {}
    names = [s.name for s in flow.steps]
    if len(set(names)) != len(names):
        problems["steps"] = ["step names must be unique"]
    emitted = {flow.start_event} | {s.done_on for s in flow.steps}
    emitted |= {s.failed_on for s in flow.steps if s.failed_on}
    _check_type(registry, flow.start_event, "event", "start_event", problems)
    for i, step in enumerate(flow.steps):
        problems.update(_check_step(step, f"steps.{i}", registry, emitted))
    strangers = [t for t in flow.progress_on if not registry.knows(t) or registry.kind(t) != "event"]
    if strangers:
        problems["progress_on"] = [f"{t} is not a declared event" for t in strangers]
    unknown = [n for n in flow.completes_when if n not in names]
    if unknown:
        problems["completes_when"] = [f"no such step: {n}" for n in unknown]
    for at, why in (*_check_outcomes(flow), *_check_reachable(flow)):
        if at not in problems:  # a type already refused says enough about that field
            problems[at] = [why]
    return problems


def _check_step(step: Step, at: str, registry: Registry, emitted: set[str]) -> dict[str, object]:
    problems: dict[str, object] = {}
    for t in step.reacts_to:
        _check_type(registry, t, "event", f"{at}.reacts_to", problems)
        if t not in emitted:
            problems[f"{at}.reacts_to"] = [f"{t} is emitted by no step of this flow"]
    _check_type(registry, step.done_on, "event", f"{at}.done_on", problems)
    if step.failed_on:
        _check_type(registry, step.failed_on, "event", f"{at}.failed_on", problems)
    if step.kind == COMMAND_STEP:
        if not step.command:
            problems[f"{at}.command"] = ["a step of kind command needs the command it sends"]
        else:
            _check_type(registry, step.command, COMMAND, f"{at}.command", problems)
    elif step.command:
        problems[f"{at}.command"] = [f"only steps of kind command send one, not {step.kind}"]
    if step.compensation:
        comp = step.compensation
        _check_type(registry, comp.command, COMMAND, f"{at}.compensation.command", problems)
        _check_type(registry, comp.answer, "event", f"{at}.compensation.answer", problems)
    return problems


def _check_outcomes(flow: Flow) -> list[tuple[str, str]]:
    """An event that reports a step's outcome must come from that step's participant (or, for an
    approval, its signal) for that step alone: not the start event, not a lifecycle event of the
    workflow, not what starts the step, not another step's outcome."""
    problems: list[tuple[str, str]] = []
    owner: dict[str, tuple[str, str]] = {}
    for i, step in enumerate(flow.steps):
        for name, t in _outcomes(step):
            if t == flow.start_event:
                why = f"{t} is the flow's start event, published when a workflow starts"
            elif t in _LIFECYCLE:
                why = f"{t} is announced by the controller about the workflow, not by {step.participant}"
            elif t in step.reacts_to:
                why = f"{t} is also what the step reacts to: what starts it would finish it"
            elif t in owner:
                why = f"{t} is already the {owner[t][1]} of step {owner[t][0]}: one event, one step"
            else:
                owner[t] = (step.name, name)
                continue
            problems.append((f"steps.{i}.{name}", why))
    return problems


def _outcomes(step: Step) -> list[tuple[str, str]]:
    found = [("done_on", step.done_on)]
    if step.failed_on:
        found.append(("failed_on", step.failed_on))
    if step.compensation:
        found.append(("compensation.answer", step.compensation.answer))
    return found


def _check_reachable(flow: Flow) -> list[tuple[str, str]]:
    """Steps that can never start: as the lifecycle does, a step starts once every event it
    reacts to has arrived, from the start or from a step that started (one skipped by its `when`
    releases those waiting on its done_on all the same)."""
    arrived = {flow.start_event}
    waiting = dict(enumerate(flow.steps))
    while ready := [i for i, s in waiting.items() if set(s.reacts_to) <= arrived]:
        for i in ready:
            step = waiting.pop(i)
            arrived |= {t for t in (step.done_on, step.failed_on) if t}
    return [(f"steps.{i}.reacts_to",
             "the step can never start: nothing that can run emits "
             + ", ".join(t for t in step.reacts_to if t not in arrived))
            for i, step in waiting.items()]


def _check_type(registry: Registry, message_type: str, kind: str, at: str,
                problems: dict[str, object]) -> None:
    if not registry.knows(message_type):
        problems[at] = [f"{message_type} is not a declared message type"]
    elif registry.kind(message_type) != kind:
        problems[at] = [f"{message_type} is a {registry.kind(message_type)}, not a {kind}"]
