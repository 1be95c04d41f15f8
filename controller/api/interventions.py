"""Operator interventions: `/v1/workflows/<cid>/<action>`, signals, the audit, and bulk actions."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint
from marshmallow import RAISE

from config.flows import Catalog
from contracts.api import (
    AuditPage,
    BulkOut,
    DeadlineBody,
    InterventionBody,
    PageQuery,
    RetryBody,
    SignalBody,
    WorkflowOut,
    bulk_body,
)
from contracts.timefmt import utcnow
from controller.api.auth import OPERATOR, READERS, current_actor, requires
from controller.api.problems import BODY, may_answer
from controller.db import views
from controller.domain.errors import ControllerError
from controller.service.bootstrap import Services
from controller.service.intervene import Intervention, intervene

# An intervention's problems: the workflow (or its step) unknown; 409 when it does not apply.
_INTERVENTION = (401, 403, 404, 409, *BODY, 503)


def _services() -> Services:
    services: Services = current_app.extensions["baton"]
    return services


def _apply(cid: str, action: str, reason: str, **params: Any) -> dict[str, Any]:
    services = _services()
    request = Intervention(action, current_actor().name, reason, params)
    intervene(services, cid, request, utcnow())
    with services.engine.connect() as conn:
        return views.workflow(conn, services.catalog, cid)


def blueprint(catalog: Catalog) -> Blueprint:
    """The routes, their schemas completed from the loaded flows: a bulk action's filter takes
    each search attribute they declare."""
    blp = Blueprint("interventions", __name__, url_prefix="/v1/workflows",
                    description="Operator interventions and the audit")

    @blp.route("/<cid>/cancel", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(InterventionBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def cancel(body: dict[str, Any], cid: str) -> dict[str, Any]:
        """Stop the workflow and compensate what was done."""
        return _apply(cid, "cancel", body["reason"])

    @blp.route("/<cid>/compensate", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(InterventionBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def compensate(body: dict[str, Any], cid: str) -> dict[str, Any]:
        """Compensate now: a running, paused or needs_attention workflow."""
        return _apply(cid, "compensate", body["reason"])

    @blp.route("/<cid>/retry", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(RetryBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def retry(body: dict[str, Any], cid: str) -> dict[str, Any]:
        """Re-send a stalled step's command or re-emit its triggering event; re-send a compensation."""
        return _apply(cid, "retry", body["reason"], step=body.get("step"))

    @blp.route("/<cid>/steps/<step>/skip", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(InterventionBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def skip(body: dict[str, Any], cid: str, step: str) -> dict[str, Any]:
        """Mark a step done without its event: its work was done out of band."""
        return _apply(cid, "skip", body["reason"], step=step)

    @blp.route("/<cid>/pause", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(InterventionBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def pause(body: dict[str, Any], cid: str) -> dict[str, Any]:
        """Stop the SLA clock; the controller issues nothing for the workflow until it resumes."""
        return _apply(cid, "pause", body["reason"])

    @blp.route("/<cid>/resume", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(InterventionBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def resume(body: dict[str, Any], cid: str) -> dict[str, Any]:
        return _apply(cid, "resume", body["reason"])

    @blp.route("/<cid>/deadline", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(DeadlineBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def deadline(body: dict[str, Any], cid: str) -> dict[str, Any]:
        """Move the whole workflow's deadline: to `deadline`, or by `extend_seconds`."""
        return _apply(cid, "deadline", body["reason"], deadline=body.get("deadline"),
                      extend_seconds=body.get("extend_seconds"))

    @blp.route("/<cid>/signals/<name>", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(SignalBody)
    @blp.response(200, WorkflowOut)
    @may_answer(blp, *_INTERVENTION)
    def signal(body: dict[str, Any], cid: str, name: str) -> dict[str, Any]:
        """Answer an approval step: `approve` or `reject`."""
        return _apply(cid, "signal", body["reason"], name=name, step=body.get("step"),
                      data=body.get("data"), why=body["reason"])

    @blp.route("/<cid>/audit", methods=["GET"])
    @requires(*READERS)
    @blp.arguments(PageQuery, location="query", unknown=RAISE)
    @blp.response(200, AuditPage)
    @may_answer(blp, 401, 404, 503)
    def get_audit(query: dict[str, Any], cid: str) -> dict[str, Any]:
        return _audit(query, cid)

    @blp.route("/actions", methods=["POST"])
    @requires(OPERATOR)
    @blp.arguments(bulk_body(catalog.flows.values()))
    @blp.response(200, BulkOut)
    @may_answer(blp, 401, 403, *BODY, 503)
    def bulk(body: dict[str, Any]) -> dict[str, Any]:
        """One intervention on every workflow matching `filter`, newest first, at most `limit`;
        `dry_run` lists them and touches nothing."""
        return _bulk(body)

    return blp


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
    params = _bulk_params(body)
    results = []
    for cid in matched:
        try:
            request = Intervention(body["action"], current_actor().name, body["reason"], params)
            detail = intervene(services, cid, request, utcnow())
            results.append({"correlation_id": cid, "status": 200, "detail": detail})
        except ControllerError as exc:
            results.append({"correlation_id": cid, "status": exc.status, "detail": exc.detail})
    return {"dry_run": False, "matched": matched, "results": results}


def _bulk_params(body: dict[str, Any]) -> dict[str, Any]:
    if body["action"] == "deadline":
        return {"extend_seconds": body["extend_seconds"]}
    if body["action"] == "retry":
        return {"step": body.get("step")}
    return {}
