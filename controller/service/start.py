"""Starting a workflow: record it and its start event in one unit of work (the outbox), idempotently."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from config.flows import Catalog
from contracts.envelope import Envelope, new_event
from contracts.errors import InvalidMessage
from contracts.flows import Flow
from contracts.jsonsafe import wide_integer_errors
from contracts.payloads import Registry
from contracts.streams import CONTROLLER
from controller.db import store, views
from controller.domain import lifecycle
from controller.domain.errors import Conflict, InvalidInput, NotFound
from controller.service.bootstrap import Services
from controller.service.unit_of_work import UnitOfWork, unit_of_work
from participants.runtime.db import retry_lost_races


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
    messages: list[Envelope] = field(default_factory=list)  # published (or left to the relay)
    view: dict[str, Any] | None = None  # the new workflow as the API shows it: no need to read it back


@retry_lost_races  # a deadlock's victim rolled back: run again at once, not answered 503
def start_workflow(services: Services, request: StartRequest, now: datetime) -> Started:
    flow = _flow(services.catalog, request.flow)
    data = _validate_input(services.registry, flow, request.input)
    try:
        with unit_of_work(services, now, "api") as uow:
            return _start(uow, flow, request, data)
    except IntegrityError:
        # A concurrent request with the same key or ID won the race: answer as if it came first.
        with services.engine.begin() as conn:
            replay = _replay(conn, request)
        if replay:
            return replay
        raise Conflict(f"workflow {request.correlation_id} already exists") from None


def _start(uow: UnitOfWork, flow: Flow, request: StartRequest, data: dict[str, Any]) -> Started:
    replay = _replay(uow.conn, request)
    if replay:
        return replay
    cid, now = request.correlation_id or str(uuid.uuid4()), uow.now
    early: list[Envelope] = []
    if request.correlation_id:  # a new UUID names nothing yet: no early message, no one to wait for
        uow.lock([cid])  # an ID taken already fails the insert: IntegrityError
        early = store.early_messages(uow.conn, cid)
    start_event = new_event(flow.start_event, data, correlation_id=cid, source=CONTROLLER,
                            version=uow.registry.latest(flow.start_event))
    wf, changes = lifecycle.start(flow, cid, start_event.id, data, now, request.sla_seconds)
    for message in early:
        changes += lifecycle.on_message(flow, wf, message.type, message.id, message.data, now)
    attrs = _attributes(flow, data)
    uow.add(wf, {"started_by": request.actor, "idempotency_key": request.idempotency_key,
                 "request_hash": request.fingerprint(), "input": data}, attrs, early=bool(early))
    uow.emit(start_event, traced=False)  # a new id: nothing names it yet
    uow.apply(wf, changes)
    view = views.render(flow, wf, request.actor, data, wf.steps, wf.compensations.values(), attrs)
    return Started(cid, True, uow.messages, view)


def _replay(conn: Connection, request: StartRequest) -> Started | None:
    """The same Idempotency-Key: the same workflow if the body matches, 409 if it does not."""
    if not request.idempotency_key:
        return None
    found = store.started_with_key(conn, request.actor, request.idempotency_key)
    if found is None:
        return None
    if found[1] != request.fingerprint():
        raise Conflict(f"Idempotency-Key {request.idempotency_key!r} was used with another body")
    return Started(found[0], False)


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
    wide = wide_integer_errors(data, "input")
    if wide:
        raise InvalidInput("input holds integers JSON here cannot carry", wide)
    try:
        return registry.validate(flow.start_event, registry.latest(flow.start_event), data)
    except InvalidMessage as exc:
        errors = {"input." + k.removeprefix("data."): v for k, v in exc.errors.items()}
        raise InvalidInput(f"input does not match the schema of {flow.start_event}", errors) from exc


def _attributes(flow: Flow, data: dict[str, Any]) -> dict[str, str]:
    return {name: str(data[name])[:255] for name in flow.search_attributes if data.get(name) is not None}
