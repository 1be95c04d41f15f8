"""`POST /v1/workflows:batch` through Flask's test client, on real Redis and real databases
(SQLite and PostgreSQL): every status an item can answer, in request order, one transaction."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select

from controller.service.unmarked import Unmarked
from participants.runtime.tables import outbox as outbox_table
from tests.integration.test_api import (
    ALICE,
    OTTO,
    SAM,
    VERA,
    Api,
    assert_problem,
    drain,
    order_input,
    running_api,
)

BATCH = "/v1/workflows:batch"
BIG_BODY = str(4 * 1024 * 1024)  # room for 1,001 items


def item(**body: Any) -> dict[str, Any]:
    body.setdefault("flow", "order_fulfillment")
    body.setdefault("input", order_input())
    return body


def batch(api: Api, items: list[Any], token: str | None = ALICE) -> list[dict[str, Any]]:
    response = api.post(BATCH, {"workflows": items}, token)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    answers: list[dict[str, Any]] = response.get_json()["items"]
    assert len(answers) == len(items)
    return answers


def statuses(answers: list[dict[str, Any]]) -> list[int]:
    return [a["status"] for a in answers]


def assert_item_problem(answer: dict[str, Any], status: int) -> dict[str, Any]:
    assert answer["status"] == status, answer
    assert "workflow" not in answer
    found: dict[str, Any] = answer["problem"]
    assert found["status"] == status and found["type"] == "about:blank"
    assert found["title"] and found["detail"]
    return found


@pytest.fixture
def api(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API on SQLite and on PostgreSQL."""
    with running_api(database_url, redis_url, tmp_path) as made:
        yield made


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API on SQLite only: for what the HTTP layer decides."""
    with running_api(f"sqlite:///{tmp_path}/web.db", redis_url, tmp_path) as made:
        yield made


@pytest.fixture
def big(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    with running_api(database_url, redis_url, tmp_path, {"BATON_MAX_BODY_BYTES": BIG_BODY}) as made:
        yield made


# -- every status of an item, in order ---------------------------------------------------------


def test_each_item_answers_on_its_own_in_request_order(api: Api) -> None:
    taken = api.started(correlation_id=f"wf-{uuid.uuid4().hex[:8]}")["correlation_id"]
    twice = f"wf-{uuid.uuid4().hex[:8]}"
    items: list[Any] = [
        item(),                                                # 201
        item(flow="no_such_flow"),                             # 404
        item(input=order_input(items=[])),                     # 422, input.items
        item(correlation_id=taken),                            # 409: the ID is taken
        item(correlation_id=twice),                            # 201
        item(correlation_id=twice),                            # 409: taken by the item before
        item(sla_seconds=0, surprise=1),                       # 422, sla_seconds and surprise
        "not an object",                                       # 422
        item(flow="quick_order", sla_seconds=30),              # 201
    ]
    answers = batch(api, items)
    assert statuses(answers) == [201, 404, 422, 409, 201, 409, 422, 422, 201]
    assert answers[0]["workflow"]["flow"] == "order_fulfillment"
    assert answers[0]["workflow"]["started_by"] == "alice"
    assert "no_such_flow" in assert_item_problem(answers[1], 404)["detail"]
    assert "input.items" in assert_item_problem(answers[2], 422)["errors"]
    assert taken in assert_item_problem(answers[3], 409)["detail"]
    assert answers[4]["workflow"]["correlation_id"] == twice
    assert twice in assert_item_problem(answers[5], 409)["detail"]
    assert set(assert_item_problem(answers[6], 422)["errors"]) == {"sla_seconds", "surprise"}
    assert assert_item_problem(answers[7], 422)["errors"]
    assert assert_item_problem(batch(api, [None])[0], 422)["errors"]
    assert answers[8]["workflow"]["flow"] == "quick_order"
    made = [a["workflow"]["correlation_id"] for a in answers if a["status"] == 201]
    for cid in made:  # as GET shows it
        got = api.get(f"/v1/workflows/{cid}", OTTO)
        assert got.status_code == 200 and got.get_json() == next(
            a["workflow"] for a in answers if a.get("workflow", {}).get("correlation_id") == cid)
    events = api.start_events()
    assert sorted(e.correlation_id for e in events) == sorted([taken, *made])


def test_an_items_problem_is_the_one_a_single_post_answers(api: Api) -> None:
    bad = item(input=order_input(currency="euros", items=[{"product_id": "x", "quantity": 0,
                                                           "unit_price": 1}]), sla_seconds="soon")
    single = assert_problem(api.post("/v1/workflows", bad), 422)
    assert batch(api, [bad])[0]["problem"] == single
    unknown = item(flow="no_such_flow")
    assert batch(api, [unknown])[0]["problem"] == assert_problem(api.post("/v1/workflows", unknown), 404)


def test_a_nul_character_is_that_items_422_on_every_database(api: Api) -> None:
    answers = batch(api, [item(input=order_input(customer_id="cust\x00a")), item(),
                          item(idempotency_key="key\x00"), item(input={**order_input(), "x\x00": 1})])
    assert statuses(answers) == [422, 201, 422, 422]
    assert "input.customer_id" in answers[0]["problem"]["errors"]
    assert "idempotency_key" in answers[2]["problem"]["errors"]
    assert "input.x\x00" in answers[3]["problem"]["errors"]


def test_an_empty_batch_answers_no_items(web: Api) -> None:
    assert batch(web, []) == []


# -- idempotency --------------------------------------------------------------------------------


def test_the_same_batch_again_replays_every_item_as_stored(api: Api) -> None:
    items = [item(idempotency_key=f"k-{i}-{uuid.uuid4().hex}") for i in range(5)]
    first = batch(api, items)
    assert statuses(first) == [201] * 5
    again = batch(api, items)
    assert statuses(again) == [200] * 5
    assert [a["workflow"] for a in again] == [a["workflow"] for a in first]
    assert len(api.start_events()) == 5


def test_a_key_reused_with_another_body_is_that_items_conflict(api: Api) -> None:
    key = f"k-{uuid.uuid4().hex}"
    assert statuses(batch(api, [item(idempotency_key=key)])) == [201]
    answers = batch(api, [item(), item(idempotency_key=key), item()])
    assert statuses(answers) == [201, 409, 201]
    assert key in assert_item_problem(answers[1], 409)["detail"]


def test_a_key_given_twice_in_one_batch(api: Api) -> None:
    key, other = f"k-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"
    same = item(idempotency_key=key)
    answers = batch(api, [same, same, item(idempotency_key=other), item(idempotency_key=other)])
    assert statuses(answers) == [201, 200, 201, 409]
    assert answers[1]["workflow"] == answers[0]["workflow"]
    assert len(api.start_events()) == 2


def test_a_key_given_to_a_single_post_replays_in_a_batch_and_back(api: Api) -> None:
    key, data = f"k-{uuid.uuid4().hex}", order_input()
    single = api.start(headers={"Idempotency-Key": key}, input=data)
    assert single.status_code == 201
    answers = batch(api, [item(input=data, idempotency_key=key)])
    assert answers == [{"status": 200, "workflow": single.get_json()}]
    later_key = f"k-{uuid.uuid4().hex}"
    made = batch(api, [item(input=data, idempotency_key=later_key)])[0]["workflow"]
    again = api.start(headers={"Idempotency-Key": later_key}, input=data)
    assert again.status_code == 200 and again.get_json() == made


def test_keys_belong_to_the_caller(api: Api) -> None:
    same = item(idempotency_key="shared-key")
    mine, theirs = batch(api, [same], ALICE)[0], batch(api, [same], SAM)[0]
    assert mine["status"] == theirs["status"] == 201
    assert theirs["workflow"]["started_by"] == "sam"
    assert mine["workflow"]["correlation_id"] != theirs["workflow"]["correlation_id"]


# -- the whole request --------------------------------------------------------------------------


def test_a_thousand_items_start_and_a_thousand_and_one_are_refused(big: Api) -> None:
    answers = batch(big, [item() for _ in range(1000)])
    assert statuses(answers) == [201] * 1000
    assert len({a["workflow"]["correlation_id"] for a in answers}) == 1000
    assert len(big.start_events()) == 1000
    refused = assert_problem(big.post(BATCH, {"workflows": [item() for _ in range(1001)]}), 422)
    assert list(refused["errors"]) == ["workflows"]
    assert len(big.start_events()) == 1000


def test_a_body_without_a_list_of_workflows_is_refused_whole(web: Api) -> None:
    bodies: list[Any] = [{}, {"workflows": {"flow": "x"}}, {"workflows": None}, [],
                         {"workflows": [], "x": 1}]
    for body in bodies:
        problem = assert_problem(web.post(BATCH, body), 422)
        assert problem["errors"], body
    malformed = web.client.post(BATCH, data=b'{"workflows": [', content_type="application/json",
                                headers={"Authorization": f"Bearer {ALICE}"})
    assert_problem(malformed, 400)
    assert web.start_events() == []


def test_roles_starters_and_operators_may_viewers_may_not(web: Api) -> None:
    assert_problem(web.post(BATCH, {"workflows": [item()]}, None), 401)
    assert_problem(web.post(BATCH, {"workflows": [item()]}, VERA), 403)
    assert batch(web, [item()], OTTO)[0]["workflow"]["started_by"] == "otto"


def test_a_batch_is_refused_whole_with_429_while_the_consumers_are_behind(
        redis_url: str, tmp_path: Path) -> None:
    with running_api(f"sqlite:///{tmp_path}/web.db", redis_url, tmp_path,
                     {"BATON_MAX_BACKLOG": "3"}) as api:
        inventory = api.runtime("inventory")
        assert statuses(batch(api, [item() for _ in range(4)])) == [201] * 4
        time.sleep(1.1)  # the backlog is measured at most once a second
        refused = api.post(BATCH, {"workflows": [item()]})
        assert "limit 3" in assert_problem(refused, 429)["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(api.start_events()) == 4
        drain(inventory)


def test_the_openapi_document_describes_the_batch(web: Api) -> None:
    spec = web.get("/v1/openapi.json", token=None).get_json()
    operation = spec["paths"]["/v1/workflows:batch"]["post"]
    assert {"200", "401", "403", "422", "429"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    schemas = spec["components"]["schemas"]
    batch_body = schemas[body["$ref"].rsplit("/", 1)[-1]]
    assert batch_body["properties"]["workflows"]["maxItems"] == 1000
    assert "idempotency_key" in schemas["BatchItem"]["properties"]


# -- one transaction ----------------------------------------------------------------------------


def _counting(api: Api) -> Counter[str]:
    """Statements by their first words, and commits."""
    counts: Counter[str] = Counter()
    engine = api.services.engine
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _u, statement, *a, **k: counts.update([" ".join(statement.split()[:3])]))
    event.listen(engine, "commit", lambda *a, **k: counts.update(["COMMIT"]))
    return counts


def test_a_batch_costs_the_same_statements_and_one_commit_whatever_its_size(big: Api) -> None:
    """The rows a kickoff published are marked sent by the next one, in its one transaction."""
    use_unmarked(big, Unmarked(big.services.engine, 60.0))
    batch(big, [item()])  # leaves its row for the next one to mark
    first = _unsent_seqs(big)
    counts = _counting(big)
    batch(big, [item(idempotency_key=f"k-{uuid.uuid4().hex}") for _ in range(2)])
    small = dict(counts)
    now_unsent = _unsent_seqs(big)
    assert len(first) == 1 and len(now_unsent) == 2 and not first & now_unsent  # it marked the first
    counts.clear()
    batch(big, [item(idempotency_key=f"k-{uuid.uuid4().hex}") for _ in range(200)])
    large = dict(counts)
    if big.services.engine.dialect.name == "sqlite":  # no RETURNING in order from a multi-row insert
        assert (small.pop("INSERT INTO baton_outbox"), large.pop("INSERT INTO baton_outbox")) == (2, 200)
        assert small["UPDATE baton_outbox SET"] == 1, small  # PostgreSQL's goes through the driver
    assert large == small
    assert small["COMMIT"] == 1, small


def test_published_rows_are_marked_sent_by_the_next_kickoff_or_when_idle(api: Api) -> None:
    use_unmarked(api, Unmarked(api.services.engine, 0.2))
    batch(api, [item(), item()])
    assert _unsent(api) == 2
    batch(api, [item()])
    assert _unsent(api) == 1
    wait = time.monotonic() + 10
    while _unsent(api) and time.monotonic() < wait:
        time.sleep(0.05)
    assert _unsent(api) == 0
    assert len(api.start_events()) == 3


def use_unmarked(api: Api, unmarked: Unmarked) -> None:
    api.client.application.extensions["baton_unmarked"] = unmarked
    api.services.on_close(unmarked.close)


def _unsent(api: Api) -> int:
    return len(_unsent_seqs(api))


def _unsent_seqs(api: Api) -> set[int]:
    with api.services.engine.connect() as conn:
        return set(conn.execute(select(outbox_table.c.seq)
                                .where(outbox_table.c.sent_at.is_(None))).scalars())


def test_concurrent_conflicting_batches_start_each_workflow_once(big: Api) -> None:
    keys = [f"k-{i}-{uuid.uuid4().hex}" for i in range(30)]
    cids = [f"wf-{i}-{uuid.uuid4().hex[:8]}" for i in range(30)]
    bodies: dict[int, dict[str, Any]] = {i: item() for i in range(30)}
    answers: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []

    def send(order: list[int]) -> None:
        client = big.client.application.test_client()
        items = [{**bodies[i], "idempotency_key": keys[i]} if i % 2 else
                 {**item(), "correlation_id": cids[i]} for i in order]
        try:
            response = client.post(BATCH, json={"workflows": items},
                                   headers={"Authorization": f"Bearer {ALICE}"})
            assert response.status_code == 200, response.get_data(as_text=True)
            answers.append(response.get_json()["items"])
        except BaseException as exc:
            errors.append(exc)

    orders = [list(range(30)), list(reversed(range(30))), list(range(15, 30)) + list(range(15))]
    threads = [threading.Thread(target=send, args=(o,)) for o in orders for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    every = [a for found in answers for a in found]
    assert Counter(a["status"] for a in every) == {201: 30, 200: 75, 409: 75}
    stored = orjson.loads(big.get("/v1/workflows", OTTO, limit=100).get_data())["items"]
    assert len(stored) == 30 and len(big.start_events()) == 30
