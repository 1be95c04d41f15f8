"""Starting a workflow: record it and its start event in one transaction (the outbox), idempotently."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from config.flows import Catalog
from contracts.envelope import Envelope, new_event
from contracts.errors import InvalidMessage
from contracts.flows import Flow
from contracts.payloads import Registry
from contracts.streams import CONTROLLER, Keys
from controller.db import store, views
from controller.db.tables import attributes, workflows
from controller.domain import lifecycle
from controller.domain.errors import Conflict, InvalidInput, NotFound
from controller.service import effects
from participants.runtime import outbox


@dataclass(frozen=True)
class StartRequest:
    flow: str
    input: dict[str, Any]
    actor: str
    sla_seconds: int | None = None
    correlation_id: str | None = None
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        body = {"flow": self.flow, "input": self.input, "sla_seconds": self.sla_seconds,
                "correlation_id": self.correlation_id}
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Started:
    correlation_id: str
    created: bool
    pending: list[outbox.Pending]
    view: dict[str, Any] | None = None  # the new workflow as the API shows it: no need to read it back


def start_workflow(engine: Engine, catalog: Catalog, registry: Registry, keys: Keys,
                   request: StartRequest, now: datetime) -> Started:
    flow = _flow(catalog, request.flow)
    data = _validate_input(registry, flow, request.input)
    try:
        with engine.begin() as conn:
            return _start(conn, flow, registry, keys, request, data, now)
    except IntegrityError:
        # A concurrent request with the same key or ID won the race: answer as if it came first.
        with engine.begin() as conn:
            replay = _replay(conn, request)
        if replay:
            return replay
        raise Conflict(f"workflow {request.correlation_id} already exists") from None


def _start(conn: Connection, flow: Flow, registry: Registry, keys: Keys, request: StartRequest,
           data: dict[str, Any], now: datetime) -> Started:
    replay = _replay(conn, request)
    if replay:
        return replay
    cid = request.correlation_id or str(uuid.uuid4())
    early: list[Envelope] = []
    if request.correlation_id:  # a new UUID names nothing yet: no early message, no one to wait for
        store.lock(conn, cid)  # an ID taken already fails the insert below: IntegrityError
        early = store.early_messages(conn, cid)
    start_event = new_event(flow.start_event, data, correlation_id=cid, source=CONTROLLER,
                            version=registry.latest(flow.start_event))
    wf, changes = lifecycle.start(flow, cid, start_event.id, data, now, request.sla_seconds)
    for message in early:
        changes += lifecycle.on_message(flow, wf, message.type, message.id, message.data, now)
    store.insert_workflow(conn, wf, {
        "started_by": request.actor, "idempotency_key": request.idempotency_key,
        "request_hash": request.fingerprint(), "input": data,
    }, early=bool(early))
    attrs = _insert_attributes(conn, flow, cid, data)
    store.record_message(conn, start_event, now, transitions=False)  # a new id: nothing names it yet
    sent: list[Envelope] = [start_event, *effects.to_messages(conn, registry, wf, changes, now)]
    view = views.render(flow, wf, request.actor, data, wf.steps, wf.compensations.values(), attrs)
    return Started(cid, True, outbox.enqueue(conn, keys, sent, now), view)


def _replay(conn: Connection, request: StartRequest) -> Started | None:
    """The same Idempotency-Key: the same workflow if the body matches, 409 if it does not."""
    if not request.idempotency_key:
        return None
    row = conn.execute(select(workflows.c.correlation_id, workflows.c.request_hash).where(
        workflows.c.started_by == request.actor,
        workflows.c.idempotency_key == request.idempotency_key,
    )).first()
    if row is None:
        return None
    if row.request_hash != request.fingerprint():
        raise Conflict(f"Idempotency-Key {request.idempotency_key!r} was used with another body")
    return Started(row.correlation_id, False, [])


def _flow(catalog: Catalog, name: str) -> Flow:
    try:
        return catalog.latest(name)
    except KeyError:
        raise NotFound(f"no flow named {name!r}; known: {', '.join(catalog.names())}") from None


def input_errors(catalog: Catalog, registry: Registry, flow_name: str,
                 data: dict[str, Any]) -> dict[str, Any]:
    """What is wrong with `data` as the input of the flow, keyed `input.<field>`; nothing for a
    flow not loaded (start_workflow answers that 404)."""
    try:
        _validate_input(registry, catalog.latest(flow_name), data)
    except KeyError:
        return {}
    except InvalidInput as exc:
        return exc.errors or {}
    return {}


def _validate_input(registry: Registry, flow: Flow, data: dict[str, Any]) -> dict[str, Any]:
    try:
        return registry.validate(flow.start_event, registry.latest(flow.start_event), data)
    except InvalidMessage as exc:
        errors = {"input." + k.removeprefix("data."): v for k, v in exc.errors.items()}
        raise InvalidInput(f"input does not match the schema of {flow.start_event}", errors) from exc


def _insert_attributes(conn: Connection, flow: Flow, cid: str, data: dict[str, Any]) -> dict[str, str]:
    found = {name: str(data[name])[:255] for name in flow.search_attributes if data.get(name) is not None}
    if found:
        conn.execute(attributes.insert(), [
            {"correlation_id": cid, "name": name, "value": value} for name, value in found.items()])
    return found
