"""The Flask application factory: `create_app(settings=None)` builds its services from settings."""

from __future__ import annotations

import functools
import os
import sys

from flask import Flask, Response, request

from config.logging import configure_logging
from config.settings import Settings, SettingsError, load_settings
from contracts.api import BatchItem
from contracts.errors import FlowDefinitionError
from controller.api import flows as routes_flows
from controller.api import health as routes_health
from controller.api import interventions as routes_interventions
from controller.api import metrics as routes_metrics
from controller.api import problems
from controller.api import reports as routes_reports
from controller.api import workflows as routes_workflows
from controller.api.admission import Admission
from controller.api.body_limit import BodyLimit
from controller.service.bootstrap import Services, build_services
from participants.runtime.db import own_pool_in_fork

_JSON_TYPES = ("application/json",)
_APP_LOAD_ERROR = 4  # gunicorn's: its master stops instead of starting another worker


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """With no arguments (gunicorn's `controller.api.app:create_app()`), from the environment: a bad
    variable or flow file stops the process with its message, not a traceback (with `--preload`,
    gunicorn's master, before any worker starts)."""
    if services is None:
        try:
            settings = settings or load_settings()
            services = build_services(settings)
        except (SettingsError, FlowDefinitionError) as exc:
            print(f"baton web: configuration error: {exc}", file=sys.stderr, flush=True)
            sys.exit(_APP_LOAD_ERROR)
        configure_logging(settings, "web")
        # gunicorn --preload (the Procfile) makes the app once and forks its workers from it:
        # each worker gets a pool of its own, never a connection the master may have opened.
        os.register_at_fork(after_in_child=functools.partial(own_pool_in_fork, services.engine))
    settings = settings or services.settings
    app = Flask("baton")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="Baton", API_VERSION="v1", OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/v1", OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.17.14/",
    )
    app.extensions["baton"] = services
    app.extensions["baton_admission"] = Admission(services.redis, services.keys, settings.max_backlog)
    api = problems.ProblemApi(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"}}}, "security": [{"bearer": []}]})
    api.spec.components.schema("BatchItem", schema=BatchItem)  # what a batch's item may be
    api.register_blueprint(routes_workflows.blueprint(services.catalog, services.registry))
    api.register_blueprint(routes_interventions.blueprint(services.catalog))
    api.register_blueprint(routes_flows.blp)
    api.register_blueprint(routes_reports.blp)
    api.register_blueprint(routes_health.blp)
    api.register_blueprint(routes_metrics.blp)
    problems.register(app)
    app.before_request(_refuse_nul)
    app.before_request(_require_json_body)
    app.wsgi_app = BodyLimit(app.wsgi_app, settings.max_body_bytes)  # type: ignore[method-assign]
    return app


def _refuse_nul() -> Response | None:
    """No identifier or filter holds a NUL; PostgreSQL could not even compare one."""
    values = [request.path, *request.args.keys(), *request.args.values()]
    if any("\x00" in v for v in values):
        return problems.problem(400, "Bad Request", "NUL characters are not allowed in the URL",
                                {"url": ["contains a NUL character"]})
    return None


def _require_json_body() -> Response | None:
    if request.method in ("POST", "PUT", "PATCH") and request.content_length != 0:
        mimetype = request.mimetype or ""
        if mimetype not in _JSON_TYPES and not mimetype.endswith("+json"):
            return problems.problem(415, "Unsupported Media Type",
                                    "send the body as application/json")
    return None
