"""`GET /metrics`: Prometheus text (or OpenMetrics, if asked), no token (like /healthz), read at
scrape time."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from prometheus_client.exposition import choose_encoder

from controller.auth import public
from controller.metrics import build_registry

blp = Blueprint("metrics", __name__)
_EXTENSION = "baton_metrics"


@blp.record_once
def _registry(state: BlueprintSetupState) -> None:
    services = state.app.extensions["baton"]
    state.app.extensions[_EXTENSION] = build_registry(services.engine, services.redis, services.keys)


@blp.route("/metrics")
@public
def metrics() -> Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(current_app.extensions[_EXTENSION]), content_type=content_type)
