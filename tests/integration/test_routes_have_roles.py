"""Every route declares who may call it, and the declaration is what the API enforces.

The URL map is walked: a view without `@requires(...)` or `@public` fails the first test unless it
is one of the library's own endpoints. Then every (method, path) is called with no token, a wrong
token and each role's token, and must answer 401, 401, and allowed-or-403 as declared.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from structlog.testing import capture_logs
from werkzeug.routing import Rule

from config.settings import load_settings
from contracts.streams import Keys
from controller.api.app import create_app
from controller.api.auth import OPERATOR, ROLE_ATTR, STARTER, VIEWER, public, requires
from controller.db import migrate
from controller.service.bootstrap import Services, build_services
from participants.runtime.db import make_engine

# Endpoints the libraries add: flask's static files, flask-smorest's OpenAPI document and its UIs.
LIBRARY_ENDPOINTS = frozenset({
    "static", "api-docs.openapi_json", "api-docs.openapi_swagger_ui", "api-docs.openapi_redoc",
    "api-docs.openapi_rapidoc",
})
TOKENS = {STARTER: "t-alice", VIEWER: "t-vera", OPERATOR: "t-otto"}
ENV_TOKENS = "alice:starter:t-alice,vera:viewer:t-vera,otto:operator:t-otto"
IGNORED_METHODS = {"HEAD", "OPTIONS"}
READERS = {STARTER, VIEWER, OPERATOR}

# What the contract says about each route it names: (method, rule) -> the roles allowed.
CONTRACT: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/workflows"): {STARTER, OPERATOR},
    ("GET", "/v1/workflows"): READERS,
    ("GET", "/v1/workflows/<cid>"): READERS,
    ("GET", "/v1/workflows/<cid>/timeline"): READERS,
    ("POST", "/v1/workflows/<cid>/cancel"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/compensate"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/retry"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/steps/<step>/skip"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/pause"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/resume"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/deadline"): {OPERATOR},
    ("POST", "/v1/workflows/<cid>/signals/<name>"): {OPERATOR},
    ("POST", "/v1/workflows/actions"): {OPERATOR},
    ("GET", "/v1/flows"): READERS,
    ("GET", "/v1/flows/<name>"): READERS,
    ("GET", "/v1/reports/sla"): {VIEWER, OPERATOR},
    ("GET", "/healthz"): set(),
    ("GET", "/readyz"): set(),
    ("GET", "/metrics"): set(),
}
# The audit: viewers and operators read every one; a starter at most its own workflows'.
AT_LEAST = {("GET", "/v1/workflows/<cid>/audit"): {VIEWER, OPERATOR}}

ORDER = {"order_id": "ord-1", "customer_id": "cust-gold",
         "items": [{"product_id": "SKU-001", "quantity": 1, "unit_price": 5.0}],
         "total_amount": 5.0, "currency": "EUR"}
# A body each POST accepts, so that only who calls decides the answer; others get BODY.
BODY: dict[str, Any] = {"reason": "role matrix"}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/workflows": {"flow": "order_fulfillment", "input": ORDER},
    "/v1/workflows/<cid>/deadline": {"reason": "role matrix", "extend_seconds": 60},
    "/v1/workflows/actions": {"reason": "role matrix", "action": "pause", "filter": {},
                              "dry_run": True},
}


def declared_roles(app: Flask, rule: Rule) -> tuple[str, ...] | None:
    roles: tuple[str, ...] | None = getattr(app.view_functions[rule.endpoint], ROLE_ATTR, None)
    return roles


def undeclared(app: Flask) -> list[str]:
    """Routes whose view says nothing about who may call it."""
    return sorted(
        f"{rule.rule} ({rule.endpoint})" for rule in app.url_map.iter_rules()
        if rule.endpoint not in LIBRARY_ENDPOINTS and declared_roles(app, rule) is None
    )


def routes(app: Flask) -> list[tuple[str, Rule]]:
    return sorted(
        ((method, rule) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
         for method in sorted((rule.methods or set()) - IGNORED_METHODS)),
        key=lambda mr: (mr[1].rule, mr[0]),
    )


@dataclass
class Matrix:
    app: Flask
    client: FlaskClient
    services: Services
    cid: str

    def path(self, rule: Rule) -> str:
        values = {"cid": self.cid, "step": "charge_payment",
                  "name": "order_fulfillment" if rule.rule.startswith("/v1/flows") else "approve"}
        return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values.get(m.group(1), "x"), rule.rule)

    def call(self, method: str, rule: Rule, token: str | None, body: Any = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"headers": headers}
        if method in ("POST", "PUT", "PATCH"):
            kwargs["json"] = BODIES.get(rule.rule, BODY) if body is None else body
        response = self.client.open(self.path(rule), method=method, **kwargs)
        return response.status_code


@pytest.fixture
def matrix(redis_url: str, tmp_path: Path) -> Iterator[Matrix]:
    url = f"sqlite:///{tmp_path}/roles.db"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    settings = load_settings({
        "DATABASE_URL": url, "REDIS_URL": redis_url, "BATON_STREAM_PREFIX": keys.prefix,
        "BATON_TOKENS": ENV_TOKENS, "BATON_DATA_DIR": str(tmp_path / "data"),
    })
    services = build_services(settings)
    try:
        with capture_logs():
            app = create_app(settings, services)
            client = app.test_client()
            started = client.post("/v1/workflows", json=BODIES["/v1/workflows"],
                                  headers={"Authorization": f"Bearer {TOKENS[STARTER]}"})
            assert started.status_code == 201, started.get_data(as_text=True)
            yield Matrix(app, client, services, started.get_json()["correlation_id"])
    finally:
        for key in services.redis.scan_iter(match=f"{keys.prefix}:*"):
            services.redis.delete(key)
        services.close()


# -- the declaration ------------------------------------------------------------------------------


def test_every_route_declares_its_roles(matrix: Matrix) -> None:
    assert undeclared(matrix.app) == [], "add @requires(...) or @public to these views"


def test_a_route_added_without_a_declaration_is_caught(matrix: Matrix) -> None:
    app = create_app(matrix.services.settings, matrix.services)

    def naked() -> str:
        return "anyone"

    @requires(OPERATOR)
    def guarded() -> str:
        return "operators"

    @public
    def open_door() -> str:
        return "everyone"

    app.add_url_rule("/v1/naked", "naked", naked)
    app.add_url_rule("/v1/guarded", "guarded", guarded)
    app.add_url_rule("/v1/open", "open_door", open_door)
    assert undeclared(app) == ["/v1/naked (naked)"]


def test_declared_roles_are_those_of_the_contract(matrix: Matrix) -> None:
    declared = {(method, rule.rule): declared_roles(matrix.app, rule) for method, rule in routes(matrix.app)}
    missing = sorted(set(CONTRACT) - set(declared))
    assert missing == [], "routes of the contract that the API does not serve"
    wrong = {
        route: (sorted(declared[route] or ()), sorted(roles))
        for route, roles in CONTRACT.items() if set(declared[route] or ()) != roles
    }
    for route, roles in AT_LEAST.items():
        if route in declared and not roles <= set(declared[route] or ()):
            wrong[route] = (sorted(declared[route] or ()), sorted(roles))
    assert wrong == {}, "(declared, contract)"
    assert declared[("GET", "/v1/openapi.json")] is None, "the OpenAPI document is the library's"


# -- the enforcement ------------------------------------------------------------------------------


def test_every_route_answers_as_its_roles_declare(matrix: Matrix) -> None:
    failures = []
    for method, rule in routes(matrix.app):
        roles = declared_roles(matrix.app, rule)
        is_public = rule.endpoint in LIBRARY_ENDPOINTS or roles == ()
        what = f"{method} {rule.rule}"
        for label, token in (("no token", None), ("a wrong token", "t-nobody")):
            status = matrix.call(method, rule, token)
            if is_public and status in (401, 403):
                failures.append(f"{what} with {label}: {status}, but it is public")
            if not is_public and status != 401:
                failures.append(f"{what} with {label}: {status}, expected 401")
        if is_public:
            continue
        for role, token in TOKENS.items():
            status = matrix.call(method, rule, token)
            if role in (roles or ()):
                if status in (401, 403) or status >= 500:
                    failures.append(f"{what} as {role}: {status}, expected it allowed")
            elif status != 403:
                failures.append(f"{what} as {role}: {status}, expected 403")
    assert not failures, "\n".join(failures)


def test_authentication_precedes_body_validation_on_every_route(matrix: Matrix) -> None:
    """No token, or a role that may not call it: the body is never looked at (no 422 leaks)."""
    failures = []
    for method, rule in routes(matrix.app):
        roles = declared_roles(matrix.app, rule)
        if method != "POST" or rule.endpoint in LIBRARY_ENDPOINTS or not roles:
            continue
        what = f"{method} {rule.rule}"
        status = matrix.call(method, rule, None, body={"not": "what it wants"})
        if status != 401:
            failures.append(f"{what} with no token and a bad body: {status}, expected 401")
        for role, token in TOKENS.items():
            if role not in roles:
                status = matrix.call(method, rule, token, body={"not": "what it wants"})
                if status != 403:
                    failures.append(f"{what} as {role} with a bad body: {status}, expected 403")
    assert not failures, "\n".join(failures)


def test_public_routes_answer_without_a_token(matrix: Matrix) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json"):
        assert matrix.client.get(path).status_code == 200, path


def test_the_document_says_which_routes_need_a_token(matrix: Matrix) -> None:
    """Every route but the library's is in the OpenAPI document; public ones override the
    document's bearer requirement with `security: []`, the others inherit it."""
    spec = matrix.client.get("/v1/openapi.json").get_json()
    assert spec["security"] == [{"bearer": []}]
    failures = []
    for method, rule in routes(matrix.app):
        if rule.endpoint in LIBRARY_ENDPOINTS:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        operation = spec["paths"].get(path, {}).get(method.lower())
        if operation is None:
            failures.append(f"{method} {rule.rule} is not in the document")
        elif (operation.get("security") == []) != (declared_roles(matrix.app, rule) == ()):
            failures.append(f"{method} {rule.rule}: security {operation.get('security')}")
    assert not failures, "\n".join(failures)


def test_the_document_lists_401_and_403_as_the_roles_declare(matrix: Matrix) -> None:
    """401 wherever a token is needed; 403 only where some role may not call the route."""
    spec = matrix.client.get("/v1/openapi.json").get_json()
    wrong = {}
    for method, rule in routes(matrix.app):
        if rule.endpoint in LIBRARY_ENDPOINTS:
            continue
        roles = set(declared_roles(matrix.app, rule) or ())
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        responses = spec["paths"][path][method.lower()]["responses"]
        found = {s for s in ("401", "403") if s in responses}
        expected = ({"401"} if roles else set()) | ({"403"} if roles and roles != READERS else set())
        if found != expected:
            wrong[f"{method} {rule.rule}"] = (sorted(found), sorted(expected))
    assert wrong == {}, "(documented, expected)"
