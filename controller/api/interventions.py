"""Operator interventions: `/v1/workflows/<cid>/<action>`, one route per row of the action table
(`controller.domain.interventions.ACTIONS`), the audit, and bulk actions."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint
from marshmallow import RAISE

from config.flows import Catalog
from contracts.api import AuditPage, BulkOut, PageQuery, WorkflowOut, bulk_body
from contracts.timefmt import utcnow
from controller.api.auth import OPERATOR, READERS, current_actor, requires
from controller.api.problems import BODY, may_answer
from controller.db import views
from controller.domain.actions import Action, bulk_actions
from controller.domain.errors import ControllerError
from controller.domain.interventions import ACTIONS
from controller.service.bootstrap import Services
from controller.service.intervene import Intervention, intervene

# An intervention's problems: the workflow (or its step) unknown; 409 when it does not apply.
_INTERVENTION = (401, 403, 404, 409, *BODY, 503)


def _services() -> Services:
    services: Services = current_app.extensions["baton"]
    return services


def blueprint(catalog: Catalog) -> Blueprint:
    """The routes: one per action of the table, the audit, and bulk actions, whose filter takes
    each search attribute the loaded flows declare."""
    blp = Blueprint("interventions", __name__, url_prefix="/v1/workflows",
                    description="Operator interventions and the audit")
    for action in ACTIONS.values():
        _intervention_route(blp, action)

    @blp.route("/<cid>/audit", methods=["GET"])
    @requires(*READERS)
    @blp.arguments(PageQuery, location="query", unknown=RAISE)
    @blp.response(200, AuditPage)
    @may_answer(blp, 401, 404, 503)
    def get_audit(query: dict[str, Any], cid: str) -> dict[str, Any]:
        return _audit(query, cid)

    @blp.route("/actions", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(bulk_body(catalog.flows.values(), bulk_actions(ACTIONS.values())))
    @blp.response(200, BulkOut)
    @may_answer(blp, 401, 403, *BODY, 503)
    def bulk(body: dict[str, Any]) -> dict[str, Any]:
        """One intervention on every workflow matching `filter`, newest first, at most `limit`;
        `dry_run` lists them and touches nothing."""
        return _bulk(body)

    return blp


def _intervention_route(blp: Blueprint, action: Action) -> None:
    """`POST /v1/workflows/<cid>/<action.path>`, as the decorators would declare it by hand; the
    summary and description are the view's docstring, where flask-smorest reads them."""
    def view(body: dict[str, Any], cid: str, **path: str) -> dict[str, Any]:
        return _apply(cid, action, body, path)

    view.__name__ = view.__qualname__ = action.name
    view.__doc__ = "\n\n".join(t for t in (action.summary, action.description) if t) or None
    documented = may_answer(blp, *_INTERVENTION)(view)
    documented = blp.response(200, WorkflowOut)(documented)
    documented = blp.arguments(action.body)(documented)
    blp.route(f"/<cid>/{action.path}", methods=["POST"])(requires(OPERATOR)(documented))


def _apply(cid: str, action: Action, body: dict[str, Any], path: dict[str, str]) -> dict[str, Any]:
    services = _services()
    params = action.decision_params(body, path)
    intervene(services, cid, Intervention(action.name, current_actor().name, body["reason"], params),
              utcnow())
    with services.engine.connect() as conn:
        return views.workflow(conn, services.catalog, cid)


def _audit(query: dict[str, Any], cid: str) -> dict[str, Any]:
    services, actor = _services(), current_actor()
    with services.engine.connect() as conn:
        views.workflow(conn, services.catalog, cid, actor.name if actor.only_own else None)
        return views.audit(conn, cid, query["limit"], query.get("cursor"))


def _bulk(body: dict[str, Any]) -> dict[str, Any]:
    services, f = _services(), body["filter"]
    filters = views.Filters.of(f, f.get("attributes") or {})
    with services.engine.connect() as conn:
        matched = views.matching(conn, filters, body["limit"], utcnow())
    if body["dry_run"]:
        return {"dry_run": True, "matched": matched, "results": []}
    params = ACTIONS[body["action"]].bulk_params(body)
    results = []
    for cid in matched:
        try:
            request = Intervention(body["action"], current_actor().name, body["reason"], params)
            detail = intervene(services, cid, request, utcnow())
            results.append({"correlation_id": cid, "status": 200, "detail": detail})
        except ControllerError as exc:
            results.append({"correlation_id": cid, "status": exc.status, "detail": exc.detail})
    return {"dry_run": False, "matched": matched, "results": results}
