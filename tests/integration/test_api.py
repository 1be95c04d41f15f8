"""The REST API through Flask's test client, on real Redis and real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from werkzeug.test import TestResponse

from config.settings import load_settings
from contracts.envelope import Envelope, decode_fields, new_event
from contracts.streams import Keys
from contracts.timefmt import format_ts, parse_ts, utcnow
from controller.api.app import create_app
from controller.api.health import NOT_MIGRATED
from controller.db import migrate
from controller.service.bootstrap import build_services
from participants.runtime.loop import Options, Runtime
from tests import harness
from tests.harness import App

TOKENS = "alice:starter:t-alice,sam:starter:t-sam,vera:viewer:t-vera,otto:operator:t-otto"
ALICE, SAM, VERA, OTTO = "t-alice", "t-sam", "t-vera", "t-otto"
MAX_BODY = 8192
PROBLEM = "application/problem+json"

# A second flow, so that the `flow` filter has something to tell apart; `currency` is a search
# attribute no shipped flow declares.
QUICK_FLOW = """
name: quick_order
version: 1
start_event: order.placed
search_attributes: [order_id, currency]
steps:
  - name: charge_payment
    participant: payment
    reacts_to: [order.placed]
    done_on: payment.charged
    failed_on: payment.charge_failed
"""
FLOWS = {"quick_order": QUICK_FLOW}


def order_input(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": f"ord-{uuid.uuid4().hex[:8]}", "customer_id": "cust-gold",
        "items": [{"product_id": "SKU-001", "quantity": 2, "unit_price": 5.0}],
        "total_amount": 10.0, "currency": "EUR",
    }
    data.update(overrides)
    return data


class Api(App):
    def post(self, path: str, body: Any, token: str | None = ALICE,
             headers: dict[str, str] | None = None) -> TestResponse:
        return self.client.post(path, json=body, headers=auth(token, headers))

    def get(self, path: str, token: str | None = VERA, **query: Any) -> TestResponse:
        return self.client.get(path, headers=auth(token), query_string=query)

    def start(self, token: str = ALICE, headers: dict[str, str] | None = None,
              **body: Any) -> TestResponse:
        body.setdefault("flow", "order_fulfillment")
        body.setdefault("input", order_input())
        return self.post("/v1/workflows", body, token, headers)

    def started(self, token: str = ALICE, **body: Any) -> dict[str, Any]:
        response = self.start(token, **body)
        assert response.status_code == 201, response.get_json()
        made: dict[str, Any] = response.get_json()
        return made

    def start_events(self) -> list[Envelope]:
        found: Any = self.raw.xrange(self.keys.event_stream("order.placed"))
        return [decode_fields(f) for _, f in found]

    def runtime(self, participant: str) -> Runtime:
        options = Options(visibility_timeout=30.0, block_ms=1, linger_ms=0)
        return self.runtime_of(participant, options, "api-test")

    def emit(self, message_type: str, cid: str, data: dict[str, Any], cause: str | None = None,
             source: str = "test") -> Envelope:
        event = new_event(message_type, data, correlation_id=cid, causation_id=cause, source=source)
        self.raw.xadd(self.keys.event_stream(message_type), event.to_fields())  # type: ignore[arg-type]
        return event


def auth(token: str | None, headers: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(headers or {})
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def drain(*runtimes: Runtime) -> None:
    for _ in range(50):
        if sum(rt.poll() for rt in runtimes) == 0:
            return
    raise AssertionError("the runtimes never went quiet")


def environment(database_url: str, redis_url: str, tmp_path: Path, keys: Keys,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    return harness.environment(database_url, redis_url, tmp_path, keys, TOKENS, FLOWS,
                               {"BATON_MAX_BODY_BYTES": str(MAX_BODY), **(extra or {})})


@contextmanager
def running_api(database_url: str, redis_url: str, tmp_path: Path,
                extra: dict[str, str] | None = None) -> Iterator[Api]:
    # quiet: an error's log line, not a rendered traceback on the terminal
    with harness.running_app(database_url, redis_url, tmp_path, TOKENS, flows=FLOWS, quiet=True,
                             extra={"BATON_MAX_BODY_BYTES": str(MAX_BODY), **(extra or {})}) as app:
        yield Api(app.client, app.services, app.keys, app.raw, app.settings)


@pytest.fixture
def api(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API on SQLite and on PostgreSQL: for what the database takes part in."""
    with running_api(database_url, redis_url, tmp_path) as made:
        yield made


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API on SQLite only: for what the HTTP layer decides before any query."""
    with running_api(f"sqlite:///{tmp_path}/web.db", redis_url, tmp_path) as made:
        yield made


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = orjson.loads(response.get_data())
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def each_case(cases: dict[str, Any], check: Callable[[Any], None]) -> None:
    """Run `check` on every case, then fail naming each case that failed."""
    failures = []
    for name, case in cases.items():
        try:
            check(case)
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc)[:400]}")
    assert not failures, "\n".join(failures)


def after_clock_moves(started_at: str) -> None:
    """Spin until the next start gets a later `started_at` (millisecond precision)."""
    while format_ts(utcnow()) <= started_at:
        time.sleep(0.001)


# -- starting a workflow ---------------------------------------------------------------------------


def test_start_answers_201_with_the_workflow_and_its_location(api: Api) -> None:
    data = order_input()
    response = api.start(input=data)
    assert response.status_code == 201
    body = response.get_json()
    cid = body["correlation_id"]
    assert uuid.UUID(cid)
    assert response.headers["Location"].endswith(f"/v1/workflows/{cid}")
    assert body["flow"] == "order_fulfillment" and body["flow_version"] == 1
    assert body["status"] == "running" and body["reason"] is None and body["finished_at"] is None
    started = parse_ts(body["started_at"])
    assert (parse_ts(body["deadline"]) - started).total_seconds() == 300
    steps = {s["name"]: s for s in body["steps"]}
    assert list(steps) == ["reserve_inventory", "charge_payment", "schedule_shipment",
                           "send_confirmation"]
    assert {s["name"]: s["participant"] for s in body["steps"]} == {
        "reserve_inventory": "inventory", "charge_payment": "payment",
        "schedule_shipment": "shipping", "send_confirmation": "notification"}
    assert all(s["kind"] == "event" for s in body["steps"])
    assert steps["reserve_inventory"]["status"] == "active"
    assert steps["schedule_shipment"]["status"] == "pending"
    assert body["compensations"] == []
    assert api.get(f"/v1/workflows/{cid}").get_json() == body


def test_the_start_event_is_on_its_stream_and_is_its_own_cause(api: Api) -> None:
    data = order_input()
    cid = api.started(input=data)["correlation_id"]
    [start] = api.start_events()
    assert start.type == "order.placed" and start.kind == "event"
    assert start.correlation_id == cid
    assert start.causation_id == start.id
    assert start.source == "controller"
    assert start.data == data


def test_sla_seconds_sets_the_workflow_deadline(web: Api) -> None:
    body = web.started(sla_seconds=42)
    assert (parse_ts(body["deadline"]) - parse_ts(body["started_at"])).total_seconds() == 42


def test_a_given_correlation_id_is_used_and_a_reused_one_is_a_conflict(api: Api) -> None:
    cid = f"order:{uuid.uuid4().hex[:8]}.v1_A-z"
    response = api.start(correlation_id=cid)
    assert response.status_code == 201
    assert response.get_json()["correlation_id"] == cid
    assert response.headers["Location"].endswith(f"/v1/workflows/{cid}")
    again = api.start(SAM, correlation_id=cid)
    assert "already" in assert_problem(again, 409)["detail"]
    assert len(api.start_events()) == 1


BAD_STARTS: dict[str, tuple[dict[str, Any], str]] = {
    "missing-flow": ({"input": order_input()}, "flow"),
    "input-not-an-object": ({"flow": "order_fulfillment", "input": ["a"]}, "input"),
    "input-missing": ({"flow": "order_fulfillment"}, "input"),
    "sla-zero": ({"flow": "order_fulfillment", "input": order_input(), "sla_seconds": 0}, "sla_seconds"),
    "sla-string": ({"flow": "order_fulfillment", "input": order_input(), "sla_seconds": "5"},
                   "sla_seconds"),
    "correlation-id-with-space": (
        {"flow": "order_fulfillment", "input": order_input(), "correlation_id": "a b"},
        "correlation_id"),
    "correlation-id-129-chars": (
        {"flow": "order_fulfillment", "input": order_input(), "correlation_id": "x" * 129},
        "correlation_id"),
    "correlation-id-empty": (
        {"flow": "order_fulfillment", "input": order_input(), "correlation_id": ""},
        "correlation_id"),
    "unknown-body-field": ({"flow": "order_fulfillment", "input": order_input(), "colour": "red"},
                           "colour"),
    "quantity-zero": (
        {"flow": "order_fulfillment",
         "input": order_input(items=[{"product_id": "SKU-001", "quantity": 0, "unit_price": 5.0}])},
        "input.items.0.quantity"),
    "currency-lower-case": ({"flow": "order_fulfillment", "input": order_input(currency="eur")},
                            "input.currency"),
    "amount-as-string": ({"flow": "order_fulfillment", "input": order_input(total_amount="10.00")},
                         "input.total_amount"),
    "unit-price-as-string": (
        {"flow": "order_fulfillment",
         "input": order_input(items=[{"product_id": "SKU-001", "quantity": 1, "unit_price": "5"}])},
        "input.items.0.unit_price"),
    "missing-customer": ({"flow": "order_fulfillment",
                          "input": {k: v for k, v in order_input().items() if k != "customer_id"}},
                         "input.customer_id"),
}


def test_an_invalid_start_answers_422_naming_the_field(web: Api) -> None:
    def check(case: tuple[dict[str, Any], str]) -> None:
        body, field = case
        problem = assert_problem(web.post("/v1/workflows", body), 422)
        assert set(problem["errors"]) == {field}, problem["errors"]
        assert all(isinstance(m, str) for m in problem["errors"][field])

    each_case(BAD_STARTS, check)
    assert web.start_events() == [], "nothing was started"
    assert web.get("/v1/workflows", OTTO).get_json()["items"] == []


def test_one_422_names_every_bad_field_of_the_body_and_its_input_together(web: Api) -> None:
    bad_item = {"product_id": "SKU-001", "quantity": 0, "unit_price": 5.0}
    body = {"flow": "order_fulfillment", "sla_seconds": 0, "correlation_id": "a b", "colour": "red",
            "input": order_input(currency="eur", items=[bad_item])}
    problem = assert_problem(web.post("/v1/workflows", body), 422)
    named = {"sla_seconds", "correlation_id", "colour", "input.currency", "input.items.0.quantity"}
    assert set(problem["errors"]) == named, problem["errors"]
    assert all(name in problem["detail"] for name in named), problem["detail"]
    assert web.start_events() == [], "nothing was started"


def test_an_unknown_flow_is_404_once_the_body_is_valid(web: Api) -> None:
    """Its input cannot be checked without the flow: the body's own errors come first."""
    bad_input = order_input(currency="eur")
    assert_problem(web.start(flow="no_such_flow", input=bad_input), 404)
    problem = assert_problem(web.start(flow="no_such_flow", input=bad_input, sla_seconds=0), 422)
    assert set(problem["errors"]) == {"sla_seconds"}, problem["errors"]


