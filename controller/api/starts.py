"""The kickoff routes: `POST /v1/workflows` (one start) and `POST /v1/workflows:batch` (many in
one request and one transaction, each item answered on its own: its workflow, or the problem a
single start would answer). Both go through `start_workflows`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import orjson
from flask import Flask, Response, current_app, request
from flask_smorest import Blueprint

from contracts.api import (
    CHECKED,
    BatchOut,
    InputCheck,
    Problem,
    Refused,
    WorkflowOut,
    batch_body,
    start_body,
)
from contracts.quick_start import quick_start
from contracts.timefmt import utcnow
from controller.api.auth import OPERATOR, STARTER, current_actor, requires
from controller.api.group_commit import GroupCommit
from controller.api.problems import BODY, PROBLEM, may_answer, of_error, problem_body, schema_mismatch
from controller.db import views
from controller.domain.errors import ControllerError, InvalidInput
from controller.service.bootstrap import Services
from controller.service.start import Outcome, Started, StartRequest, start_workflows
from controller.service.unmarked import Unmarked

_JSON = msgspec.json.Decoder()
_T = TypeVar("_T")
_MAKING = threading.Lock()  # for _per_app
_OVERLOADED = ("The consumers are too far behind: retry after `Retry-After` seconds "
               "(BATON_MAX_BACKLOG)")


def routes(blp: Blueprint, check: InputCheck) -> None:
    @blp.route("/workflows", methods=["POST"])
    @requires(STARTER, OPERATOR)
    @blp.arguments(start_body(check))
    @blp.response(201, WorkflowOut)
    @blp.alt_response(200, schema=WorkflowOut, description="The same Idempotency-Key and body again")
    @blp.alt_response(429, schema=Problem, content_type=PROBLEM, description=_OVERLOADED)
    @may_answer(blp, 401, 403, 404, 409, *BODY, 503)
    def start(body: dict[str, Any]) -> Response:
        return _start(body)

    blp.record_once(lambda state: _lean(state.app, f"{blp.name}.{start.__name__}", check))

    @blp.route("/workflows:batch", methods=["POST"])
    @requires(STARTER, OPERATOR)
    @blp.arguments(batch_body(check))
    @blp.response(200, BatchOut, description="Each item's answer, in request order: "
                  "201 or 200 with its workflow, 404, 409 or 422 with its problem")
    @blp.alt_response(429, schema=Problem, content_type=PROBLEM, description=_OVERLOADED)
    @may_answer(blp, 401, 403, *BODY, 503)
    def start_many(body: dict[str, Any]) -> Response:
        """Start up to 1,000 workflows in one request and one transaction; a bad item does not
        stop the others."""
        current_app.extensions["baton_admission"].check()
        return start_batch(_services(), current_actor().name, body["workflows"], utcnow())


def _lean(app: Flask, endpoint: str, check: InputCheck) -> None:
    """`POST /v1/workflows` answered without flask-smorest's parsing when its body is a plain valid
    start (`quick_start`); any other body goes through the documented view, which answers it as
    before (400, 422). The OpenAPI document, made from that view, is unchanged."""
    documented = app.view_functions[endpoint]

    @requires(STARTER, OPERATOR)
    def start_lean() -> Any:
        body = _quick_body(check) if request.is_json else None
        return documented() if body is None else _start(body)

    app.view_functions[endpoint] = start_lean


def _quick_body(check: InputCheck) -> dict[str, Any] | None:
    """msgspec, not orjson: orjson reads an integer past 64 bits as a float, which the input check
    would take; what msgspec decodes, webargs' `json.loads` decodes alike (NaN, lone surrogates,
    1e999 it refuses, and webargs answers them)."""
    try:
        return quick_start(check, _JSON.decode(request.get_data(cache=True)))
    except msgspec.DecodeError:
        return None


def _services() -> Services:
    services: Services = current_app.extensions["baton"]
    return services


def _unmarked(services: Services) -> Unmarked:
    """This process's rows published and not marked yet (one commit per kickoff)."""
    def make() -> Unmarked:
        made = Unmarked(services.engine)
        services.on_close(made.close)
        return made
    return _per_app("baton_unmarked", make)


def _grouped(services: Services) -> GroupCommit:
    """This process's group commit of single starts (`group_commit`)."""
    unmarked = _unmarked(services)
    return _per_app("baton_group_commit", lambda: GroupCommit(
        lambda requests: start_workflows(services, requests, utcnow(), unmarked)))


def _per_app(key: str, make: Callable[[], _T]) -> _T:
    """One `make()` per app, whichever request thread comes first."""
    found: _T | None = current_app.extensions.get(key)
    if found is None:
        with _MAKING:
            found = current_app.extensions.get(key)
            if found is None:
                found = current_app.extensions[key] = make()
    return found


def _start(body: dict[str, Any]) -> Response:
    """The view is answered as it is (`render` shapes it as WorkflowOut documents it): a
    marshmallow dump of it would cost about 0.4 ms and change nothing."""
    services, actor = _services(), current_actor()
    current_app.extensions["baton_admission"].check()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidInput("Idempotency-Key must be 1 to 255 characters",
                           {"Idempotency-Key": ["1 to 255 characters"]})
    started = _grouped(services).start(_request({**body, "idempotency_key": key}, actor.name))
    if isinstance(started, ControllerError):
        raise started
    body_out = started.view
    if body_out is None:  # a replay: as stored
        body_out = _stored(services, [started.correlation_id])[started.correlation_id]
    return _json(body_out, 201 if started.created else 200,
                 {"Location": f"/v1/workflows/{started.correlation_id}"})


def start_batch(services: Services, actor: str, items: list[Any], now: datetime) -> Response:
    """Every item's answer in request order: those that did not load are their 422 at once, the
    rest go through one unit of work; a replay is answered with its workflow as stored."""
    requests = {i: _request(item, actor) for i, item in enumerate(items) if not isinstance(item, Refused)}
    found = start_workflows(services, list(requests.values()), now, _unmarked(services))
    outcomes = dict(zip(requests, found, strict=True))
    stored = _stored(services, [o.correlation_id for o in outcomes.values()
                                if isinstance(o, Started) and o.view is None])
    answers = [_refused(item) if isinstance(item, Refused) else _answer(outcomes[i], stored)
               for i, item in enumerate(items)]
    return _json({"items": answers}, 200)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, mimetype="application/json")


def _request(item: dict[str, Any], actor: str) -> StartRequest:
    return StartRequest(flow=item["flow"], input=item["input"], actor=actor,
                        sla_seconds=item.get("sla_seconds"), correlation_id=item.get("correlation_id"),
                        idempotency_key=item.get("idempotency_key"), checked=item.get(CHECKED))


def _refused(item: Refused) -> dict[str, Any]:
    return {"status": 422, "problem": problem_body(422, "Unprocessable Entity",
                                                   schema_mismatch(item.errors), item.errors)}


def _answer(outcome: Outcome, stored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if isinstance(outcome, ControllerError):
        return {"status": outcome.status, "problem": of_error(outcome)}
    if outcome.view is not None:
        return {"status": 201, "workflow": outcome.view}
    return {"status": 200, "workflow": stored[outcome.correlation_id]}


def _stored(services: Services, cids: list[str]) -> dict[str, dict[str, Any]]:
    """The replayed workflows as stored, read after the commit (one may have been started by an
    earlier item of the same batch)."""
    if not cids:
        return {}
    with services.engine.connect() as conn:
        return {cid: views.workflow(conn, services.catalog, cid) for cid in dict.fromkeys(cids)}
