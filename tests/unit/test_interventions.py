"""The interventions' decisions, pure (controller/domain/interventions.py): each applies to the
statuses it names and mutates the workflow, or raises NotApplicable and leaves it exactly as it was.
Workflows are plain lifecycle objects driven by hand; the same table through the REST API, Redis
and a database is tests/integration/test_interventions.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta

import pytest
import yaml

from contracts.flows import Flow, load_flow
from contracts.registry import default_registry
from controller.domain import interventions as iv
from controller.domain import lifecycle as lc
from controller.domain.statuses import CompensationStatus, Reason, StepStatus, WorkflowStatus
from tests.unit.test_lifecycle import T0, Run, at, begin, only_command, orchestrated

# A human gate after the reservation; its outcomes borrow order_fulfillment's registered events.
GATED = load_flow(yaml.safe_load("""
name: gated_order
version: 1
start_event: order.placed
search_attributes: [order_id]
command_max_attempts: 1
steps:
  - name: reserve_inventory
    participant: inventory
    reacts_to: [order.placed]
    done_on: inventory.reserved
    failed_on: inventory.reservation_failed
    compensation: {command: inventory.release, answer: inventory.released}
  - name: manager_approval
    kind: approval
    participant: manager
    reacts_to: [inventory.reserved]
    done_on: notification.sent
    failed_on: shipment.scheduling_failed
