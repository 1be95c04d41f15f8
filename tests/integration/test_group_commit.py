"""Group commit through the API, on SQLite and PostgreSQL: concurrent single POSTs that share one
commit (held open until they all queued behind it) are each answered as they would be alone, the
conflicts among them included: one Idempotency-Key, one correlation ID, a bad input, no such flow."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import TestResponse

from controller.api import starts
from controller.api.group_commit import GroupCommit
from controller.service.start import Outcome, StartRequest
from tests.integration.test_api import ALICE, SAM, Api, assert_problem, order_input, running_api


@pytest.fixture
def api(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API on SQLite and on PostgreSQL."""
    with running_api(database_url, redis_url, tmp_path) as made:
        yield made


def _held(api: Api) -> tuple[GroupCommit, threading.Event, list[int]]:
    """The app's group commit, its first group held until the event is set; each group's size."""
    with api.client.application.app_context():
        group = starts._grouped(api.services)
    run, gate, sizes = group._run, threading.Event(), []

    def held(requests: Sequence[StartRequest]) -> list[Outcome]:
        sizes.append(len(requests))
        if len(sizes) == 1:
            assert gate.wait(20)
        return run(requests)

    group._run = held
    return group, gate, sizes


def _concurrently(api: Api, posts: dict[str, tuple[dict[str, Any], str, dict[str, str]]],
                  grouped: int) -> dict[str, TestResponse]:
    """A first start holds the group commit; then `posts` all at once, `grouped` of which reach it
    (the others are refused at the edge); then the first commits and the queued ones go as one."""
    group, gate, sizes = _held(api)
    answers: dict[str, TestResponse] = {}

    def post(name: str, body: dict[str, Any], token: str, headers: dict[str, str]) -> None:
        answers[name] = api.post("/v1/workflows", body, token, headers)

    first = threading.Thread(target=post, args=("first", {"flow": "order_fulfillment",
                                                          "input": order_input()}, ALICE, {}))
    first.start()
    _until(lambda: bool(sizes))
    threads = [threading.Thread(target=post, args=(name, *spec)) for name, spec in posts.items()]
    for t in threads:
        t.start()
    _until(lambda: len(group._queue) == grouped)
    gate.set()
    for t in [first, *threads]:
        t.join(30)
    assert sizes[:2] == [1, grouped], sizes  # the queued ones went in one group
    assert answers["first"].status_code == 201
    return answers


def _until(condition: Any) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_conflicting_starts_in_one_group_are_each_answered_as_alone(api: Api) -> None:
    key, cid = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}, f"g-{uuid.uuid4().hex[:12]}"
    same = {"flow": "order_fulfillment", "input": order_input()}
    bad = {"flow": "order_fulfillment", "input": order_input(items=[{"product_id": "S", "quantity": "two",
                                                                     "unit_price": 1.0}])}
    gone = {"flow": "no_such_flow", "input": order_input()}
    posts: dict[str, tuple[dict[str, Any], str, dict[str, str]]] = {
        "key1": (same, ALICE, key), "key2": (same, ALICE, key), "key3": (same, ALICE, key),
        "key_other_body": ({"flow": "order_fulfillment", "input": order_input()}, ALICE, key),
        "key_other_actor": (same, SAM, key),
        "cid1": ({"flow": "order_fulfillment", "input": order_input(), "correlation_id": cid}, ALICE, {}),
        "cid2": ({"flow": "order_fulfillment", "input": order_input(), "correlation_id": cid}, ALICE, {}),
        "gone": (gone, ALICE, {}),
        "good1": ({"flow": "order_fulfillment", "input": order_input()}, ALICE, {}),
        "good2": ({"flow": "order_fulfillment", "input": order_input(), "sla_seconds": 60}, ALICE, {}),
        "bad": (bad, ALICE, {}),  # refused at the edge: never in a group
    }
    answers = _concurrently(api, posts, grouped=len(posts) - 1)
    _same_key(answers, posts, same)
    assert answers["key_other_actor"].status_code == 201  # another caller's keys are its own
    cids = sorted(answers[n].status_code for n in ("cid1", "cid2"))
    assert cids == [201, 409]
    loser = next(answers[n] for n in ("cid1", "cid2") if answers[n].status_code == 409)
    assert assert_problem(loser, 409)["detail"] == f"workflow {cid} already exists"
    for name in ("gone", "bad"):  # the same problem document as alone
        alone = api.post("/v1/workflows", posts[name][0])
        assert answers[name].status_code == alone.status_code and alone.status_code in (404, 422)
        assert answers[name].get_json() == alone.get_json()
    for name in ("good1", "good2"):
        started = answers[name].get_json()
        assert answers[name].status_code == 201
        assert answers[name].headers["Location"] == f"/v1/workflows/{started['correlation_id']}"
        assert api.get(f"/v1/workflows/{started['correlation_id']}").get_json() == started
    assert answers["good2"].get_json()["deadline"] is not None


def _same_key(answers: dict[str, TestResponse], posts: dict[str, Any], same: dict[str, Any]) -> None:
    """One of the four that share a key made the workflow: those with its body are its replays
    (200, the workflow as stored), the others a 409, whichever came first in the group."""
    names = ("key1", "key2", "key3", "key_other_body")
    made = [n for n in names if answers[n].status_code == 201]
    assert len(made) == 1, {n: answers[n].status_code for n in names}
    winner = answers[made[0]].get_json()
    for name in names:
        if name == made[0]:
            continue
        if posts[name][0] == posts[made[0]][0]:
            assert answers[name].status_code == 200
            assert answers[name].get_json()["correlation_id"] == winner["correlation_id"]
        else:
            assert "used with another body" in assert_problem(answers[name], 409)["detail"]
    assert posts[made[0]][0] is same or made[0] == "key_other_body"
