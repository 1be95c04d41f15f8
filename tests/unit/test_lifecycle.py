"""The workflow lifecycle as a pure state machine: no fixtures, no I/O, `now` passed explicitly."""

from __future__ import annotations

import copy
import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.flows import SHIPPED, load_catalog
from contracts import lifecycle_events as announce
from contracts.flows import Flow, load_flow
from contracts.registry import default_registry
from controller.domain import lifecycle as lc
from controller.domain.retrying import after_refusal
from controller.domain.statuses import CompensationStatus, Reason, StepStatus, WorkflowStatus

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@cache
def reference() -> Flow:
    return load_catalog(default_registry()).latest("order_fulfillment")


def orchestrated(retry: dict[str, Any] | None = None, **overrides: Any) -> Flow:
    """order_fulfillment with `schedule_shipment` switched to a command step (shipment.schedule),
    with `retry` as its policy if given."""
    document: dict[str, Any] = yaml.safe_load((SHIPPED / "order_fulfillment.yaml").read_text("utf-8"))
    step = document["steps"][2]
    step.update(kind="command", command="shipment.schedule", **({"retry": retry} if retry else {}))
    del step["failed_on"]  # a command step is failed by its `_failed` answer
    document.update(overrides)
    return load_flow(document, default_registry(), "orchestrated")


# What each event of the reference flow carries, enough for compensations to use.
DATA: dict[str, dict[str, Any]] = {
    "inventory.reserved": {"order_id": "o-1", "reservations": [
        {"reservation_id": "r-1", "product_id": "SKU-1", "quantity": 1}]},
    "payment.charged": {"order_id": "o-1", "payment_id": "p-1", "amount": 10.0, "currency": "EUR"},
    "shipment.scheduled": {"order_id": "o-1", "shipment_id": "s-1", "estimated_delivery": "2026-11-25"},
    "notification.sent": {"order_id": "o-1", "channel": "email"},
}
# The answer a participant gives to each compensation command.
ANSWER = {"inventory.release": "inventory.released", "payment.refund": "payment.refunded",
          "shipment.cancel": "shipment.cancelled", "shipment.schedule": "shipment.scheduled"}
PLACED = {"order_id": "o-1", "customer_id": "c-1", "total_amount": 10.0, "currency": "EUR",
          "items": [{"product_id": "SKU-1", "quantity": 1, "unit_price": 10.0}]}


@dataclass
class Run:
    """One workflow driven by hand; `effects` keeps everything the lifecycle asked for."""

    flow: Flow
    wf: lc.Workflow
    ids: dict[str, str] = field(default_factory=dict)  # message type -> id of its first delivery

    def send(self, message_type: str, now: datetime, message_id: str | None = None,
             data: dict[str, Any] | None = None) -> list[lc.Effect]:
        mid = message_id or self.ids.get(message_type) or str(uuid.uuid4())
        self.ids.setdefault(message_type, mid)
        payload = data if data is not None else DATA.get(message_type, {"order_id": "o-1", "reason": "no"})
        return lc.on_message(self.flow, self.wf, message_type, mid, payload, now)

    def tick(self, now: datetime) -> list[lc.Effect]:
        return lc.on_time(self.flow, self.wf, now)

    def answer(self, command: lc.Command, now: datetime, *, failed: bool = False) -> list[lc.Effect]:
        answer = command.type + "_failed" if failed else ANSWER[command.type]
        return self.send(answer, now, message_id=str(uuid.uuid4()))

    def step(self, name: str) -> lc.Step:
        return self.wf.steps[name]

    def statuses(self) -> dict[str, str]:
        return {name: s.status for name, s in self.wf.steps.items()}


def begin(flow: Flow | None = None, now: datetime = T0, sla_seconds: int | None = None
          ) -> tuple[Run, list[lc.Effect]]:
    flow = flow or reference()
    cid = f"wf-{uuid.uuid4().hex[:12]}"
    wf, effects = lc.start(flow, cid, str(uuid.uuid4()), dict(PLACED), now, sla_seconds)
    return Run(flow, wf), effects


def due_of(item: lc.Step | lc.Compensation) -> datetime:
    assert item.next_attempt_at is not None
    return item.next_attempt_at


def commands(effects: list[lc.Effect]) -> list[lc.Command]:
    return [e for e in effects if isinstance(e, lc.Command)]


def only_command(effects: list[lc.Effect]) -> lc.Command:
    [command] = commands(effects)
    return command