def test_a_body_that_is_not_an_object_answers_422(web: Api) -> None:
    def check(body: bytes) -> None:
        response = web.client.post("/v1/workflows", data=body,
                                   headers=auth(ALICE, {"Content-Type": "application/json"}))
        assert_problem(response, 422)

    each_case({"list": b"[]", "string": b'"order"', "number": b"42", "null": b"null"}, check)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_ITEM = st.fixed_dictionaries({}, optional={
    "product_id": st.just("SKU-001") | _JSON, "quantity": st.just(1) | _JSON,
    "unit_price": st.just(5.0) | _JSON})
_INPUT = st.fixed_dictionaries({}, optional={
    "order_id": st.just("ord-1") | _JSON, "customer_id": st.just("cust-gold") | _JSON,
    "items": st.lists(_ITEM, max_size=2) | _JSON, "total_amount": st.just(5.0) | _JSON,
    "currency": st.sampled_from(["EUR", "eur", "EURO", ""]) | _JSON})
_BODY = st.fixed_dictionaries({}, optional={
    "flow": st.sampled_from(["order_fulfillment", "quick_order", ""]) | _JSON,
    "input": _INPUT | _JSON, "sla_seconds": _JSON, "correlation_id": _JSON,
    "extra": _JSON}) | _JSON


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_BODY)
def test_no_start_body_answers_500(web: Api, body: Any) -> None:
    response = web.client.post("/v1/workflows", data=json.dumps(body),
                               headers=auth(ALICE, {"Content-Type": "application/json"}))
    assert response.status_code in (200, 201, 400, 404, 409, 422), (
        response.status_code, response.get_data(as_text=True))
    if response.status_code >= 400:
        assert_problem(response, response.status_code)


