"""Liveness and readiness; no token needed."""

from __future__ import annotations

from flask import Response, current_app
from flask_smorest import Blueprint
from marshmallow import Schema, fields
from sqlalchemy import text

from controller.api.auth import public
from controller.api.problems import may_answer, problem

blp = Blueprint("health", __name__, description="Liveness and readiness")


class HealthOut(Schema):
    status = fields.Str(metadata={"enum": ["ok", "ready"]})


@blp.route("/healthz")
@public
@blp.response(200, HealthOut, description="The process is alive")
@may_answer(blp)
@blp.doc(security=[])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@blp.route("/readyz")
@public
@blp.response(200, HealthOut, description="The database and Redis are reachable")
@may_answer(blp, 503)
@blp.doc(security=[])
def readyz() -> dict[str, str] | Response:
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
    return {"status": "ready"}
