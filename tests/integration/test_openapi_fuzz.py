"""The API fuzzed from its own OpenAPI document with schemathesis, in-process through the WSGI app:
no response is a 500, and every response conforms to the document (documented status code, content
type, body schema, headers); data the document calls invalid is rejected. The document has no
`default` response: each operation lists the problems it can answer, and only those. Path parameters are drawn
from real workflows, steps and flows as often as from noise, so that answers other than 404 are met.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.engine import Engine

from tests.e2e.test_cli import drop_schema, pg_schema
from tests.integration.test_interventions import GATED, ORDER, Baton, assert_problem, build, open_baton

AUTH = {"Authorization": "Bearer t-olga"}  # the operator: every operation is open to it
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# Bounded: 25 requests per operation in all, so that the whole fuzz stays well under a minute.
MAX_EXAMPLES = {"positive": 15, "negative": 10}
# Operations that must be in the document, whatever else is added later.
REQUIRED = {
    "POST /v1/workflows", "POST /v1/workflows:batch", "GET /v1/workflows", "GET /v1/workflows/{cid}",
    "GET /v1/workflows/{cid}/timeline", "POST /v1/workflows/{cid}/cancel",
    "POST /v1/workflows/{cid}/compensate", "POST /v1/workflows/{cid}/retry",
    "POST /v1/workflows/{cid}/steps/{step}/skip", "POST /v1/workflows/{cid}/pause",
    "POST /v1/workflows/{cid}/resume", "POST /v1/workflows/{cid}/deadline",
    "POST /v1/workflows/{cid}/signals/{name}", "GET /v1/workflows/{cid}/audit",
    "POST /v1/workflows/actions", "GET /v1/flows", "GET /v1/flows/{name}",
    "GET /healthz", "GET /readyz", "GET /metrics",
}


# The problems each operation can answer. 400: a NUL in the URL (any operation) or malformed JSON;
# 401/403: the token and its role; 413/415: a body too large or not JSON; 503: the database down.
INTERVENTION = {400, 401, 403, 404, 409, 413, 415, 422, 503}
PROBLEMS = {
    "POST /v1/workflows": {400, 401, 403, 404, 409, 413, 415, 422, 429, 503},
    "POST /v1/workflows:batch": {400, 401, 403, 413, 415, 422, 429, 503},
    "GET /v1/workflows": {400, 401, 422, 503},
    "GET /v1/workflows/{cid}": {400, 401, 404, 503},
    "GET /v1/workflows/{cid}/timeline": {400, 401, 404, 422, 503},
    **{f"POST /v1/workflows/{{cid}}/{action}": INTERVENTION for action in (
        "cancel", "compensate", "retry", "steps/{step}/skip", "pause", "resume", "deadline",
        "signals/{name}")},
    "GET /v1/workflows/{cid}/audit": {400, 401, 404, 422, 503},
    "POST /v1/workflows/actions": {400, 401, 403, 413, 415, 422, 503},
    "GET /v1/flows": {400, 401},
    "GET /v1/flows/{name}": {400, 401, 404},
    "GET /v1/reports/sla": {400, 401, 403, 406, 422, 503},
    "GET /healthz": {400},
    "GET /readyz": {400, 503},
    "GET /metrics": {400},
}


@dataclass
class Fuzz:
    baton: Baton
    schema: Any
    known: dict[str, list[str]]  # path parameter -> real values to draw from


@pytest.fixture(scope="module")
def fuzz(_pg_admin: Engine, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """On PostgreSQL, the production database and the stricter one (NUL characters, types)."""
    schema_name, database_url = pg_schema(_pg_admin)
    try:
        with open_baton(database_url, redis_url, tmp_path_factory.mktemp("fuzz")) as baton:
            cids = [build(baton, "running", ORDER), build(baton, "running", GATED),
                    build(baton, "compensating", ORDER), build(baton, "paused", ORDER)]
            schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", baton.client.application)
            known = {"cid": cids, "step": ["reserve_inventory", "charge_payment", "manager_approval"],
                     "name": ["approve", "reject", "order_fulfillment", "gated_order"]}
            yield Fuzz(baton, schema, known)
    finally:
        drop_schema(_pg_admin, schema_name)


def operations(fuzz: Fuzz) -> dict[str, Any]:
    found = (r.ok() for r in fuzz.schema.get_all_operations())
    return {f"{op.method.upper()} {op.path}": op for op in found}


def test_the_document_describes_every_operation_of_the_contract(fuzz: Fuzz) -> None:
    assert set(operations(fuzz)) >= REQUIRED, sorted(REQUIRED - set(operations(fuzz)))


def test_each_operation_documents_the_problems_it_can_answer(fuzz: Fuzz) -> None:
    spec = fuzz.baton.get("/v1/openapi.json").get_json()
    documented, not_problems = {}, []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            name = f"{method.upper()} {path}"
            errors = {k: v for k, v in operation["responses"].items() if not k.startswith("2")}
            documented[name] = {int(k) if k.isdigit() else k for k in errors}
            for status, response in errors.items():
                if "$ref" in response:
                    response = spec["components"]["responses"][response["$ref"].split("/")[-1]]
                if response.get("content") != {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}:
                    not_problems.append(f"{name} {status}")
    assert documented == PROBLEMS
    assert not_problems == []


def test_every_response_has_a_description(fuzz: Fuzz) -> None:
    """OpenAPI requires one on each response object, a success as much as a problem."""
    spec = fuzz.baton.get("/v1/openapi.json").get_json()
    undescribed = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items() if method != "parameters" else ():
                if "$ref" in response:
                    response = spec["components"]["responses"][response["$ref"].split("/")[-1]]
                if not response.get("description"):
                    undescribed.append(f"{method.upper()} {path} {status}")
    assert undescribed == []


def negatable(api_operation: Any) -> bool:
    """Negative mode needs something to make invalid: a parameter, a body or the bearer token
    (`/healthz` has none of them)."""
    op = api_operation
    return any(len(part) for part in (op.path_parameters, op.query, op.headers, op.cookies, op.body))


def fuzz_operation(fuzz: Fuzz, api_operation: Any, mode: str) -> None:
    """Raises the first failure hypothesis finds for this operation in this generation mode."""
    strategy = api_operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    checks = CHECKS + ([negative_data_rejection] if mode == "negative" else [])

    @settings(max_examples=MAX_EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy, data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        for name in list(case.path_parameters or {}):
            if name in fuzz.known and data.draw(st.booleans(), label=f"real {name}"):
                case.path_parameters[name] = data.draw(st.sampled_from(fuzz.known[name]), label=name)
        response = case.call(headers=AUTH)
        case.validate_response(response, checks=checks, headers=AUTH)

    run()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_response_conforms_to_the_document(fuzz: Fuzz, mode: str) -> None:
    """Every operation is fuzzed, then every one that failed is reported, each with its first failure."""
    failures: dict[str, str] = {}
    for name, api_operation in sorted(operations(fuzz).items()):
        if mode == "negative" and not negatable(api_operation):
            continue
        try:
            fuzz_operation(fuzz, api_operation, mode)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is a group
            failures[name] = str(exc).strip()
    report = "\n\n".join(f"=== {name}\n{text[:2500]}" for name, text in failures.items())
    assert not failures, f"{len(failures)} operations do not conform ({', '.join(failures)}):\n{report}"


@pytest.mark.parametrize("path", ["/v1/workflows/{cid}/timeline", "/v1/workflows/{cid}/audit"])
def test_undeclared_query_parameters_are_rejected_as_on_the_list(fuzz: Fuzz, path: str) -> None:
    """What the fuzzer's negative mode meets at random, made certain: a misspelt `limit` must not
    be ignored silently (GET /v1/workflows answers 422 for it; PageQuery says `unknown = RAISE`)."""
    url = path.format(cid=fuzz.known["cid"][0])
    problem = assert_problem(fuzz.baton.get(url, limt="5"), 422)
    assert "limt" in problem["errors"], problem
