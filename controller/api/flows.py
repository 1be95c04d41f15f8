"""`/v1/flows`: the loaded flow definitions, each with its message types' schemas and its
Mermaid diagram."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import current_app
from flask_smorest import Blueprint

from contracts.api import FlowList, FlowOut
from contracts.flows import Flow
from contracts.json_payloads import JsonPayload, as_json_schema
from contracts.payloads import Registry
from controller.api.auth import READERS, requires
from controller.api.problems import may_answer
from controller.domain.errors import NotFound
from controller.reporting.diagrams import mermaid

blp = Blueprint("flows", __name__, url_prefix="/v1/flows", description="Flow definitions")


def _out(flow: Flow, registry: Registry) -> dict[str, Any]:
    return {
        "name": flow.name, "version": flow.version, "description": flow.description,
        "start_event": flow.start_event, "sla_seconds": flow.sla_seconds,
        "search_attributes": list(flow.search_attributes),
        "completes_when": list(flow.completes_when),
        "steps": [asdict(s) for s in flow.steps],
        "messages": [_message(registry, t) for t in flow.message_types()],
        "mermaid": mermaid(flow),
    }


def _message(registry: Registry, message_type: str) -> dict[str, Any]:
    versions = []
    for version in registry.versions(message_type):
        schema = registry.schema(message_type, version)
        versions.append({"version": version, "declared": isinstance(schema, JsonPayload),
                         "schema": as_json_schema(schema)})
    return {"type": message_type, "kind": registry.kind(message_type), "versions": versions}


@blp.route("")
@requires(*READERS)
@blp.response(200, FlowList)
@may_answer(blp, 401)
def list_flows() -> dict[str, Any]:
    services = current_app.extensions["baton"]
    return {"items": [_out(f, services.registry) for f in services.catalog.all_latest()]}


@blp.route("/<name>")
@requires(*READERS)
@blp.response(200, FlowOut)
@may_answer(blp, 401, 404)
def get_flow(name: str) -> dict[str, Any]:
    services = current_app.extensions["baton"]
    try:
        return _out(services.catalog.latest(name), services.registry)
    except KeyError:
        raise NotFound(f"no flow named {name!r}") from None
