"""What each workflow, step and transition contributes to the SLA report, as plain values.

A fact holds what its entity's state alone decides (no clock): its outcome flags and duration.
What only the clock decides (a running workflow or an unanswered step past its deadline) is the
report's live part, counted from the base tables. The rules are `report_outcomes`' SQL, here for
one workflow in memory: the store writes a fact whenever it changes, with the rollup's delta.

Durations are whole milliseconds (the wire's precision). The bucket of a duration is its upper
bound, inclusive: the value itself below 100 ms, else rounded up to two significant digits
(at most 10 % wide), 0 for any non-positive one; every bound of `reports.BUCKETS` is a bucket's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from controller.db.tables import FLAGS
from controller.domain import lifecycle as lc
from controller.domain.statuses import CompensationStatus, Reason, StepStatus, WorkflowStatus

WORKFLOW, STEP, TRANSITION = "w", "s", "t"
UNTIMED = -1
TERMINAL = (WorkflowStatus.COMPLETED, WorkflowStatus.COMPENSATED, WorkflowStatus.NEEDS_ATTENTION)
IN_FLIGHT = (WorkflowStatus.RUNNING, WorkflowStatus.PAUSED, WorkflowStatus.COMPENSATING)
STEP_COMPLETED = (StepStatus.DONE, StepStatus.COMPENSATED)
_MS = timedelta(milliseconds=1)


class Fact(NamedTuple):
    """A tuple: the tracker makes two sets per workflow it changes and compares them, and a
    tuple is made and compared in C (a frozen dataclass cost about three times as much)."""

    correlation_id: str
    kind: str
    item: str
    flow: str
    name: str
    to_type: str
    participant: str
    started_at: datetime
    duration_ms: int | None
    flags: tuple[int, ...]  # in the order of `tables.FLAGS`

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.item

    @property
    def subject(self) -> tuple[str, str, str, str, str]:
        return self.flow, self.kind, self.name, self.to_type, self.participant

    @property
    def hour(self) -> int:
        return hour_of(self.started_at)

    @property
    def bucket(self) -> int:
        return UNTIMED if self.duration_ms is None else bucket_of(self.duration_ms)

    def row(self) -> dict[str, object]:
        """As a row of `report_facts`."""
        row: dict[str, object] = {
            "correlation_id": self.correlation_id, "item": self.item, "flow": self.flow,
            "kind": self.kind, "name": self.name, "to_type": self.to_type,
            "participant": self.participant, "started_at": self.started_at, "hour": self.hour,
            "duration_ms": self.duration_ms, "bucket": self.bucket}
        row.update(zip(FLAGS, self.flags, strict=True))
        return row


def hour_of(moment: datetime) -> int:
    return int(moment.timestamp()) // 3600


def bucket_of(ms: int) -> int:
    if ms <= 0:
        return 0
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return -(-ms // scale) * scale


def milliseconds(start: datetime, end: datetime) -> int:
    return round((end - start) / _MS)


def of_workflow(wf: lc.Workflow) -> dict[tuple[str, str], Fact]:
    """The facts of a workflow and of each of its steps that counts for something, by (kind, item).

    A step that has not started (nor been skipped with a flag set) has none: its fact would count
    nothing but a row, and written at every kickoff it was the largest statement of the write path.
    The report lists the flow's declared steps whatever their facts (`sla.step_rows`)."""
    facts = [_workflow(wf), *(f for f in (_step(wf, s) for s in wf.steps.values()) if _counts(f))]
    return {f.key: f for f in facts}


def _counts(fact: Fact) -> bool:
    """Whether a step's fact adds anything but a row: a flag or a duration."""
    return fact.duration_ms is not None or any(fact.flags)


def transition(wf_flow: str, started_at: datetime, correlation_id: str, cause_type: str,
               cause_at: datetime, effect_id: str, effect_type: str, source: str,
               effect_at: datetime) -> Fact:
    """A message (the effect) and the message it names as its cause."""
    return Fact(correlation_id, TRANSITION, effect_id, wf_flow, cause_type, effect_type, source,
                started_at, milliseconds(cause_at, effect_at), _NO_FLAGS)


