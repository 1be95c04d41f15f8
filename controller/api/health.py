"""Liveness and readiness; no token needed."""

from __future__ import annotations

from flask import Response, current_app
from flask_smorest import Blueprint
from marshmallow import Schema, fields
from sqlalchemy import text

from controller.api.auth import public
from controller.api.problems import may_answer, problem
from controller.db import migrate

blp = Blueprint("health", __name__, description="Liveness and readiness")
NOT_MIGRATED = "the schema is not migrated: run the release line (baton migrate)"
MIGRATED = "baton.migrated"  # an app's extension, set once its schema was seen migrated


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
@blp.response(200, HealthOut, description="The database and Redis are reachable, and the schema is "
              "migrated (the release line has run)")
@may_answer(blp, 503)
@blp.doc(security=[])
def readyz() -> dict[str, str] | Response:
    services = current_app.extensions["baton"]
    failures = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if not current_app.extensions.get(MIGRATED):  # once migrated, it stays so
                if migrate.behind(conn):
                    failures["database"] = [NOT_MIGRATED]
                else:
                    current_app.extensions[MIGRATED] = True
    except Exception as exc:
        failures["database"] = [type(exc).__name__]
    try:
        services.redis.ping()
    except Exception as exc:
        failures["redis"] = [type(exc).__name__]
    if failures:
        return problem(503, "Service Unavailable", "a dependency is unreachable or not ready", failures,
                       {"Retry-After": "5"})
    return {"status": "ready"}
