"""RFC 9457 problem documents for every error the API answers, and the one place errors map to statuses."""

from __future__ import annotations

import http
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import structlog
from flask import Flask, Response
from flask_smorest import Api, Blueprint
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException

from contracts.api import Problem as ProblemSchema
from controller.domain.errors import ControllerError
from participants.runtime.db import lost_race

log = structlog.get_logger("baton.api")
F = TypeVar("F", bound=Callable[..., Any])
PROBLEM = "application/problem+json"
_LOCATIONS = {"json", "query", "headers", "form", "path", "view_args"}
# What every operation may answer, whatever it does: a NUL character in the URL is refused.
ANY = (400,)
# What an operation taking a JSON body may answer besides: malformed JSON is ANY's 400.
BODY = (413, 415)


def problem(status: int, title: str, detail: str, errors: Any = None,
            headers: dict[str, str] | None = None) -> Response:
    response = Response(status=status, mimetype=PROBLEM, headers=headers)
    response.set_data(_json(problem_body(status, title, detail, errors)))
    return response


def problem_body(status: int, title: str, detail: str, errors: Any = None) -> dict[str, Any]:
    """The problem document itself: also each refused item of a batch."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = flatten(errors) if isinstance(errors, dict) else {"_body": errors}
    return body


def of_error(exc: ControllerError) -> dict[str, Any]:
    return problem_body(exc.status, exc.title, exc.detail, exc.errors)


def schema_mismatch(errors: Any) -> str:
    """The detail of a 422 from a schema: every field it names."""
    names = flatten(errors) if isinstance(errors, dict) else map(str, errors)
    return "the request does not match its schema: " + ", ".join(names)


def may_answer(blp: Blueprint, *statuses: int) -> Callable[[F], F]:
    """Document the problems an operation can answer, each an `application/problem+json`; 422
    comes with `@blp.arguments`. Nothing else is documented: no `default` response."""
    def decorate(view: F) -> F:
        for status in sorted({*ANY, *statuses}):
            view = blp.alt_response(status, response=http.HTTPStatus(status).name)(view)
        return view
    return decorate


def flatten(errors: dict[Any, Any], prefix: str = "") -> dict[str, list[str]]:
    """Nested marshmallow messages as `{"input.items.0.quantity": [...]}`: the field is named."""
    flat: dict[str, list[str]] = {}
    for key, value in errors.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flat


def _json(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


class ProblemApi(Api):
    """flask-smorest's Api, answering its own errors (422 from webargs, 404, 405...) as problems,
    and documenting every error response as `application/problem+json`, each operation only
    those it can answer (`may_answer`)."""

    ERROR_SCHEMA = ProblemSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_responses(self) -> None:
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not 100 <= status < 200 and status not in (204, 304):
                response["content"] = {PROBLEM: {"schema": ProblemSchema}}
            self.spec.components.response(status.name, response, lazy=True)

    def handle_http_exception(self, error: HTTPException) -> Response:
        data = getattr(error, "data", None) or {}
        errors = data.get("errors") or data.get("messages")
        if isinstance(errors, dict) and set(errors) <= _LOCATIONS and len(errors) == 1:
            errors = next(iter(errors.values()))
        status = error.code or 500
        detail = data.get("message") or error.description or error.name
        if status == 422 and errors:
            detail = schema_mismatch(errors)
        return problem(status, error.name, str(detail), errors, data.get("headers"))


def register(app: Flask) -> None:
    @app.errorhandler(ControllerError)
    def _controller_error(exc: ControllerError) -> Response:
        return problem(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.errorhandler(DataError)
    def _bad_data(exc: DataError) -> Response:
        # e.g. a NUL character inside a JSON string, which PostgreSQL's text cannot hold
        return problem(422, "Unprocessable Entity", "a value cannot be stored as given",
                       {"_body": [str(exc.orig).splitlines()[0][:200]]})

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        if lost_race(exc):  # the writes that retry a lost race lost every time: the database is up
            log.warning("a request kept losing races (deadlocks)", error=str(exc.orig)[:200])
            # 503, not 409: the contract's 409s say the request itself cannot apply.
            return problem(503, "Service Unavailable", "concurrent writes to the same workflows "
                           "kept deadlocking with this request, which changed nothing (the "
                           "database is up); retry it", headers={"Retry-After": "1"})
        log.warning("database unavailable", error=str(exc.orig)[:200])
        return problem(503, "Service Unavailable", "the database is unavailable; retry shortly",
                       headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal Server Error", "an unexpected error was logged")
