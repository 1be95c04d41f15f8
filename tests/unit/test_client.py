"""The REST client (controller/cli/client.py) without a server: a transport adapter stands in for
the network, so the test sees every request's timeout and what each failure becomes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from controller.cli.client import TIMEOUT, ApiClient, ClientError


class Canned(BaseAdapter):
    """Answers each request with the next of `answers` (a response's status and JSON body, or an
    exception to raise), and keeps what was asked."""

    def __init__(self, *answers: tuple[int, Any] | Exception) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[tuple[requests.PreparedRequest, Any]] = []

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        self.sent.append((request, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        response = requests.Response()
        response.status_code, response.reason = answer[0], "Reason"
        response._content = json.dumps(answer[1]).encode()
        response.headers["Content-Type"] = "application/json"
        response.url, response.request = request.url or "", request
        return response

    def close(self) -> None:
        pass


def client(*answers: tuple[int, Any] | Exception) -> tuple[ApiClient, Canned]:
    api = ApiClient("http://baton.test/", "t-1")
    adapter = Canned(*answers)
    api.session.mount("http://", adapter)
    return api, adapter


def test_every_call_has_a_timeout_and_the_token_on_one_session() -> None:
    page = {"items": [{"n": 1}], "next_cursor": "c2"}
    api, adapter = client((201, {"correlation_id": "wf-1"}), (200, page),
                          (200, {"items": [{"n": 2}], "next_cursor": None}), (200, {"status": "ok"}))
    assert api.start({"flow": "f"}, idempotency_key="k-1") == {"correlation_id": "wf-1"}
    assert [i["n"] for i in api.items("/v1/workflows")] == [1, 2]
    assert api.ready(timeout=2.0) is True
    assert [t for _, t in adapter.sent] == [TIMEOUT, TIMEOUT, TIMEOUT, 2.0]
    first = adapter.sent[0][0]
    assert (first.method, first.url) == ("POST", "http://baton.test/v1/workflows")
    assert first.headers["Authorization"] == "Bearer t-1" and first.headers["Idempotency-Key"] == "k-1"
    assert adapter.sent[2][0].url == "http://baton.test/v1/workflows?limit=1000&cursor=c2"


def test_an_http_error_is_a_client_error_with_the_problem_document() -> None:
    problem = {"title": "Conflict", "detail": "workflow wf-1 is completed; cancel does not apply",
               "errors": {"reason": ["required"]}}
    api, _ = client((409, problem))
    with pytest.raises(ClientError) as caught:
        api.intervene("wf-1", "cancel", {})
    assert (caught.value.status, caught.value.problem) == (409, problem)
    assert str(caught.value) == ("409 Conflict: workflow wf-1 is completed; cancel does not apply"
                                 "\n  reason: required")


def test_no_answer_is_a_client_error_that_says_so() -> None:
    api, _ = client(requests.ConnectionError(OSError(111, "Connection refused")),
                    requests.ReadTimeout("slow"), requests.ConnectionError("down"))
    with pytest.raises(ClientError) as refused:
        api.workflow("wf-1")
    assert refused.value.status == 0
    assert str(refused.value).startswith("Unreachable: http://baton.test: [Errno 111] Connection refused")
    with pytest.raises(ClientError, match=f"did not answer within {TIMEOUT:g} s"):
        api.workflow("wf-1")
    assert api.ready() is False  # not up (yet): no error