# -- the happy path ------------------------------------------------------------------------------


def test_the_happy_path_of_order_fulfillment() -> None:
    run, effects = begin()
    assert effects == []  # event steps: the controller only watches
    assert run.wf.status == WorkflowStatus.RUNNING and run.wf.deadline == at(300)
    assert run.statuses() == {"reserve_inventory": "active", "charge_payment": "active",
                              "schedule_shipment": "pending", "send_confirmation": "pending"}
    assert run.step("reserve_inventory").deadline == at(60)
    assert run.step("reserve_inventory").started_at == T0

    assert run.send("inventory.reserved", at(5)) == []
    assert run.step("reserve_inventory").status == StepStatus.DONE
    assert run.step("reserve_inventory").finished_at == at(5)
    assert run.step("schedule_shipment").status == StepStatus.PENDING  # the join waits for both

    assert run.send("payment.charged", at(10)) == []
    shipment = run.step("schedule_shipment")
    assert (shipment.status, shipment.started_at, shipment.deadline) == (StepStatus.ACTIVE, at(10), at(70))
    assert run.step("send_confirmation").status == StepStatus.ACTIVE

    effects = run.send("shipment.scheduled", at(20))
    assert effects == [lc.Announce(announce.COMPLETED, WorkflowStatus.COMPLETED, None)]
    assert (run.wf.status, run.wf.reason, run.wf.finished_at) == (WorkflowStatus.COMPLETED, None, at(20))
    assert run.step("schedule_shipment").result == {
        "id": run.ids["shipment.scheduled"], "data": DATA["shipment.scheduled"]}
    assert lc.next_due(run.wf) is None
    assert run.tick(at(10_000)) == []  # a completed workflow never breaches

    assert run.send("notification.sent", at(25)) == []  # not required, still recorded
    assert run.statuses() == dict.fromkeys(
        ["reserve_inventory", "charge_payment", "schedule_shipment", "send_confirmation"], StepStatus.DONE)
    assert run.wf.status == WorkflowStatus.COMPLETED and run.wf.compensations == {}


def test_the_join_needs_both_halves_in_either_order() -> None:
    run, _ = begin()
    run.send("payment.charged", at(1))
    assert run.step("schedule_shipment").status == StepStatus.PENDING
    assert run.step("send_confirmation").status == StepStatus.ACTIVE  # reacts to payment.charged alone
    run.send("inventory.reserved", at(2))
    assert run.step("schedule_shipment").status == StepStatus.ACTIVE
    assert run.step("schedule_shipment").deadline == at(62)


# -- step failures and compensation --------------------------------------------------------------


def compensate_to_the_end(run: Run, effects: list[lc.Effect], start: float) -> list[str]:
    """Answer each compensation command as it comes; the commands, in the order they were sent."""
    sent = []
    now = start
    while commands(effects):
        command = only_command(effects)  # one at a time
        sent.append(command.type)
        now += 1
        assert run.tick(at(now - 0.5)) == []  # nothing else goes out while one is outstanding
        effects = run.answer(command, at(now))
    return sent


