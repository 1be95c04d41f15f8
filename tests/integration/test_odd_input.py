"""Odd but valid input answers 422 naming the field, never 500: a time at the edge of the
calendar, a deadline that resuming would move past year 9999, integers JSON here cannot carry."""

from __future__ import annotations

import time

from tests.integration.test_interventions import Baton, assert_problem, baton, order_input

__all__ = ["baton"]  # the fixture


def test_a_time_at_the_edge_of_the_calendar_is_a_422_naming_the_filter(baton: Baton) -> None:
    for name, moment in (("started_after", "0001-01-01T00:00:00+01:00"),
                         ("started_before", "9999-12-31T23:59:59-01:00")):
        problem = assert_problem(baton.get("/v1/workflows", **{name: moment}), 422)
        assert list(problem["errors"]) == [name], problem
        assert "year" in problem["errors"][name][0], problem


def test_resume_that_would_move_the_deadline_past_9999_is_a_422_naming_deadline(baton: Baton) -> None:
    cid = baton.start()
    at_the_end = {"deadline": "9999-12-31T23:59:59.999Z", "reason": "never mind the SLA"}
    assert baton.post(f"/v1/workflows/{cid}/deadline", at_the_end).status_code == 200
    assert baton.post(f"/v1/workflows/{cid}/pause", {"reason": "hold"}).status_code == 200
    time.sleep(0.01)  # paused for some time: resuming moves the deadline by it
    problem = assert_problem(baton.post(f"/v1/workflows/{cid}/resume", {"reason": "go on"}), 422)
    assert list(problem["errors"]) == ["deadline"], problem
    assert baton.workflow(cid)["status"] == "paused", "a refused resume changes nothing"
    extend = {"extend_seconds": 86400, "reason": "longer"}
    problem = assert_problem(baton.post(f"/v1/workflows/{cid}/deadline", extend), 422)
    assert list(problem["errors"]) == ["extend_seconds"], problem


def test_an_integer_beyond_64_bits_in_input_is_a_422_naming_its_path(baton: Baton) -> None:
    items = [{"product_id": "SKU-1", "quantity": 2**64, "unit_price": 5.0}]
    body = {"flow": "order_fulfillment", "input": order_input(items=items, note=-(2**63) - 1)}
    problem = assert_problem(baton.post("/v1/workflows", body), 422)
    assert sorted(problem["errors"]) == ["input.items.0.quantity", "input.note"], problem
    keyed = {"flow": "order_fulfillment", "input": order_input(note=10**30)}
    response = baton.client.post("/v1/workflows", json=keyed, headers={
        "Authorization": "Bearer t-olga", "Idempotency-Key": "odd-1"})
    assert list(assert_problem(response, 422)["errors"]) == ["input.note"]
    # the widest integers orjson writes are still accepted
    fine = {"flow": "order_fulfillment", "input": order_input(note=2**64 - 1)}
    assert baton.post("/v1/workflows", fine).status_code == 201
