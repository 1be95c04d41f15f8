"""Liveness and readiness; no token needed."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from controller.auth import public
from controller.problems import problem

blp = Blueprint("health", __name__)


@blp.route("/healthz")
@public
def healthz() -> Response:
    return jsonify(status="ok")


@blp.route("/readyz")
@public
def readyz() -> Response:
    services = current_app.extensions["baton"]
    failures = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        failures["database"] = [type(exc).__name__]
    try:
        services.redis.ping()
    except Exception as exc:
        failures["redis"] = [type(exc).__name__]
    if failures:
        return problem(503, "Service Unavailable", "a dependency is unreachable", failures,
                       {"Retry-After": "5"})
    return jsonify(status="ready")