@pytest.mark.parametrize(("done", "failure", "expected_commands", "expected_steps"), [
    (["payment.charged"], "inventory.reservation_failed", ["payment.refund"],
     {"reserve_inventory": "failed", "charge_payment": "compensated", "schedule_shipment": "pending"}),
    (["inventory.reserved"], "payment.charge_failed", ["inventory.release"],
     {"reserve_inventory": "compensated", "charge_payment": "failed", "schedule_shipment": "pending"}),
    (["inventory.reserved", "payment.charged"], "shipment.scheduling_failed",
     ["payment.refund", "inventory.release"],
     {"reserve_inventory": "compensated", "charge_payment": "compensated", "schedule_shipment": "failed"}),
    (["payment.charged", "inventory.reserved"], "shipment.scheduling_failed",
     ["inventory.release", "payment.refund"],
     {"reserve_inventory": "compensated", "charge_payment": "compensated", "schedule_shipment": "failed"}),
], ids=["reserve_fails", "charge_fails", "schedule_fails", "schedule_fails_after_charge_then_reserve"])
def test_a_failed_step_compensates_what_was_done_in_reverse_order(
        done: list[str], failure: str, expected_commands: list[str], expected_steps: dict[str, str]) -> None:
    run, _ = begin()
    for i, message_type in enumerate(done, 1):
        assert commands(run.send(message_type, at(i))) == []
    effects = run.send(failure, at(10))
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert (run.wf.status, run.wf.reason) == (WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert compensate_to_the_end(run, effects, 10) == expected_commands
    if run.wf.status == WorkflowStatus.COMPENSATING:  # charge_payment still at work: waited for
        assert run.step("charge_payment").status == StepStatus.ACTIVE
        assert run.tick(at(10 + run.flow.command_timeout_seconds)) == [
            lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    assert (run.wf.status, run.wf.reason) == (WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)
    assert run.wf.finished_at is not None
    assert {k: v for k, v in run.statuses().items() if k != "send_confirmation"} == expected_steps
    assert [c.status for c in run.wf.compensations.values()] == (
        [CompensationStatus.DONE] * len(expected_commands))
    assert lc.next_due(run.wf) is None


def test_the_compensation_command_carries_the_step_result_and_a_deterministic_id() -> None:
    run, _ = begin()
    run.send("inventory.reserved", at(1))
    run.send("payment.charged", at(2))
    effects = run.send("shipment.scheduling_failed", at(3))
    refund = only_command(effects)
    expected_id = lc.command_id(run.wf.correlation_id, "comp:charge_payment")
    assert refund == lc.Command(
        participant="payment", type="payment.refund",
        data={**DATA["payment.charged"], "reason": Reason.STEP_FAILED}, command_id=expected_id, attempt=1,
        deadline=at(3) + lc.backoff(run.flow.command_timeout_seconds, 1, expected_id),
        causation_id=run.ids["payment.charged"],
    )
    assert expected_id == lc.command_id(run.wf.correlation_id, "comp:charge_payment")  # stable
    assert expected_id != lc.command_id(run.wf.correlation_id, "comp:reserve_inventory")
    assert run.wf.compensations["reserve_inventory"].status == CompensationStatus.PENDING
    assert run.wf.compensations["charge_payment"].status == CompensationStatus.SENT


def test_a_workflow_with_nothing_done_is_compensated_once_its_steps_at_work_answer() -> None:
    run, _ = begin()
    effects = run.send("payment.charge_failed", at(1))
    assert effects == [lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)]
    assert lc.next_due(run.wf) == at(1 + reference().command_timeout_seconds)  # waits for inventory
    assert run.send("inventory.reservation_failed", at(2)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    assert run.wf.compensations == {}


def test_a_step_finishing_while_compensation_waits_for_it_is_compensated_before_the_end() -> None:
    run, _ = begin()
    run.send("payment.charge_failed", at(1))
    release = only_command(run.send("inventory.reserved", at(3)))
    assert release.type == "inventory.release"
    assert run.wf.status == WorkflowStatus.COMPENSATING
    assert run.answer(release, at(4)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    assert run.wf.steps["reserve_inventory"].status == StepStatus.COMPENSATED


def test_compensation_waits_for_a_step_at_work_one_command_timeout_then_reopens_if_it_finishes() -> None:
    run, _ = begin()
    run.send("payment.charge_failed", at(1))
    settle = at(1 + reference().command_timeout_seconds)
    assert run.tick(settle - MS) == []
    assert run.tick(settle) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    assert lc.next_due(run.wf) is None
    effects = run.send("inventory.reserved", at(30))  # late: compensated all the same
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert only_command(effects).type == "inventory.release"


# -- deadlines -------------------------------------------------------------------------------------


def test_a_step_deadline_breach_compensates_with_sla_breached() -> None:
    run, _ = begin()
    run.send("inventory.reserved", at(5))
    assert lc.next_due(run.wf) == at(60)  # charge_payment's deadline
    assert run.tick(at(60) - MS) == []
    effects = run.tick(at(60))
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.SLA_BREACHED)
    release = only_command(effects)
    assert (release.type, release.data["reason"]) == ("inventory.release", Reason.SLA_BREACHED)
    assert (run.wf.status, run.wf.reason) == (WorkflowStatus.COMPENSATING, Reason.SLA_BREACHED)
    assert lc.next_due(run.wf) == run.wf.compensations["reserve_inventory"].next_attempt_at
    assert run.answer(release, at(61)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.SLA_BREACHED)]


def test_the_whole_workflow_deadline_breach_compensates_with_sla_breached() -> None:
    run, _ = begin(sla_seconds=30)
    assert run.wf.deadline == at(30)
    assert lc.next_due(run.wf) == at(30)  # sooner than any step's 60 s
    run.send("inventory.reserved", at(5))
    run.send("payment.charged", at(6))
    assert lc.next_due(run.wf) == at(30)
    assert run.tick(at(30) - MS) == []
    effects = run.tick(at(30))
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.SLA_BREACHED)
    assert compensate_to_the_end(run, effects, 30) == ["payment.refund", "inventory.release"]
    # schedule_shipment is still at work and may yet ship: waited for one command timeout
    assert run.wf.status == WorkflowStatus.COMPENSATING
    assert lc.next_due(run.wf) == at(30 + run.flow.command_timeout_seconds)
    assert run.tick(at(30 + run.flow.command_timeout_seconds)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.SLA_BREACHED)]


