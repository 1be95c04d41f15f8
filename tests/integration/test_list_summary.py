"""A page of `GET /v1/workflows` is bounded: its items are summaries, without the start input
(up to the body limit each) or the steps; the whole workflow is `GET /v1/workflows/<cid>`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_api import Api, order_input, running_api

SUMMARY = ["correlation_id", "flow", "flow_version", "status", "reason", "started_at", "deadline",
           "finished_at", "started_by", "search_attributes"]


@pytest.fixture
def big(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    with running_api(database_url, redis_url, tmp_path, {"BATON_MAX_BODY_BYTES": "1048576"}) as made:
        yield made


def test_a_list_item_is_a_summary_without_the_input(big: Api) -> None:
    note = "x" * 200_000
    made = [big.started(input=order_input(note=note)) for _ in range(3)]
    response = big.get("/v1/workflows")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(response.get_data()) < 10_000, "three 200 kB inputs stay out of the page"
    page = response.get_json()
    assert set(page) == {"items", "next_cursor"}
    assert [sorted(i) for i in page["items"]] == [sorted(SUMMARY)] * 3
    whole = big.get(f"/v1/workflows/{made[-1]['correlation_id']}").get_json()
    assert page["items"][0] == {k: whole[k] for k in SUMMARY}
    assert whole["input"]["note"] == note, "the input is on the item"


def test_the_openapi_document_says_what_a_list_item_has(big: Api) -> None:
    spec = big.get("/v1/openapi.json").get_json()
    page = spec["paths"]["/v1/workflows"]["get"]["responses"]["200"]["content"]["application/json"]
    ref = page["schema"]["$ref"].rsplit("/", 1)[1]
    item = spec["components"]["schemas"][ref]["properties"]["items"]["items"]["$ref"].rsplit("/", 1)[1]
    assert sorted(spec["components"]["schemas"][item]["properties"]) == sorted(SUMMARY)