"""), default_registry(), "gated")


def fragile() -> Flow:
    """order_fulfillment whose commands get one attempt: a failed compensation needs attention."""
    return orchestrated(command_max_attempts=1)


def running(flow: Flow | None = None) -> Run:
    run, _ = begin(flow or fragile())
    run.send("inventory.reserved", at(1))
    return run


def paused() -> Run:
    run = running()
    iv.pause(run.flow, run.wf, at(2))
    return run


def completed() -> Run:
    run = running()
    shipment = only_command(run.send("payment.charged", at(2)))
    run.answer(shipment, at(3))
    return run


def compensating() -> Run:
    run = running()
    run.send("payment.charge_failed", at(2))
    assert run.wf.status == WorkflowStatus.COMPENSATING
    return run


def compensated() -> Run:
    run, _ = begin(fragile())
    run.send("inventory.reserved", at(1))
    release = only_command(run.send("payment.charge_failed", at(2)))
    run.answer(release, at(3))
    return run


def needs_attention() -> Run:
    run, _ = begin(fragile())
    run.send("inventory.reserved", at(1))
    release = only_command(run.send("payment.charge_failed", at(2)))
    run.answer(release, at(3), failed=True)
    return run


BUILDERS: dict[str, Callable[[], Run]] = {
    "running": running, "paused": paused, "completed": completed, "compensating": compensating,
    "compensated": compensated, "needs_attention": needs_attention,
}
NOW = at(30)
Decide = Callable[[Run], list[lc.Effect]]
# Each intervention, and the status it leaves behind for each status it applies to.
ACTIONS: dict[str, tuple[Decide, dict[str, str]]] = {
    "cancel": (lambda r: iv.cancel(r.flow, r.wf, NOW),
               {"running": "compensating", "paused": "compensating"}),
    "compensate": (lambda r: iv.compensate(r.flow, r.wf, NOW),
                   {"running": "compensating", "paused": "compensating",
                    "needs_attention": "compensating"}),
    "retry": (lambda r: iv.retry(r.flow, r.wf, NOW),
              {"running": "running", "needs_attention": "compensating",
               "compensating": "compensating"}),
    "skip": (lambda r: iv.skip(r.flow, r.wf, "charge_payment", NOW),
             {"running": "running", "paused": "paused"}),
    "pause": (lambda r: iv.pause(r.flow, r.wf, NOW), {"running": "paused"}),
    "resume": (lambda r: iv.resume(r.flow, r.wf, NOW), {"paused": "running"}),
    "deadline": (lambda r: iv.move_deadline(r.flow, r.wf, NOW, extend_seconds=60),
                 {"running": "running", "paused": "paused"}),
}
CASES = [(action, status) for action in ACTIONS for status in BUILDERS]


def test_the_builders_make_what_they_say() -> None:
    for status, make in BUILDERS.items():
        assert make().wf.status == status


@pytest.mark.parametrize(("action", "status"), CASES, ids=[f"{a}-on-{s}" for a, s in CASES])
def test_every_intervention_on_every_status(action: str, status: str) -> None:
    decide, applies = ACTIONS[action]
    run = BUILDERS[status]()
    before = copy.deepcopy(run.wf)
    if status not in applies:
        with pytest.raises(iv.NotApplicable) as refused:
            decide(run)
        assert str(refused.value).startswith(f"workflow {run.wf.correlation_id} is {status}; ")
        assert run.wf == before, f"a refused {action} changed the workflow"
        return
    decide(run)
    assert run.wf.status == applies[status]


# -- what each decision does where it applies -------------------------------------------------------


def test_cancel_compensates_what_was_done_with_the_reason_cancelled() -> None:
    run = running()
    effects = iv.cancel(run.flow, run.wf, NOW)
    assert (run.wf.status, run.wf.reason) == (WorkflowStatus.COMPENSATING, Reason.CANCELLED)
    release = only_command(effects)
    assert (release.participant, release.type) == ("inventory", "inventory.release")
    assert lc.Announce("workflow.compensating", WorkflowStatus.COMPENSATING, Reason.CANCELLED) in effects
    assert run.wf.compensations["reserve_inventory"].status == CompensationStatus.SENT


def test_cancel_while_paused_unpauses() -> None:
    run = paused()
    iv.cancel(run.flow, run.wf, NOW)
    assert run.wf.paused_at is None and run.wf.status == WorkflowStatus.COMPENSATING


def test_compensate_on_needs_attention_sends_the_failed_compensation_again() -> None:
    run = needs_attention()
    assert run.wf.compensations["reserve_inventory"].status == StepStatus.FAILED
    effects = iv.compensate(run.flow, run.wf, NOW)
    assert effects[0] == lc.Announce("workflow.compensating", WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert only_command(effects).type == "inventory.release"
    assert run.wf.compensations["reserve_inventory"].status == CompensationStatus.SENT


def test_retry_re_emits_the_trigger_of_an_active_event_step_caused_by_the_original() -> None:
    run = running()
    effects = iv.retry(run.flow, run.wf, NOW)
    [emit] = effects
    assert isinstance(emit, lc.Emit)
    assert (emit.type, emit.causation_id) == ("order.placed", run.wf.start_message_id)
    assert emit.data == run.wf.seen["order.placed"][1]


def test_retry_of_a_named_step_that_is_not_active_does_not_apply() -> None:
    run = running()
    before = copy.deepcopy(run.wf)
    with pytest.raises(iv.NotApplicable, match="has no active step named reserve_inventory"):
        iv.retry(run.flow, run.wf, NOW, step="reserve_inventory")
    assert run.wf == before


def test_retry_while_compensating_resends_the_compensation_waiting_for_its_answer() -> None:
    run = compensating()
    attempts = run.wf.compensations["reserve_inventory"].attempts
    assert only_command(iv.retry(run.flow, run.wf, NOW)).type == "inventory.release"
    assert run.wf.compensations["reserve_inventory"].attempts == attempts + 1


def test_skip_marks_the_step_skipped_and_what_waited_for_it_goes_on() -> None:
    run = running()
    effects = iv.skip(run.flow, run.wf, "charge_payment", NOW)
    assert run.wf.steps["charge_payment"].status == StepStatus.SKIPPED
    assert run.wf.steps["charge_payment"].finished_at == NOW
    assert only_command(effects).type == "shipment.schedule"  # its join is complete
    assert run.wf.steps["schedule_shipment"].status == StepStatus.ACTIVE


def test_skip_of_a_done_or_unknown_step_does_not_apply() -> None:
    run = running()
    before = copy.deepcopy(run.wf)
    with pytest.raises(iv.NotApplicable, match=r"step reserve_inventory of workflow .* is done"):
        iv.skip(run.flow, run.wf, "reserve_inventory", NOW)
    with pytest.raises(iv.UnknownStep, match="has no step 'gift_wrap'"):
        iv.skip(run.flow, run.wf, "gift_wrap", NOW)
    assert run.wf == before


def test_resume_moves_every_deadline_by_the_time_spent_paused() -> None:
    run = running()
    iv.pause(run.flow, run.wf, at(10))
    assert run.wf.paused_at == at(10)
    deadline, step_deadline = run.wf.deadline, run.wf.steps["charge_payment"].deadline
    assert deadline and step_deadline
    iv.resume(run.flow, run.wf, at(70))
    assert (run.wf.status, run.wf.paused_at) == (WorkflowStatus.RUNNING, None)
    assert run.wf.deadline == deadline + timedelta(seconds=60)
    assert run.wf.steps["charge_payment"].deadline == step_deadline + timedelta(seconds=60)


def test_resume_compensates_a_failure_that_arrived_while_paused() -> None:
    run = paused()
    run.send("payment.charge_failed", at(5))
    assert run.wf.status == WorkflowStatus.PAUSED
    effects = iv.resume(run.flow, run.wf, NOW)
    assert (run.wf.status, run.wf.reason) == (WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert only_command(effects).type == "inventory.release"


def test_the_deadline_is_set_or_extended() -> None:
    run = running()
    deadline = run.wf.deadline
    assert deadline
    assert iv.move_deadline(run.flow, run.wf, NOW, extend_seconds=90) == []
    assert run.wf.deadline == deadline + timedelta(seconds=90)
    iv.move_deadline(run.flow, run.wf, NOW, deadline=T0 + timedelta(days=1))
    assert run.wf.deadline == T0 + timedelta(days=1)


# -- signals answer an approval -----------------------------------------------------------------------


def gated() -> Run:
    run, _ = begin(GATED)
    run.send("inventory.reserved", at(1))
    assert run.wf.steps["manager_approval"].status == StepStatus.ACTIVE
    return run


@pytest.mark.parametrize(("name", "outcome"), [("approve", "notification.sent"),
                                               ("reject", "shipment.scheduling_failed")])
def test_a_signal_emits_the_approvals_outcome_once(name: str, outcome: str) -> None:
    run = gated()
    [emit] = iv.signal(run.flow, run.wf, name, NOW, data={"channel": "console"}, why="over budget")
    assert isinstance(emit, lc.Emit)
    assert (emit.type, emit.causation_id) == (outcome, run.wf.start_message_id)
    assert emit.data["order_id"] == "o-1" and emit.data["channel"] == "console"
    assert emit.data.get("reason") == ("over budget" if name == "reject" else None)
    again = iv.signal(run.flow, copy.deepcopy(run.wf), name, NOW)
    assert [e.message_id for e in again if isinstance(e, lc.Emit)] == [emit.message_id]


def test_a_signal_with_no_approval_waiting_or_of_another_name_does_not_apply() -> None:
    cases: list[tuple[Run, str, str]] = [
        (running(), "approve", "has no approval step waiting"),
        (gated(), "escalate", "accepts the signals approve and reject, not escalate"),
        (paused(), "approve", "is paused; signal approve applies only to running"),
    ]
    for run, name, says in cases:
        before = copy.deepcopy(run.wf)
        with pytest.raises(iv.NotApplicable, match=says):
            iv.signal(run.flow, run.wf, name, NOW)
        assert run.wf == before