def test_next_due_follows_the_earliest_deadline() -> None:
    run, _ = begin(sla_seconds=600)
    assert lc.next_due(run.wf) == at(60)
    run.send("inventory.reserved", at(10))
    assert lc.next_due(run.wf) == at(60)  # charge_payment, active since T0
    run.send("payment.charged", at(20))
    assert lc.next_due(run.wf) == at(80)  # schedule_shipment and send_confirmation, since 20 s
    run.send("shipment.scheduled", at(30))
    assert lc.next_due(run.wf) is None


def test_the_flow_default_sla_applies_without_sla_seconds() -> None:
    run, _ = begin()
    assert run.wf.deadline == at(300)
    run.send("inventory.reserved", at(1))
    run.send("payment.charged", at(2))
    run.send("notification.sent", at(3))
    # schedule_shipment's own deadline (62 s) comes first
    assert run.tick(at(61)) == []
    assert run.tick(at(62))[0] == lc.Announce(
        announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.SLA_BREACHED)


# -- compensation retries --------------------------------------------------------------------------


def compensating_with_release_sent(now: float = 10) -> tuple[Run, lc.Command]:
    run, _ = begin()
    run.send("inventory.reserved", at(1))
    release = only_command(run.send("payment.charge_failed", at(now)))
    assert (release.type, release.attempt) == ("inventory.release", 1)
    return run, release


def test_a_failed_compensation_is_retried_only_when_due_then_needs_attention() -> None:
    run, release = compensating_with_release_sent()
    comp = run.wf.compensations["reserve_inventory"]
    max_attempts = run.flow.command_max_attempts
    assert max_attempts == 5
    policy = run.flow.step("reserve_inventory").compensation.retry  # type: ignore[union-attr]
    for attempt in range(1, max_attempts):
        refused_at = due_of(comp) - 2 * MS  # before its timeout
        assert run.answer(release, refused_at, failed=True) == []  # not retried on the spot
        due = comp.next_attempt_at
        assert due == refused_at + after_refusal(policy, attempt, release.command_id)
        assert lc.next_due(run.wf) == due
        assert (comp.status, comp.attempts) == (CompensationStatus.SENT, attempt)
        assert run.tick(due - MS) == []
        retry = only_command(run.tick(due))
        assert (retry.command_id, retry.type) == (release.command_id, release.type)
        assert retry.attempt == attempt + 1
        assert retry.data == release.data and retry.causation_id == release.causation_id
        assert retry.deadline == due + lc.backoff(run.flow.command_timeout_seconds, attempt + 1,
                                                  release.command_id)
        assert comp.next_attempt_at == retry.deadline
    assert comp.attempts == max_attempts
    effects = run.answer(release, at(10_000), failed=True)
    # the announcement is the alert: the alerter consumes workflow.needs_attention
    assert effects == [
        lc.Announce(announce.NEEDS_ATTENTION, WorkflowStatus.NEEDS_ATTENTION, Reason.STEP_FAILED)]
    assert (run.wf.status, comp.status) == (WorkflowStatus.NEEDS_ATTENTION, CompensationStatus.FAILED)
    assert run.step("reserve_inventory").status == StepStatus.DONE  # not compensated: an operator must act
    assert lc.next_due(run.wf) is None
    assert run.tick(at(100_000)) == []


def test_an_unanswered_compensation_is_retried_on_timeout_then_needs_attention() -> None:
    run, release = compensating_with_release_sent()
    comp = run.wf.compensations["reserve_inventory"]
    for attempt in range(2, run.flow.command_max_attempts + 1):
        due = comp.next_attempt_at
        assert due is not None
        assert run.tick(due - MS) == []
        retry = only_command(run.tick(due))
        assert (retry.command_id, retry.attempt) == (release.command_id, attempt)
        assert due - comp.sent_at > timedelta(0)  # type: ignore[operator]
    last_due = comp.next_attempt_at
    assert last_due is not None
    assert run.tick(last_due - MS) == []
    effects = run.tick(last_due)
    assert effects == [
        lc.Announce(announce.NEEDS_ATTENTION, WorkflowStatus.NEEDS_ATTENTION, Reason.STEP_FAILED)]
    assert run.wf.status == WorkflowStatus.NEEDS_ATTENTION and comp.status == CompensationStatus.FAILED
    assert comp.attempts == run.flow.command_max_attempts