# A fact's flags are built by position, in the order of `tables.FLAGS` (a call by name per flag
# was a third of the tracker's fact work); tests/unit/test_report_facts.py reads them back by name.
_NO_FLAGS = (0,) * len(FLAGS)


def _workflow(wf: lc.Workflow) -> Fact:
    done = wf.status == WorkflowStatus.COMPLETED
    late = done and _after(wf.finished_at, wf.deadline)
    flags = (
        1, int(done), int(wf.status == WorkflowStatus.COMPENSATED), 0,
        int(wf.status == WorkflowStatus.NEEDS_ATTENTION), int(wf.status in IN_FLIGHT),
        int(wf.reason == Reason.SLA_BREACHED or late),
        int(done and (wf.deadline is None or _at_or_before(wf.finished_at, wf.deadline))),
        int(wf.status in TERMINAL),
    )
    timed = done and wf.finished_at is not None
    d = milliseconds(wf.started_at, wf.finished_at) if timed and wf.finished_at else None
    return Fact(wf.correlation_id, WORKFLOW, "", wf.flow, "", "", "", wf.started_at, d, flags)


def _step(wf: lc.Workflow, s: lc.Step) -> Fact:
    completed = s.status in STEP_COMPLETED
    breached = _step_breached(wf, s)
    # A skipped step (its `when` false, or an operator's skip) is neither met nor missed: judged
    # are only steps that started and did not end skipped, so `started` counts all that are judged.
    judgeable = s.started_at is not None and s.status != StepStatus.SKIPPED
    flags = (
        int(s.started_at is not None), int(completed), int(s.status == StepStatus.COMPENSATED),
        int(s.status == StepStatus.FAILED), int(_compensation_failed(wf, s.name)), 0,
        int(breached),
        int(completed and s.finished_at is not None
            and (s.deadline is None or s.finished_at <= s.deadline)),
        int(judgeable and (s.finished_at is not None or breached)),
    )
    d = None
    if completed and s.started_at is not None and s.finished_at is not None:
        d = milliseconds(s.started_at, s.finished_at)
    return Fact(wf.correlation_id, STEP, s.name, wf.flow, s.name, "", "", wf.started_at, d, flags)


def _step_breached(wf: lc.Workflow, s: lc.Step) -> bool:
    """Ended (not skipped) after its deadline, or never ended and the workflow stopped waiting for
    it after that deadline (unless a failure or cancellation stopped it). While the workflow still waits,
    only the clock can tell: `stopped_waiting` is None and the report counts it live."""
    if s.started_at is None or s.deadline is None or s.status == StepStatus.SKIPPED:
        return False
    if s.finished_at is not None:
        return s.finished_at > s.deadline
    stop = stopped_waiting(wf)
    return waited(wf) and stop is not None and stop > s.deadline


def stopped_waiting(wf: lc.Workflow) -> datetime | None:
    """Its first compensation command, else its end; None while it still waits."""
    sent = [c.sent_at for c in wf.compensations.values() if c.sent_at is not None]
    return min(sent) if sent else wf.finished_at


def waited(wf: lc.Workflow) -> bool:
    return wf.reason is None or wf.reason == Reason.SLA_BREACHED


def _compensation_failed(wf: lc.Workflow, step: str) -> bool:
    comp = wf.compensations.get(step)
    return comp is not None and comp.status == CompensationStatus.FAILED


def _after(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and b is not None and a > b


def _at_or_before(a: datetime | None, b: datetime) -> bool:
    return a is not None and a <= b


Delta = dict[tuple[object, ...], list[int]]


def deltas(removed: Iterable[Fact], added: Iterable[Fact]) -> Delta:
    """The rollup's change, by (subject..., hour, bucket): [rows, n, *FLAGS]; zero sums dropped."""
    found: Delta = {}
    width = 2 + len(FLAGS)
    for sign, facts in ((-1, removed), (1, added)):
        for f in facts:
            key = (f.flow, f.kind, f.name, f.to_type, f.participant, f.hour, f.bucket)
            sums = found.get(key)
            if sums is None:
                sums = found[key] = [0] * width
            sums[0] += sign
            if f.duration_ms is not None:
                sums[1] += sign
            for i, v in enumerate(f.flags, 2):
                if v:
                    sums[i] += sign * v
    return {k: v for k, v in found.items() if any(v)}
