"""The SLA report's facts, pure (controller/reporting/facts.py): what a workflow, its steps and a
transition contribute, from plain lifecycle objects driven by hand, and the rollup's deltas. The
same facts written by the store and checked against a rebuild: tests/integration/test_reports.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.flows import load_catalog
from contracts.registry import default_registry
from controller.db.tables import FLAGS
from controller.domain import interventions
from controller.domain import lifecycle as lc
from controller.domain.statuses import Reason, StepStatus, WorkflowStatus
from controller.reporting import facts
from tests.unit.test_lifecycle import T0, Run, at, begin, only_command, orchestrated


def flags(fact: facts.Fact) -> set[str]:
    return {name for name, value in zip(FLAGS, fact.flags, strict=True) if value}


def workflow_fact(run: Run) -> facts.Fact:
    return facts.of_workflow(run.wf)[(facts.WORKFLOW, "")]


def step_fact(run: Run, step: str) -> facts.Fact:
    return facts.of_workflow(run.wf)[(facts.STEP, step)]


def completed_at(seconds: float, sla_seconds: int | None = None) -> Run:
    run, _ = begin(sla_seconds=sla_seconds)
    run.send("inventory.reserved", at(1))
    run.send("payment.charged", at(2))
    run.send("shipment.scheduled", at(seconds))
    assert run.wf.status == WorkflowStatus.COMPLETED
    return run


# -- buckets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ms", "bucket"), [(-5, 0), (0, 0), (1, 1), (99, 99), (100, 100),
                                            (101, 110), (999, 1000), (1234, 1300), (99_999, 100_000)])
def test_a_duration_goes_to_the_bucket_of_its_upper_bound(ms: int, bucket: int) -> None:
    assert facts.bucket_of(ms) == bucket


@given(st.integers(min_value=100, max_value=10**9))
def test_a_bucket_is_at_most_ten_percent_wide(ms: int) -> None:
    bucket = facts.bucket_of(ms)
    assert ms <= bucket <= ms * 1.1
    assert facts.bucket_of(bucket) == bucket  # a bucket's bound is its own bucket


# -- a workflow's facts ----------------------------------------------------------------------------


def test_a_workflow_completed_within_its_sla() -> None:
    run = completed_at(20)
    found = facts.of_workflow(run.wf)
    assert set(found) == {(facts.WORKFLOW, ""), *((facts.STEP, s) for s in run.wf.steps)}
    wf = workflow_fact(run)
    assert flags(wf) == {"started", "completed", "sla_met", "sla_judged"}
    assert (wf.duration_ms, wf.bucket, wf.flow, wf.started_at) == (20_000, 20_000, run.wf.flow, T0)
    assert wf.hour == int(T0.timestamp()) // 3600
    reserve = step_fact(run, "reserve_inventory")
    assert flags(reserve) == {"started", "completed", "sla_met", "sla_judged"}
    assert reserve.duration_ms == 1000 and reserve.name == "reserve_inventory"
    shipment = step_fact(run, "schedule_shipment")
    assert shipment.duration_ms == 18_000  # active from the payment, at 2 s, to 20 s
    confirmation = step_fact(run, "send_confirmation")  # active, not required: not judged yet
    assert flags(confirmation) == {"started"} and confirmation.duration_ms is None


def test_a_workflow_completed_after_its_deadline_is_breached() -> None:
    run = completed_at(20, sla_seconds=10)
    wf = workflow_fact(run)
    assert flags(wf) == {"started", "completed", "breached", "sla_judged"}
    shipment = step_fact(run, "schedule_shipment")
    assert "breached" not in flags(shipment) and "sla_met" in flags(shipment)


def test_a_running_workflow_is_in_flight_and_not_judged() -> None:
    run, _ = begin()
    run.send("inventory.reserved", at(3))
    wf = workflow_fact(run)
    assert flags(wf) == {"started", "in_flight"}
    assert wf.duration_ms is None and wf.bucket == facts.UNTIMED
    # pending, not even started: it counts nothing, so it has no fact
    assert (facts.STEP, "schedule_shipment") not in facts.of_workflow(run.wf)


def test_a_step_that_ended_after_its_deadline_is_breached() -> None:
    run, _ = begin()
    run.send("inventory.reserved", at(61))  # its step SLA is 60 s
    reserve = step_fact(run, "reserve_inventory")
    assert flags(reserve) == {"started", "completed", "breached", "sla_judged"}
    assert reserve.duration_ms == 61_000


def test_a_failed_step_and_the_compensation_it_caused() -> None:
    run, _ = begin(orchestrated())
    run.send("inventory.reserved", at(1))
    release = only_command(run.send("payment.charge_failed", at(2)))
    run.answer(release, at(4))
    assert run.wf.status == WorkflowStatus.COMPENSATED
    assert flags(workflow_fact(run)) == {"started", "compensated", "sla_judged"}
    assert flags(step_fact(run, "charge_payment")) == {"started", "failed", "sla_judged"}
    reserve = step_fact(run, "reserve_inventory")
    assert flags(reserve) == {"started", "completed", "compensated", "sla_met", "sla_judged"}


def test_a_compensation_given_up_needs_attention_on_its_step() -> None:
    run, _ = begin(orchestrated(command_max_attempts=1))
    run.send("inventory.reserved", at(1))
    release = only_command(run.send("payment.charge_failed", at(2)))
    run.answer(release, at(3), failed=True)
    assert run.wf.status == WorkflowStatus.NEEDS_ATTENTION
    assert flags(workflow_fact(run)) == {"started", "needs_attention", "sla_judged"}
    assert "needs_attention" in flags(step_fact(run, "reserve_inventory"))


def test_a_step_left_waiting_past_its_deadline_is_breached_only_if_the_workflow_waited() -> None:
    run, _ = begin(orchestrated())
    run.tick(at(301))  # the workflow's SLA: breached, compensation begins with nothing done
    assert run.wf.reason == Reason.SLA_BREACHED
    assert "breached" in flags(step_fact(run, "charge_payment"))
    assert "breached" in flags(workflow_fact(run))
    cancelled, _ = begin(orchestrated())
    lc.begin_compensation(cancelled.flow, cancelled.wf, Reason.CANCELLED, at(301))
    assert facts.waited(cancelled.wf) is False
    assert "breached" not in flags(step_fact(cancelled, "charge_payment"))


def test_a_step_skipped_by_its_condition_is_neither_met_nor_missed() -> None:
    flow = load_catalog(default_registry()).latest("price_change")
    run, effects = begin(flow)
    evaluate = only_command(effects)
    run.send("price.evaluated", at(1), data={**evaluate.data, "verdict": "approve", "violations": []})
    assert run.step("approve").status == StepStatus.SKIPPED  # its `when` (verdict: review) is false
    # not started, so not judged either: it counts nothing, so it has no fact
    assert (facts.STEP, "approve") not in facts.of_workflow(run.wf)


def test_a_step_skipped_by_an_operator_is_neither_met_nor_missed() -> None:
    run, _ = begin()
    interventions.skip(run.flow, run.wf, "reserve_inventory", at(61))  # past its 60 s deadline
    assert flags(step_fact(run, "reserve_inventory")) == {"started"}


def test_a_transition_is_timed_from_its_cause() -> None:
    fact = facts.transition("order_fulfillment", T0, "wf-1", "order.placed", at(1), "m-2",
                            "payment.charged", "payment", at(1.25))
    assert (fact.kind, fact.item, fact.name, fact.to_type, fact.participant) == (
        facts.TRANSITION, "m-2", "order.placed", "payment.charged", "payment")
    assert (fact.duration_ms, fact.bucket) == (250, 250)
    assert flags(fact) == set()
    row = fact.row()
    assert set(FLAGS) <= set(row) and row["hour"] == fact.hour and row["bucket"] == 250


# -- the rollup's deltas ----------------------------------------------------------------------------


def test_deltas_move_a_fact_between_rollup_rows_and_drop_what_cancels_out() -> None:
    run, _ = begin()
    before = list(facts.of_workflow(run.wf).values())
    assert facts.deltas(before, before) == {}
    run.send("inventory.reserved", at(1))
    after = list(facts.of_workflow(run.wf).values())
    changed = facts.deltas(before, after)
    reserve_before = next(f for f in before if f.key == (facts.STEP, "reserve_inventory"))
    reserve_after = next(f for f in after if f.key == (facts.STEP, "reserve_inventory"))
    assert set(changed) == {(*reserve_before.subject, reserve_before.hour, facts.UNTIMED),
                            (*reserve_after.subject, reserve_after.hour, 1000)}
    out, into = changed[(*reserve_before.subject, reserve_before.hour, facts.UNTIMED)], \
        changed[(*reserve_after.subject, reserve_after.hour, 1000)]
    assert out[:2] == [-1, 0] and into[:2] == [1, 1]  # rows, and timed rows (n)
    assert sum(out) + sum(into) == sum(reserve_after.flags) - sum(reserve_before.flags) + 1
