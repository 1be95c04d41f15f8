"""`GET /metrics`: Prometheus text (or OpenMetrics, if asked), no token (like /healthz), read at
most every BATON_METRICS_MAX_AGE seconds per process."""

from __future__ import annotations

from flask import Response, current_app, request
from flask.blueprints import BlueprintSetupState
from flask_smorest import Blueprint
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from controller.api.auth import public
from controller.api.problems import may_answer
from controller.reporting.metrics import build_registry

blp = Blueprint("metrics", __name__, description="Prometheus metrics")
_EXTENSION = "baton_metrics"
_TEXT = {"schema": {"type": "string"}}


@blp.record_once
def _registry(state: BlueprintSetupState) -> None:
    services = state.app.extensions["baton"]
    state.app.extensions[_EXTENSION] = build_registry(services.engine, services.redis, services.keys,
                                                     services.settings.metrics_max_age)


@blp.route("/metrics")
@public
@may_answer(blp)
@blp.doc(security=[], responses={"200": {
    "description": "The Prometheus text format; OpenMetrics when the Accept header asks for it",
    "content": {CONTENT_TYPE_LATEST.split(";")[0]: _TEXT, OPENMETRICS.split(";")[0]: _TEXT}}})
def metrics() -> Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(current_app.extensions[_EXTENSION]), content_type=content_type)
