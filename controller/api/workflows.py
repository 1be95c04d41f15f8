"""`/v1/workflows`: start, list, read and the timeline."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import current_app, request
from flask_smorest import Blueprint
from marshmallow import RAISE

from config.flows import Catalog
from contracts.api import (
    ListQuery,
    PageQuery,
    Problem,
    TimelinePage,
    WorkflowOut,
    WorkflowPage,
    list_query,
    start_body,
)
from contracts.payloads import Registry
from contracts.timefmt import utcnow
from controller.api.auth import OPERATOR, READERS, STARTER, current_actor, requires
from controller.api.problems import BODY, PROBLEM, may_answer
from controller.db import views
from controller.domain.errors import InvalidInput
from controller.service.bootstrap import Services
from controller.service.start import StartRequest, input_errors, start_workflow

_FILTERS = set(ListQuery().fields)


def blueprint(catalog: Catalog, registry: Registry) -> Blueprint:
    """The routes, their schemas completed from the loaded flows: a start's input is checked with
    the rest of its body; the list filters by each search attribute they declare."""
    blp = Blueprint("workflows", __name__, url_prefix="/v1/workflows", description="Workflows")

    @blp.route("", methods=["POST"])
    @requires(STARTER, OPERATOR)
    @blp.arguments(start_body(partial(input_errors, catalog, registry)))
    @blp.response(201, WorkflowOut)
    @blp.alt_response(200, schema=WorkflowOut, description="The same Idempotency-Key and body again")
    @blp.alt_response(429, schema=Problem, content_type=PROBLEM, description="The consumers "
                      "are too far behind: retry after `Retry-After` seconds (BATON_MAX_BACKLOG)")
    @may_answer(blp, 401, 403, 404, 409, *BODY, 503)
    def start(body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        return _start(body)

    @blp.route("", methods=["GET"])
    @requires(*READERS)
    @blp.arguments(list_query(catalog.flows.values()), location="query", unknown=RAISE)
    @blp.response(200, WorkflowPage)
    @may_answer(blp, 401, 503)
    def list_workflows(query: dict[str, Any]) -> dict[str, Any]:
        return _list(query)

    @blp.route("/<cid>", methods=["GET"])
    @requires(*READERS)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, 401, 404, 503)
    def get_workflow(cid: str) -> dict[str, Any]:
        return _get(cid)

    @blp.route("/<cid>/timeline", methods=["GET"])
    @requires(*READERS)
    @blp.arguments(PageQuery, location="query", unknown=RAISE)
    @blp.response(200, TimelinePage)
    @may_answer(blp, 401, 404, 503)
    def get_timeline(query: dict[str, Any], cid: str) -> dict[str, Any]:
        return _timeline(query, cid)

    return blp


def _services() -> Services:
    services: Services = current_app.extensions["baton"]
    return services


def _start(body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    services, actor = _services(), current_actor()
    current_app.extensions["baton_admission"].check()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidInput("Idempotency-Key must be 1 to 255 characters",
                           {"Idempotency-Key": ["1 to 255 characters"]})
    req = StartRequest(flow=body["flow"], input=body["input"], actor=actor.name,
                       sla_seconds=body.get("sla_seconds"),
                       correlation_id=body.get("correlation_id"), idempotency_key=key)
    started = start_workflow(services, req, utcnow())
    body_out = started.view
    if body_out is None:  # a replay: as stored
        with services.engine.connect() as conn:
            body_out = views.workflow(conn, services.catalog, started.correlation_id)
    location = {"Location": f"/v1/workflows/{started.correlation_id}"}
    return body_out, 201 if started.created else 200, location


def _list(query: dict[str, Any]) -> dict[str, Any]:
    """Whatever in `query` is not a filter is a search attribute (the schema let only those in)."""
    services, actor = _services(), current_actor()
    attributes = {k: v for k, v in query.items() if k not in _FILTERS}
    filters = views.Filters.of(query, attributes, actor.name if actor.only_own else None)
    with services.engine.connect() as conn:
        return views.list_workflows(conn, services.catalog, filters, query["limit"],
                                    query.get("cursor"), utcnow())


def _get(cid: str) -> dict[str, Any]:
    services, actor = _services(), current_actor()
    with services.engine.connect() as conn:
        return views.workflow(conn, services.catalog, cid, actor.name if actor.only_own else None)


def _timeline(query: dict[str, Any], cid: str) -> dict[str, Any]:
    services, actor = _services(), current_actor()
    with services.engine.connect() as conn:
        views.workflow(conn, services.catalog, cid, actor.name if actor.only_own else None)
        return views.timeline(conn, cid, query["limit"], query.get("cursor"))
