"""`/v1/workflows`: start, list, read and the timeline."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import current_app
from flask_smorest import Blueprint
from marshmallow import RAISE

from config.flows import Catalog
from contracts.api import (
    ListQuery,
    PageQuery,
    TimelinePage,
    WorkflowOut,
    WorkflowPage,
    list_query,
)
from contracts.payloads import Registry
from contracts.timefmt import utcnow
from controller.api import starts
from controller.api.auth import READERS, current_actor, requires
from controller.api.problems import may_answer
from controller.db import views
from controller.service.bootstrap import Services
from controller.service.start import check_input

_FILTERS = set(ListQuery().fields)


def blueprint(catalog: Catalog, registry: Registry) -> Blueprint:
    """The routes, their schemas completed from the loaded flows: a start's input is checked with
    the rest of its body; the list filters by each search attribute they declare."""
    blp = Blueprint("workflows", __name__, url_prefix="/v1", description="Workflows")

    starts.routes(blp, partial(check_input, catalog, registry))  # the POSTs

    @blp.route("/workflows", methods=["GET"])
    @requires(*READERS)
    @blp.arguments(list_query(catalog.flows.values()), location="query", unknown=RAISE)
    @blp.response(200, WorkflowPage)
    @may_answer(blp, 401, 503)
    def list_workflows(query: dict[str, Any]) -> dict[str, Any]:
        return _list(query)

    @blp.route("/workflows/<cid>", methods=["GET"])
    @requires(*READERS)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, 401, 404, 503)
    def get_workflow(cid: str) -> dict[str, Any]:
        return _get(cid)

    @blp.route("/workflows/<cid>/timeline", methods=["GET"])
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