def test_backoff_grows_with_each_attempt_and_is_capped() -> None:
    waits = [lc.backoff(10.0, n, "k") for n in range(1, 10)]
    for n, wait in enumerate(waits, 1):
        base = min(10.0 * 2 ** (n - 1), 160.0)
        assert timedelta(seconds=base) <= wait <= timedelta(seconds=base * 1.25)
    assert lc.backoff(10.0, 3, "k") == lc.backoff(10.0, 3, "k")  # no randomness


def test_a_retried_compensation_answered_late_still_completes() -> None:
    run, release = compensating_with_release_sent()
    due = run.wf.compensations["reserve_inventory"].next_attempt_at
    assert due is not None
    retry = only_command(run.tick(due))
    assert retry.attempt == 2
    assert run.answer(release, due + MS) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]



def test_a_success_after_the_compensation_gave_up_resumes_it() -> None:
    """The last attempt is sent; an earlier attempt's `_failed` arrives late and the
    compensation gives up; then the last attempt's success arrives: the work was done."""
    run, _ = begin()
    run.send("inventory.reserved", at(1))
    run.send("payment.charged", at(2))
    refund = only_command(run.send("shipment.scheduling_failed", at(3)))
    assert refund.type == "payment.refund"
    comp = run.wf.compensations["charge_payment"]
    while comp.attempts < run.flow.command_max_attempts:
        due = comp.next_attempt_at
        assert due is not None
        only_command(run.tick(due))
    last_due = comp.next_attempt_at
    assert last_due is not None
    late = last_due - MS
    assert run.answer(refund, late, failed=True) == [
        lc.Announce(announce.NEEDS_ATTENTION, WorkflowStatus.NEEDS_ATTENTION, Reason.STEP_FAILED)]
    effects = run.answer(refund, late + MS)
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    release = only_command(effects[1:])
    assert (release.type, release.attempt) == ("inventory.release", 1)
    assert (comp.status, run.step("charge_payment").status) == (
        CompensationStatus.DONE, StepStatus.COMPENSATED)
    assert run.answer(release, late + 2 * MS) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]


def test_a_success_after_giving_up_keeps_needs_attention_while_another_failed() -> None:
    run, release = compensating_with_release_sent()
    comp = run.wf.compensations["reserve_inventory"]
    while comp.attempts < run.flow.command_max_attempts:
        only_command(run.tick(comp.next_attempt_at))  # type: ignore[arg-type]
    run.tick(comp.next_attempt_at)  # type: ignore[arg-type]
    assert run.wf.status == WorkflowStatus.NEEDS_ATTENTION
    other = lc.Compensation("charge_payment", 5, "payment.refund", "c-2", status=CompensationStatus.FAILED)
    run.wf.compensations["charge_payment"] = other
    assert run.answer(release, at(100_000)) == []
    assert (run.wf.status, comp.status) == (WorkflowStatus.NEEDS_ATTENTION, CompensationStatus.DONE)

def test_a_compensation_refused_at_every_attempt_needs_attention_within_30_s_by_default() -> None:
    """The default policy (1 s, x2, at most 30 s, 5 attempts): refusals at once are retried after
    1, 2, 4 and 8 s (a quarter more at most), not after the command timeout's 10, 20, 40, 80 s."""
    run, release = compensating_with_release_sent(now=10)
    comp = run.wf.compensations["reserve_inventory"]
    assert run.flow.step("reserve_inventory").compensation.retry.max_attempts == 5  # type: ignore[union-attr]
    now, waits = at(10), []
    while not (effects := run.answer(release, now, failed=True)):
        assert comp.next_attempt_at is not None and lc.next_due(run.wf) == comp.next_attempt_at
        waits.append((comp.next_attempt_at - now).total_seconds())
        now = comp.next_attempt_at
        release = only_command(run.tick(now))
    assert effects == [
        lc.Announce(announce.NEEDS_ATTENTION, WorkflowStatus.NEEDS_ATTENTION, Reason.STEP_FAILED)]
    assert comp.attempts == 5 and len(waits) == 4
    for wait, base in zip(waits, (1, 2, 4, 8), strict=True):
        assert base <= wait <= base * 1.25
    assert now - at(10) < timedelta(seconds=30)