def test_an_unknown_flow_answers_404(web: Api) -> None:
    problem = assert_problem(web.start(flow="no_such_flow"), 404)
    assert "no_such_flow" in problem["detail"]


def test_malformed_json_answers_400(web: Api) -> None:
    response = web.client.post("/v1/workflows", data=b'{"flow": "order_fulfillment", "input": {',
                               headers=auth(ALICE, {"Content-Type": "application/json"}))
    assert_problem(response, 400)


def test_a_body_that_is_not_json_answers_415(web: Api) -> None:
    payload = orjson.dumps({"flow": "order_fulfillment", "input": order_input()})

    def check(content_type: str) -> None:
        response = web.client.post("/v1/workflows", data=payload,
                                   headers=auth(ALICE, {"Content-Type": content_type}))
        assert_problem(response, 415)

    each_case({t: t for t in ("text/plain", "application/x-www-form-urlencoded", "application/xml")},
              check)
    assert web.start_events() == []


def test_a_body_over_the_limit_answers_413(web: Api) -> None:
    body = {"flow": "order_fulfillment", "input": order_input(note="x" * MAX_BODY)}
    assert_problem(web.post("/v1/workflows", body), 413)
    assert web.start_events() == []


class _Chunks(io.RawIOBase):
    """A request body that arrives in chunks, of a length nobody announced."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n], self._rest = self._rest[:n], self._rest[n:]
        return n


def post_chunked(api: Api, chunks: Iterator[bytes]) -> TestResponse:
    """As a server that de-chunks the body hands it on: a stream with no announced length."""
    return api.client.post(
        "/v1/workflows",
        headers=auth(ALICE, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
        environ_overrides={"wsgi.input": io.BufferedReader(_Chunks(chunks)),
                           "wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_answers_413(web: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"flow": "order_fulfillment", "input": {"note": "'
        for _ in range(4 * MAX_BODY // 1024):
            yield b"x" * 1024
        yield b'"}}'

    assert_problem(post_chunked(web, chunks()), 413)
    assert web.start_events() == []


def test_a_chunked_body_under_the_limit_is_accepted(web: Api) -> None:
    payload = orjson.dumps({"flow": "order_fulfillment", "input": order_input()})
    response = post_chunked(web, iter([payload[:20], payload[20:]]))
    assert response.status_code == 201, response.get_data(as_text=True)


# -- idempotency -----------------------------------------------------------------------------------


def _losing_races(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """The next `times` workflow inserts are chosen as a deadlock's victim; the calls, counted."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from controller.db import store

    real, calls = store.insert_workflows, []

    def insert_workflows(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("INSERT INTO workflows ...", {},
                                   psycopg.errors.DeadlockDetected("deadlock detected"))
        real(*args, **kwargs)

    monkeypatch.setattr(store, "insert_workflows", insert_workflows)
    return calls


def test_a_kickoff_chosen_as_a_deadlocks_victim_is_run_again_and_answers_201(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadlock is a race lost to another writer, not a database outage: no 503."""
    calls = _losing_races(monkeypatch, 2)
    made = api.started()
    assert len(calls) == 3
    assert api.get(f"/v1/workflows/{made['correlation_id']}").status_code == 200
    assert len(api.start_events()) == 1


def test_a_request_that_keeps_losing_races_answers_503_saying_the_database_is_up(
        web: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _losing_races(monkeypatch, 100)
    answer = web.start()
    problem = assert_problem(answer, 503)
    assert "retry" in problem["detail"] and "the database is up" in problem["detail"]
    assert answer.headers["Retry-After"] == "1"
    assert len(calls) == 5
    assert web.start_events() == []


def test_the_same_idempotency_key_and_body_answers_200_with_the_same_workflow(api: Api) -> None:
    data = order_input()
    key = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    first = api.start(headers=key, input=data)
    assert first.status_code == 201
    again = api.start(headers=key, input=data)
    assert again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert len(api.start_events()) == 1, "no second start event"
    assert len(api.get("/v1/workflows", OTTO).get_json()["items"]) == 1


def test_the_same_idempotency_key_with_another_body_is_a_conflict(api: Api) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    assert api.start(headers=key, input=order_input()).status_code == 201
    assert_problem(api.start(headers=key, input=order_input()), 409)
    assert_problem(api.start(headers=key, input=order_input(), sla_seconds=10), 409)
    assert len(api.start_events()) == 1


def test_an_idempotency_key_with_a_correlation_id_replays_rather_than_conflicts(api: Api) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    body: dict[str, Any] = {"input": order_input(), "correlation_id": f"wf-{uuid.uuid4().hex[:8]}"}
    assert api.start(headers=key, **body).status_code == 201
    again = api.start(headers=key, **body)
    assert again.status_code == 200
    assert again.get_json()["correlation_id"] == body["correlation_id"]
    assert len(api.start_events()) == 1


def test_idempotency_keys_belong_to_the_caller(api: Api) -> None:
    key = {"Idempotency-Key": "the-same-key"}
    data = order_input()
    mine = api.start(ALICE, key, input=data)
    theirs = api.start(SAM, key, input=data)
    assert mine.status_code == theirs.status_code == 201
    assert mine.get_json()["correlation_id"] != theirs.get_json()["correlation_id"]


def test_events_recorded_before_the_start_are_attached(api: Api) -> None:
    cid = f"early-{uuid.uuid4().hex[:8]}"
    data = order_input()
    early = api.emit("payment.charged", cid, {"order_id": data["order_id"], "payment_id": "pay-1",
                                              "amount": 10.0, "currency": "EUR"}, source="payment")
    drain(api.runtime("controller"))
    body = api.started(correlation_id=cid, input=data)
    steps = {s["name"]: s["status"] for s in body["steps"]}
    assert steps["charge_payment"] == "done"
    assert steps["reserve_inventory"] == "active"
    timeline = api.get(f"/v1/workflows/{cid}/timeline").get_json()["items"]
    assert early.id in [m["id"] for m in timeline]


# -- listing ---------------------------------------------------------------------------------------


@pytest.fixture
def five(api: Api) -> list[dict[str, Any]]:
    """Five workflows, oldest first: alice's three (one of flow quick_order), sam's two."""
    made: list[dict[str, Any]] = []
    plan = [(ALICE, "order_fulfillment", "cust-a"), (SAM, "order_fulfillment", "cust-b"),
            (ALICE, "quick_order", "cust-a"), (SAM, "order_fulfillment", "cust-c"),
            (ALICE, "order_fulfillment", "cust-b")]
    for token, flow, customer in plan:
        if made:
            after_clock_moves(made[-1]["started_at"])
        made.append(api.started(token, flow=flow, input=order_input(customer_id=customer)))
    return made


def cids(response: TestResponse) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [w["correlation_id"] for w in response.get_json()["items"]]


def test_the_list_is_newest_first(api: Api, five: list[dict[str, Any]]) -> None:
    listed = api.get("/v1/workflows", OTTO).get_json()
    assert [w["correlation_id"] for w in listed["items"]] == [w["correlation_id"] for w in five[::-1]]
    assert listed["next_cursor"] is None
    whole = api.get(f"/v1/workflows/{five[-1]['correlation_id']}").get_json()
    assert listed["items"][0] == {k: whole[k] for k in listed["items"][0]}, "a summary of it"


def test_the_list_filters_by_flow_and_search_attributes(api: Api, five: list[dict[str, Any]]) -> None:
    ids = [w["correlation_id"] for w in five]
    assert cids(api.get("/v1/workflows", flow="quick_order")) == [ids[2]]
    assert cids(api.get("/v1/workflows", flow="order_fulfillment")) == [ids[4], ids[3], ids[1], ids[0]]
    assert cids(api.get("/v1/workflows", flow="nope")) == []
    assert cids(api.get("/v1/workflows", customer_id="cust-b")) == [ids[4], ids[1]]
    order_id = five[3]["input"]["order_id"]
    assert cids(api.get("/v1/workflows", order_id=order_id)) == [ids[3]]
    assert cids(api.get("/v1/workflows", customer_id="cust-a", flow="order_fulfillment")) == [ids[0]]
    assert cids(api.get("/v1/workflows", currency="EUR")) == [ids[2]]  # only quick_order's


def test_the_list_filters_by_start_time(api: Api, five: list[dict[str, Any]]) -> None:
    ids = [w["correlation_id"] for w in five]
    middle = five[2]["started_at"]
    assert cids(api.get("/v1/workflows", started_after=middle)) == [ids[4], ids[3], ids[2]]
    assert cids(api.get("/v1/workflows", started_before=middle)) == [ids[1], ids[0]]
    assert cids(api.get("/v1/workflows", started_after=five[1]["started_at"],
                        started_before=five[4]["started_at"])) == [ids[3], ids[2], ids[1]]
    offset = format_ts(parse_ts(middle)).replace("Z", "+00:00")
    assert cids(api.get("/v1/workflows", started_after=offset)) == [ids[4], ids[3], ids[2]]


def test_the_list_filters_by_status(api: Api, five: list[dict[str, Any]]) -> None:
    done = five[0]
    cid, order_id = done["correlation_id"], done["input"]["order_id"]
    api.emit("inventory.reserved", cid, {"order_id": order_id, "reservations": [
        {"reservation_id": "res-1", "product_id": "SKU-001", "quantity": 2}]}, source="inventory")
    api.emit("payment.charged", cid, {"order_id": order_id, "payment_id": "pay-1", "amount": 10.0,
                                      "currency": "EUR"}, source="payment")
    api.emit("shipment.scheduled", cid, {"order_id": order_id, "shipment_id": "shp-1",
                                         "estimated_delivery": "2026-12-01"}, source="shipping")
    drain(api.runtime("controller"))
    assert api.get(f"/v1/workflows/{cid}").get_json()["status"] == "completed"
    assert cids(api.get("/v1/workflows", status="completed")) == [cid]
    running = cids(api.get("/v1/workflows", status="running"))
    assert running == [w["correlation_id"] for w in five[:0:-1]]
    assert cids(api.get("/v1/workflows", status="compensated")) == []


def test_cursor_pagination_covers_every_workflow_exactly_once(api: Api, five: list[dict[str, Any]]) -> None:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = api.get("/v1/workflows", OTTO, **query)
        pages.append(cids(response))
        cursor = response.get_json()["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor never ends"
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [c for p in pages for c in p] == [w["correlation_id"] for w in five[::-1]]


def test_cursor_pagination_keeps_its_filters(api: Api, five: list[dict[str, Any]]) -> None:
    first = api.get("/v1/workflows", flow="order_fulfillment", limit=3).get_json()
    rest = api.get("/v1/workflows", flow="order_fulfillment", limit=3, cursor=first["next_cursor"])
    ids = [w["correlation_id"] for w in five]
    assert [w["correlation_id"] for w in first["items"]] + cids(rest) == [ids[4], ids[3], ids[1], ids[0]]


BAD_QUERIES: dict[str, dict[str, Any]] = {
    "unknown-parameter": {"colour": "red"}, "limit-zero": {"limit": 0}, "limit-word": {"limit": "many"},
    "limit-huge": {"limit": 100000}, "unknown-status": {"status": "asleep"},
    "unknown-reason": {"reason": "boredom"}, "after-not-a-time": {"started_after": "yesterday"},
    "before-a-date": {"started_before": "2026-11-22"},
    "after-without-offset": {"started_after": "2026-11-22T10:00:00"},
    "overdue-perhaps": {"overdue": "perhaps"},
}


def test_a_bad_list_query_answers_422_naming_the_parameter(web: Api) -> None:
    def check(query: dict[str, Any]) -> None:
        problem = assert_problem(web.get("/v1/workflows", **query), 422)
        assert set(problem["errors"]) == set(query), problem["errors"]

    each_case(BAD_QUERIES, check)


def test_an_unknown_parameter_beside_a_search_attribute_is_named_alone(web: Api) -> None:
    problem = assert_problem(web.get("/v1/workflows", colour="red", order_id="ord-1"), 422)
    assert set(problem["errors"]) == {"colour"}, problem["errors"]


def test_the_document_lists_every_declared_search_attribute_as_a_filter(web: Api) -> None:
    """Built from the flows loaded: `currency` is there because quick_order declares it."""
    spec = web.get("/v1/openapi.json").get_json()
    declared = {a for f in web.services.catalog.flows.values() for a in f.search_attributes}
    assert {"order_id", "customer_id", "currency"} <= declared
    params = {p["name"]: p for p in spec["paths"]["/v1/workflows"]["get"]["parameters"]}
    assert {n: (p["in"], p["schema"]["type"], p["required"]) for n, p in params.items()
            if n in declared} == {n: ("query", "string", False) for n in declared}
    bulk = spec["components"]["schemas"]["SearchAttributes"]  # a bulk action's filter.attributes
    assert set(bulk["properties"]) == declared and bulk["additionalProperties"] is False


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


NOT_CURSORS = {"punctuation": "!!!", "words": "not-a-cursor", "empty-list": _b64([]),
               "object": _b64({"a": 1}), "string": _b64("text"),
               "not-utf8": base64.urlsafe_b64encode(b"\xff\xfe").decode()}
BAD_LIST_CURSORS = {**NOT_CURSORS, "one-number": _b64([1]), "two-words": _b64(["x", "y"]),
                    "time-only": _b64(["2026-11-22T10:00:00.000Z"]), "nulls": _b64([None, None]),
                    "three-numbers": _b64([1, 2, 3])}
BAD_TIMELINE_CURSORS = {**NOT_CURSORS, "a-word": _b64(["x"]), "a-float": _b64([1.5]),
                        "null": _b64([None]),
                        "beyond-64-bits": base64.urlsafe_b64encode(b"[9223372036854775808]").decode()}


def test_a_bad_list_cursor_answers_422_never_500(api: Api) -> None:
    api.started()

    def check(cursor: str) -> None:
        problem = assert_problem(api.get("/v1/workflows", cursor=cursor), 422)
        assert "cursor" in problem["errors"]

    each_case(BAD_LIST_CURSORS, check)


def test_a_bad_timeline_cursor_answers_422_never_500(api: Api) -> None:
    cid = api.started()["correlation_id"]

    def check(cursor: str) -> None:
        problem = assert_problem(api.get(f"/v1/workflows/{cid}/timeline", cursor=cursor), 422)
        assert "cursor" in problem["errors"]

    each_case(BAD_TIMELINE_CURSORS, check)


def test_nul_characters_in_identifiers_and_filters_never_answer_500(api: Api) -> None:
    api.started()
    nul_cursor = _b64(["2026-11-22T10:00:00.000Z", "wf\u0000x"])
    requests = {
        "path": lambda: api.get("/v1/workflows/wf%00x"),
        "timeline-path": lambda: api.get("/v1/workflows/wf%00x/timeline"),
        "attribute-filter": lambda: api.get("/v1/workflows", customer_id="cust\x00a"),
        "flow-filter": lambda: api.get("/v1/workflows", flow="order\x00"),
        "list-cursor": lambda: api.get("/v1/workflows", cursor=nul_cursor),
        "flow-path": lambda: api.get("/v1/flows/order%00"),
        "start-flow": lambda: api.start(flow="order\x00"),
    }

    def check(request: Any) -> None:
        response = request()
        assert response.status_code < 500, (response.status_code, response.get_data(as_text=True))
        if response.status_code >= 400:
            assert_problem(response, response.status_code)

    each_case(requests, check)


# -- reading one workflow and its timeline ---------------------------------------------------------


def test_an_unknown_workflow_answers_404(api: Api) -> None:
    assert_problem(api.get("/v1/workflows/nope"), 404)
    assert_problem(api.get("/v1/workflows/nope/timeline"), 404)


def test_the_timeline_is_in_order_received_with_its_causation_chain(api: Api) -> None:
    cid = api.started()["correlation_id"]
    drain(api.runtime("payment"))  # charges the order: payment.charged, caused by order.placed
    drain(api.runtime("notification"))  # confirms it: notification.sent, caused by payment.charged
    drain(api.runtime("controller"))
    response = api.get(f"/v1/workflows/{cid}/timeline")
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert response.get_json()["next_cursor"] is None
    types = [m["type"] for m in items]
    assert types[:3] == ["order.placed", "payment.charged", "notification.sent"], types
    start, charged, sent = items[:3]
    assert start["causation_id"] == start["id"]
    assert charged["causation_id"] == start["id"] and charged["source"] == "payment"
    assert sent["causation_id"] == charged["id"] and sent["source"] == "notification"
    for item in items:
        assert {"id", "kind", "type", "source", "causation_id", "occurred_at", "received_at"} <= set(item)
    received = [parse_ts(m["received_at"]) for m in items]
    assert received == sorted(received)
    steps = {s["name"]: s["status"] for s in api.get(f"/v1/workflows/{cid}").get_json()["steps"]}
    assert steps["charge_payment"] == "done" and steps["send_confirmation"] == "done"

    paged: list[str] = []
    cursor: str | None = None
    for _ in range(len(items) + 1):
        query: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/v1/workflows/{cid}/timeline", **query).get_json()
        paged += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == [m["id"] for m in items]


# -- authentication and roles ----------------------------------------------------------------------


BAD_AUTH = {"none": None, "unknown": "Bearer nope", "empty": "Bearer ", "basic": "Basic dC1hbGljZQ==",
            "no-scheme": "t-alice", "token-of-another-case": "Bearer T-ALICE"}


def test_a_missing_or_unknown_token_answers_401(web: Api) -> None:
    cid = web.started()["correlation_id"]

    def check(header: str | None) -> None:
        headers = {"Authorization": header} if header is not None else {}
        for response in (
            web.client.get("/v1/workflows", headers=headers),
            web.client.get(f"/v1/workflows/{cid}", headers=headers),
            web.client.get(f"/v1/workflows/{cid}/timeline", headers=headers),
            web.client.get("/v1/flows", headers=headers),
            web.client.post("/v1/workflows", headers=headers,
                            json={"flow": "order_fulfillment", "input": order_input()}),
        ):
            assert_problem(response, 401)

    each_case(BAD_AUTH, check)
    assert len(web.start_events()) == 1


def test_authentication_comes_before_validation(web: Api) -> None:
    """A caller who may not start learns nothing about what a start needs."""
    bad = {"flow": "order_fulfillment", "input": "no"}
    assert_problem(web.post("/v1/workflows", bad, token=None), 401)
    assert_problem(web.post("/v1/workflows", bad, token="wrong"), 401)
    assert_problem(web.post("/v1/workflows", bad, token=VERA), 403)
    assert_problem(web.get("/v1/workflows", token=None, colour="red"), 401)


def test_a_viewer_may_not_start(web: Api) -> None:
    problem = assert_problem(web.start(VERA), 403)
    assert "viewer" in problem["detail"]
    assert web.start_events() == []


def test_an_operator_may_start(web: Api) -> None:
    assert web.start(OTTO).status_code == 201


def test_a_starter_sees_only_its_own_workflows(api: Api, five: list[dict[str, Any]]) -> None:
    alices = [w["correlation_id"] for w in five if w["started_by"] == "alice"]
    sams = [w["correlation_id"] for w in five if w["started_by"] == "sam"]
    assert len(alices) == 3 and len(sams) == 2
    assert cids(api.get("/v1/workflows", ALICE)) == alices[::-1]
    assert cids(api.get("/v1/workflows", SAM)) == sams[::-1]
    assert cids(api.get("/v1/workflows", SAM, customer_id="cust-a")) == []
    for cid in alices:
        assert api.get(f"/v1/workflows/{cid}", ALICE).status_code == 200
        assert_problem(api.get(f"/v1/workflows/{cid}", SAM), 404)
        assert_problem(api.get(f"/v1/workflows/{cid}/timeline", SAM), 404)


def test_viewers_and_operators_read_everything(api: Api, five: list[dict[str, Any]]) -> None:
    everyone = [w["correlation_id"] for w in five]
    for token in (VERA, OTTO):
        assert cids(api.get("/v1/workflows", token)) == everyone[::-1]
        for cid in everyone:
            assert api.get(f"/v1/workflows/{cid}", token).status_code == 200
            assert api.get(f"/v1/workflows/{cid}/timeline", token).status_code == 200


# -- errors in general, health, the OpenAPI document -----------------------------------------------


def test_unknown_paths_and_methods_answer_problems(web: Api) -> None:
    assert_problem(web.get("/v1/nothing-here"), 404)
    assert_problem(web.client.delete("/v1/workflows", headers=auth(OTTO)), 405)


def test_health_and_the_openapi_document_need_no_token(web: Api) -> None:
    for path in ("/healthz", "/readyz", "/v1/openapi.json"):
        response = web.client.get(path)
        assert response.status_code == 200, path
        assert response.is_json, path


def test_the_openapi_document_describes_the_workflow_api(web: Api) -> None:
    spec = web.client.get("/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/workflows", "/v1/workflows/{cid}", "/v1/workflows/{cid}/timeline"} <= set(spec["paths"])


def test_the_docs_page_shows_the_openapi_document(web: Api) -> None:
    """Swagger UI, which the browser loads from a CDN, pointed at this server's document."""
    response = web.client.get("/v1/docs")
    assert (response.status_code, response.mimetype) == (200, "text/html")
    page = response.get_data(as_text=True)
    assert '"/v1/openapi.json"' in page
    assert "SwaggerUIBundle(" in page


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_readyz_answers_503_when_the_database_is_unreachable(redis_url: str, tmp_path: Path) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    dead = f"postgresql+psycopg://baton@127.0.0.1:{_closed_port()}/baton?connect_timeout=2"
    settings = load_settings(environment(dead, redis_url, tmp_path, keys))
    services = build_services(settings)
    try:
        with capture_logs():
            client = create_app(settings, services).test_client()
            problem = assert_problem(client.get("/readyz"), 503)
            assert "database" in problem["errors"]
            assert "redis" not in problem["errors"]
            assert client.get("/healthz").status_code == 200, "alive, though not ready"
            assert_problem(client.get("/v1/workflows", headers=auth(VERA)), 503)
    finally:
        services.close()


def test_readyz_answers_503_until_the_schema_is_migrated(redis_url: str, tmp_path: Path) -> None:
    """The web does not migrate (the release line does): before it has run, a kickoff could only
    fail, so the web is alive but not ready; once migrated it is ready."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    settings = load_settings(environment(f"sqlite:///{tmp_path / 'fresh.db'}", redis_url, tmp_path, keys))
    services = build_services(settings)
    try:
        client = create_app(settings, services).test_client()
        problem = assert_problem(client.get("/readyz"), 503)
        assert problem["errors"] == {"database": [NOT_MIGRATED]}
        assert client.get("/healthz").status_code == 200, "alive, though not ready"
        migrate.upgrade(services.engine)
        assert client.get("/readyz").get_json() == {"status": "ready"}
    finally:
        services.close()


def test_started_at_is_an_rfc3339_utc_timestamp_with_milliseconds(web: Api) -> None:
    body = web.started()
    for name in ("started_at", "deadline"):
        value = body[name]
        assert value.endswith("Z") and len(value) == len("2026-11-22T10:00:00.123Z"), value
        assert isinstance(parse_ts(value), datetime)


def test_kickoffs_are_refused_with_429_while_a_consumer_group_is_behind(
        redis_url: str, tmp_path: Path) -> None:
    with running_api(f"sqlite:///{tmp_path}/web.db", redis_url, tmp_path,
                     {"BATON_MAX_BACKLOG": "3"}) as api:
        inventory = api.runtime("inventory")  # its group on order.placed: nobody reads it yet
        for _ in range(4):
            api.started()
        time.sleep(1.1)  # the backlog is measured at most once a second
        refused = api.start()
        body = assert_problem(refused, 429)
        assert "limit 3" in body["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(api.get("/v1/workflows", limit=100).get_json()["items"]) == 4  # nothing made
        drain(inventory)
        time.sleep(1.1)
        api.started()  # caught up: admitted again
        spec = api.get("/v1/openapi.json", token=None).get_json()
        assert "429" in spec["paths"]["/v1/workflows"]["post"]["responses"]


# -- why a step failed ----------------------------------------------------------------------------


def test_a_failed_step_says_why_and_the_others_say_null(api: Api) -> None:
    cid = api.started()["correlation_id"]
    start = api.start_events()[-1]
    api.emit("payment.charge_failed", cid, {"order_id": start.data["order_id"],
                                            "reason": "card declined"}, cause=start.id,
             source="payment")
    drain(api.runtime("controller"))
    wf = api.get(f"/v1/workflows/{cid}").get_json()
    assert wf["status"] in ("compensating", "compensated") and wf["reason"] == "step_failed"
    reasons = {s["name"]: (s["status"], s["reason"]) for s in wf["steps"]}
    assert reasons["charge_payment"] == ("failed", "card declined")
    assert all(r is None for name, (_, r) in reasons.items() if name != "charge_payment")
    listed = api.get("/v1/workflows", flow="order_fulfillment").get_json()["items"]
    [item] = [w for w in listed if w["correlation_id"] == cid]
    assert item["reason"] == "step_failed" and "steps" not in item, "a list item is a summary"
    step_schemas = [s for s in api.get("/v1/openapi.json").get_json()["components"]["schemas"].values()
                    if {"participant", "attempts"} <= set(s.get("properties", {}))]
    assert step_schemas and all("reason" in s["properties"] for s in step_schemas)
