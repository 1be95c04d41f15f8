"""`/v1/flows`: the loaded flow definitions, each with its Mermaid diagram."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import current_app
from flask_smorest import Blueprint

from contracts.api import FlowList, FlowOut
from contracts.flows import Flow
from controller.api.auth import READERS, requires
from controller.api.problems import may_answer
from controller.domain.errors import NotFound
from controller.reporting.diagrams import mermaid

blp = Blueprint("flows", __name__, url_prefix="/v1/flows", description="Flow definitions")


def _out(flow: Flow) -> dict[str, Any]:
    return {
        "name": flow.name, "version": flow.version, "description": flow.description,
        "start_event": flow.start_event, "sla_seconds": flow.sla_seconds,
        "search_attributes": list(flow.search_attributes),
        "completes_when": list(flow.completes_when),
        "steps": [asdict(s) for s in flow.steps], "mermaid": mermaid(flow),
    }


@blp.route("")
@requires(*READERS)
@blp.response(200, FlowList)
@may_answer(blp, 401)
def list_flows() -> dict[str, Any]:
    catalog = current_app.extensions["baton"].catalog
    return {"items": [_out(f) for f in catalog.all_latest()]}


@blp.route("/<name>")
@requires(*READERS)
@blp.response(200, FlowOut)
@may_answer(blp, 401, 404)
def get_flow(name: str) -> dict[str, Any]:
    catalog = current_app.extensions["baton"].catalog
    try:
        return _out(catalog.latest(name))
    except KeyError:
        raise NotFound(f"no flow named {name!r}") from None