def test_a_refused_command_step_is_retried_by_its_policy_and_an_unanswered_one_after_its_timeout() -> None:
    policy = {"initial_interval_seconds": 2, "backoff_coefficient": 3, "max_interval_seconds": 10,
              "max_attempts": 4}
    run, _ = begin(orchestrated(retry=policy, command_timeout_seconds=5.0))
    run.send("inventory.reserved", at(1))
    first = only_command(run.send("payment.charged", at(2)))
    state = run.step("schedule_shipment")
    assert state.next_attempt_at == at(2) + lc.backoff(5.0, 1, first.command_id)  # unanswered: its timeout
    run.answer(first, at(3), failed=True)  # refused: the policy's first interval, 2 s
    assert timedelta(seconds=2) <= due_of(state) - at(3) <= timedelta(seconds=2.5)
    second = only_command(run.tick(due_of(state)))
    third = only_command(run.tick(due_of(state)))  # unanswered
    assert (second.attempt, third.attempt) == (2, 3)
    refused_at = third.deadline - timedelta(seconds=4)
    run.answer(third, refused_at, failed=True)
    assert state.next_attempt_at == refused_at + timedelta(seconds=10)  # 2 * 3 ** 2 = 18, capped at 10
    fourth = only_command(run.tick(due_of(state)))
    effects = run.answer(fourth, due_of(state), failed=True)
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert (state.status, state.attempts) == (StepStatus.FAILED, 4)


# -- late and duplicate events ---------------------------------------------------------------------


def test_a_late_done_after_compensation_began_is_compensated_too() -> None:
    run, _ = begin()
    run.send("inventory.reserved", at(5))
    release = only_command(run.tick(at(60)))  # charge_payment breached its deadline
    assert run.send("payment.charged", at(61)) == []  # compensated after the release is answered
    assert run.step("charge_payment").status == StepStatus.DONE
    assert run.wf.compensations["charge_payment"].status == CompensationStatus.PENDING
    refund = only_command(run.answer(release, at(62)))
    assert (refund.type, refund.data["reason"]) == ("payment.refund", Reason.SLA_BREACHED)
    assert run.answer(refund, at(63)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.SLA_BREACHED)]
    assert run.step("charge_payment").status == run.step("reserve_inventory").status == StepStatus.COMPENSATED


def test_a_late_done_after_compensated_reopens_compensation() -> None:
    run, _ = begin()
    run.send("inventory.reservation_failed", at(1))
    run.tick(at(1 + run.flow.command_timeout_seconds))  # charge_payment waited for, in vain
    assert run.wf.status == WorkflowStatus.COMPENSATED
    effects = run.send("payment.charged", at(30))
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    refund = only_command(effects)
    assert refund.type == "payment.refund" and refund.causation_id == run.ids["payment.charged"]
    assert (run.wf.status, run.wf.finished_at) == (WorkflowStatus.COMPENSATING, None)
    assert lc.next_due(run.wf) == run.wf.compensations["charge_payment"].next_attempt_at
    assert run.answer(refund, at(31)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    assert run.wf.finished_at == at(31)


def test_a_late_done_of_a_step_without_compensation_changes_no_status() -> None:
    run, _ = begin()
    run.send("payment.charge_failed", at(1))
    run.send("inventory.reservation_failed", at(1.5))
    assert run.wf.status == WorkflowStatus.COMPENSATED
    assert run.send("notification.sent", at(2)) == []
    assert run.wf.status == WorkflowStatus.COMPENSATED


def test_a_duplicate_done_event_changes_nothing() -> None:
    run, _ = begin()
    run.send("inventory.reserved", at(1))
    before = copy.deepcopy(run.wf)
    assert run.send("inventory.reserved", at(2)) == []  # the same message again
    assert run.wf == before
    assert run.send("inventory.reserved", at(3), message_id=str(uuid.uuid4())) == []  # re-emitted
    assert run.wf == before
    assert run.step("reserve_inventory").finished_at == at(1)


def test_duplicate_failures_and_answers_change_nothing() -> None:
    run, release = compensating_with_release_sent()
    before = copy.deepcopy(run.wf)
    assert run.send("payment.charge_failed", at(11)) == []
    assert run.wf == before
    run.answer(release, at(12))
    assert run.wf.status == WorkflowStatus.COMPENSATED
    after = copy.deepcopy(run.wf)
    assert run.answer(release, at(13)) == []
    assert run.wf == after
    assert run.answer(release, at(14), failed=True) == []  # a stale failure after success
    assert (run.wf.status, run.wf.finished_at, run.wf.steps, run.wf.compensations) == (
        after.status, after.finished_at, after.steps, after.compensations)


# -- a command step --------------------------------------------------------------------------------


def test_a_command_step_sends_its_command_when_its_prerequisites_are_met() -> None:
    run, effects = begin(orchestrated())
    assert effects == []
    assert run.send("inventory.reserved", at(1)) == []
    effects = run.send("payment.charged", at(2))
    schedule = only_command(effects)
    expected_id = lc.command_id(run.wf.correlation_id, "step:schedule_shipment")
    assert schedule == lc.Command(
        participant="shipping", type="shipment.schedule",
        data={**PLACED, **DATA["inventory.reserved"], **DATA["payment.charged"]},
        command_id=expected_id, attempt=1,
        deadline=at(2) + lc.backoff(run.flow.command_timeout_seconds, 1, expected_id),
        causation_id=run.ids["payment.charged"],
    )
    state = run.step("schedule_shipment")
    assert (state.status, state.attempts, state.command_id) == (StepStatus.ACTIVE, 1, expected_id)
    assert run.answer(schedule, at(3)) == [lc.Announce(announce.COMPLETED, WorkflowStatus.COMPLETED, None)]
    assert state.status == StepStatus.DONE


def test_a_command_step_failed_answer_is_a_failed_attempt() -> None:
    run, _ = begin(orchestrated(command_max_attempts=3))
    run.send("inventory.reserved", at(1))
    first = only_command(run.send("payment.charged", at(2)))
    state = run.step("schedule_shipment")
    for attempt in (2, 3):
        assert run.answer(first, at(2), failed=True) == []  # retried when due, not at once
        assert state.status == StepStatus.ACTIVE
        due = state.next_attempt_at
        assert due is not None and lc.next_due(run.wf) == due
        assert run.tick(due - MS) == []
        retry = only_command(run.tick(due))
        assert (retry.command_id, retry.attempt) == (first.command_id, attempt)
    effects = run.answer(first, at(30), failed=True)  # the last attempt failed too
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert only_command(effects).type == "payment.refund"
    assert state.status == StepStatus.FAILED and state.attempts == 3


def test_an_unanswered_command_step_fails_after_its_last_attempt() -> None:
    run, _ = begin(orchestrated(command_max_attempts=3, command_timeout_seconds=1.0))
    run.send("inventory.reserved", at(1))
    first = only_command(run.send("payment.charged", at(2)))
    state = run.step("schedule_shipment")
    for attempt in (2, 3):
        due = state.next_attempt_at
        assert due is not None
        assert only_command(run.tick(due)).attempt == attempt
    due = state.next_attempt_at
    assert due is not None and due < state.deadline  # type: ignore[operator]
    effects = run.tick(due)
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert only_command(effects).type == "payment.refund"
    assert state.status == StepStatus.FAILED
    assert first.command_id == state.command_id


def test_a_command_step_late_answer_after_a_retry_is_done_once() -> None:
    run, _ = begin(orchestrated())
    run.send("inventory.reserved", at(1))
    first = only_command(run.send("payment.charged", at(2)))
    due = run.step("schedule_shipment").next_attempt_at
    assert due is not None
    only_command(run.tick(due))
    assert run.answer(first, due + MS) == [lc.Announce(announce.COMPLETED, WorkflowStatus.COMPLETED, None)]
    assert run.answer(first, due + 2 * MS) == []
    assert run.step("schedule_shipment").next_attempt_at is None


def exhaust_schedule_attempts(run: Run) -> lc.Command:
    """Send schedule_shipment's command until its last attempt is out; that last attempt."""
    run.send("inventory.reserved", at(1))
    command = only_command(run.send("payment.charged", at(2)))
    state = run.step("schedule_shipment")
    while state.attempts < run.flow.command_max_attempts:
        command = only_command(run.tick(state.next_attempt_at))  # type: ignore[arg-type]
    return command


def test_a_command_step_success_after_its_last_attempt_timed_out_is_compensated() -> None:
    run, _ = begin(orchestrated(command_timeout_seconds=1.0))  # every attempt within the step's SLA
    last = exhaust_schedule_attempts(run)
    state = run.step("schedule_shipment")
    effects = run.tick(state.next_attempt_at)  # type: ignore[arg-type]  # the last attempt times out
    assert state.status == StepStatus.FAILED and run.wf.status == WorkflowStatus.COMPENSATING
    refund = only_command(effects)
    assert run.answer(last, at(50)) == []  # the work was done after all: it is owed an undo
    assert state.status == StepStatus.DONE
    assert run.wf.compensations["schedule_shipment"].status == CompensationStatus.PENDING
    cancel = only_command(run.answer(refund, at(51)))
    assert (cancel.type, cancel.causation_id) == ("shipment.cancel", run.ids["shipment.scheduled"])
    release = only_command(run.answer(cancel, at(52)))
    assert run.answer(release, at(53)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    assert state.status == StepStatus.COMPENSATED


def test_a_success_after_a_stale_failed_answer_of_an_earlier_attempt_is_compensated() -> None:
    """The last attempt is out; attempt 1's `_failed` arrives late and fails the step; then the
    last attempt succeeds. Compensation was over by then: it reopens for the step."""
    run, _ = begin(orchestrated(command_timeout_seconds=1.0))  # every attempt within the step's SLA
    last = exhaust_schedule_attempts(run)
    effects = run.answer(last, at(20), failed=True)  # in truth attempt 1's answer, delayed
    refund = only_command(effects)
    release = only_command(run.answer(refund, at(21)))
    assert run.answer(release, at(22)) == [
        lc.Announce(announce.COMPENSATED, WorkflowStatus.COMPENSATED, Reason.STEP_FAILED)]
    effects = run.answer(last, at(23))  # the last attempt's success
    assert effects[0] == lc.Announce(announce.COMPENSATING, WorkflowStatus.COMPENSATING, Reason.STEP_FAILED)
    assert only_command(effects).type == "shipment.cancel"
    assert run.step("schedule_shipment").status == StepStatus.DONE


# -- order does not matter -------------------------------------------------------------------------

SCENARIOS: dict[str, list[str]] = {
    "happy": ["inventory.reserved", "payment.charged", "shipment.scheduled", "notification.sent"],
    "happy_unconfirmed": ["inventory.reserved", "payment.charged", "shipment.scheduled"],
    "reserve_fails": ["inventory.reservation_failed", "payment.charged", "notification.sent"],
    "charge_fails": ["inventory.reserved", "payment.charge_failed"],
    "schedule_fails": ["inventory.reserved", "payment.charged", "shipment.scheduling_failed",
                       "notification.sent"],
    "both_fail": ["inventory.reservation_failed", "payment.charge_failed"],
}


def final_state(run: Run) -> tuple[str, str | None, dict[str, str], dict[str, str]]:
    return (run.wf.status, run.wf.reason, run.statuses(),
            {name: c.status for name, c in run.wf.compensations.items()})


def play(events: list[str], choose_answer: list[bool] | None = None) -> Run:
    """Deliver `events` in order; answer each command (at once, or interleaved per `choose_answer`)."""
    run, _ = begin()
    ids = {t: str(uuid.uuid4()) for t in events}
    inbox, outstanding = list(events), list[lc.Command]()
    choices = iter(choose_answer or [])
    clock = 0
    while inbox or outstanding:
        clock += 1
        answer_now = outstanding and (not inbox or next(choices, True))
        if answer_now:
            effects = run.answer(outstanding.pop(0), at(clock))
        else:
            message_type = inbox.pop(0)
            effects = run.send(message_type, at(clock), message_id=ids[message_type])
        outstanding += commands(effects)
    return run


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_order_of_a_workflow_events_gives_the_same_final_statuses(scenario: str) -> None:
    events = SCENARIOS[scenario]
    expected = final_state(play(events))
    for order in itertools.permutations(events):  # includes a done before its predecessors' dones
        assert final_state(play(list(order))) == expected, order


@pytest.mark.parametrize("scenario", SCENARIOS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_permutation_with_duplicates_gives_the_same_final_statuses(scenario: str, data: st.DataObject
                                                                        ) -> None:
    events = SCENARIOS[scenario]
    expected = final_state(play(events))
    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="duplicates")
    order = data.draw(st.permutations(events + duplicates), label="order")
    interleaving = data.draw(st.lists(st.booleans(), max_size=20), label="answer first")
    assert final_state(play(order, interleaving)) == expected
