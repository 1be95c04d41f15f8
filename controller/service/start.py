"""Starting workflows: record each and its start event in one unit of work (the outbox),
idempotently. A batch of starts is one transaction whatever its size; each item answers on its own."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
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
from controller.domain.errors import Conflict, ControllerError, InvalidInput, NotFound
from controller.service.bootstrap import Services
from controller.service.unit_of_work import UnitOfWork, unit_of_work
from controller.service.unmarked import Unmarked
from participants.runtime.db import retry_lost_races


@dataclass(frozen=True)
class StartRequest:
    flow: str
    input: dict[str, Any]
    actor: str
    sla_seconds: int | None = None
    correlation_id: str | None = None
    idempotency_key: str | None = None
    checked: dict[str, Any] | None = None  # `input` as the edge validated it: not validated again

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


# What one start came to: the workflow started (or replayed), or the error a single POST answers.
Outcome = Started | ControllerError


def start_workflow(services: Services, request: StartRequest, now: datetime,
                   unmarked: Unmarked | None = None) -> Started:
    """One start: a batch of one, its error raised."""
    outcome = start_workflows(services, [request], now, unmarked)[0]
    if isinstance(outcome, ControllerError):
        raise outcome
    return outcome


@dataclass(frozen=True)
class _Ready:
    """A request whose flow is loaded and whose input is valid: only the database can refuse it."""

    index: int
    request: StartRequest
    flow: Flow
    data: dict[str, Any]


@retry_lost_races  # a deadlock's victim rolled back: run again at once, not answered 503
def start_workflows(services: Services, requests: Sequence[StartRequest], now: datetime,
                    unmarked: Unmarked | None = None) -> list[Outcome]:
    """Every request's outcome, in order, from one transaction: what fails alone (unknown flow,
    bad input, key reused with another body, correlation ID taken) is that item's error.
    `unmarked`: see `unit_of_work` (one commit per kickoff)."""
    outcomes: dict[int, Outcome] = {}
    ready: list[_Ready] = []
    for index, request in enumerate(requests):
        try:
            flow = _flow(services.catalog, request.flow)
            data = request.checked if request.checked is not None else _validate_input(
                services.registry, flow, request.input)
            ready.append(_Ready(index, request, flow, data))
        except ControllerError as exc:
            outcomes[index] = exc
    if ready:
        outcomes.update(_record(services, ready, now, unmarked))
    return [outcomes[i] for i in range(len(requests))]


def _record(services: Services, ready: list[_Ready], now: datetime,
            unmarked: Unmarked | None) -> dict[int, Outcome]:
    try:
        with unit_of_work(services, now, "api", unmarked) as uow:
            return _start_all(uow, ready)
    except IntegrityError:
        # A writer that took no lock won a race on a key or an ID (the locks make it rare): the
        # same decisions again see its row, which turns only the items it took into a 200 or a 409.
        with unit_of_work(services, now, "api", unmarked) as uow:
            return _start_all(uow, ready)


def _start_all(uow: UnitOfWork, ready: list[_Ready]) -> dict[int, Outcome]:
    """Under the locks of every given ID and key (one statement), what each item finds stored
    (one query for the replays, one for the IDs taken, one for early messages), then each
    started or refused in the order given."""
    given = sorted({r.request.correlation_id for r in ready if r.request.correlation_id})
    keyed = [r.request for r in ready if r.request.idempotency_key]
    uow.lock([*given, *(_key_lock(r) for r in keyed)])
    seen = _Seen(_stored_keys(uow, keyed), store.taken(uow.conn, given) if given else set())
    early = store.early_messages_of(uow.conn, sorted(set(given) - seen.cids)) if given else {}
    outcomes: dict[int, Outcome] = {}
    for item in ready:
        try:
            outcomes[item.index] = _one(uow, item, seen, early)
        except ControllerError as exc:
            outcomes[item.index] = exc
    return outcomes


@dataclass
class _Seen:
    """Keys and correlation IDs already used: stored, or by an earlier item of the batch."""

    keys: dict[tuple[str, str], tuple[str, str]]  # (actor, key) -> (correlation ID, request hash)
    cids: set[str]


def _one(uow: UnitOfWork, item: _Ready, seen: _Seen, early: dict[str, list[Envelope]]) -> Started:
    request = item.request
    key = (request.actor, request.idempotency_key or "")
    if request.idempotency_key and key in seen.keys:
        cid, fingerprint = seen.keys[key]
        if fingerprint != request.fingerprint():
            raise Conflict(f"Idempotency-Key {request.idempotency_key!r} was used with another body")
        return Started(cid, False)
    if request.correlation_id in seen.cids:
        raise Conflict(f"workflow {request.correlation_id} already exists")
    started = _start(uow, item, early.get(request.correlation_id or "", []))
    seen.cids.add(started.correlation_id)
    if request.idempotency_key:
        seen.keys[key] = (started.correlation_id, request.fingerprint())
    return started


def _start(uow: UnitOfWork, item: _Ready, early: list[Envelope]) -> Started:
    flow, request, data, now = item.flow, item.request, item.data, uow.now
    cid = request.correlation_id or str(uuid.uuid4())  # a new UUID names nothing yet: no early message
    start_event = new_event(flow.start_event, data, correlation_id=cid, source=CONTROLLER,
                            version=uow.registry.latest(flow.start_event))
    wf, changes = lifecycle.start(flow, cid, start_event.id, data, now, request.sla_seconds)
    for message in early:
        changes += lifecycle.on_message(flow, wf, message.type, message.id, message.data, now)
    attrs = _attributes(flow, data)
    uow.add(wf, {"started_by": request.actor, "idempotency_key": request.idempotency_key,
                 "request_hash": request.fingerprint(), "input": data}, attrs, early=bool(early))
    first = len(uow.messages)
    uow.emit(start_event, traced=False)  # a new id: nothing names it yet
    uow.apply(wf, changes)
    view = views.render(flow, wf, request.actor, data, wf.steps, wf.compensations.values(), attrs)
    return Started(cid, True, uow.messages[first:], view)


def _key_lock(request: StartRequest) -> str:
    """The lock name of an idempotency key: a space, which no correlation ID holds, keeps the
    two kinds of names apart (a hash collision only makes two starts wait for each other)."""
    return f"key {request.actor} {request.idempotency_key}"


def _stored_keys(uow: UnitOfWork, keyed: list[StartRequest]) -> dict[tuple[str, str], tuple[str, str]]:
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for actor in sorted({r.actor for r in keyed}):  # one query: a batch has one caller
        keys = sorted({r.idempotency_key or "" for r in keyed if r.actor == actor})
        found.update({(actor, k): v for k, v in store.started_with_keys(uow.conn, actor, keys).items()})
    return found


def _flow(catalog: Catalog, name: str) -> Flow:
    try:
        return catalog.latest(name)
    except KeyError:
        raise NotFound(f"no flow named {name!r}; known: {', '.join(catalog.names())}") from None


def check_input(catalog: Catalog, registry: Registry, flow_name: str,
                data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What is wrong with `data` as the input of the flow, keyed `input.<field>`, and the input
    as validated when nothing is; neither for a flow not loaded (the start answers that 404)."""
    try:
        return {}, _validate_input(registry, catalog.latest(flow_name), data)
    except KeyError:
        return {}, None
    except InvalidInput as exc:
        return exc.errors or {}, None


def _validate_input(registry: Registry, flow: Flow, data: dict[str, Any]) -> dict[str, Any]:
    wide = wide_integer_errors(data, "input")
    if wide:
        raise InvalidInput("input holds integers JSON here cannot carry", wide)
    nul: dict[str, object] = {f"input.{p}".rstrip("."): ["a NUL character, which the database cannot store"]
           for p in _nul_paths(data)}
    if nul:  # refused here, as this item's 422, rather than failing a batch's transaction
        raise InvalidInput("input holds a NUL character", nul)
    try:
        return registry.validate(flow.start_event, registry.latest(flow.start_event), data)
    except InvalidMessage as exc:
        errors = {"input." + k.removeprefix("data."): v for k, v in exc.errors.items()}
        raise InvalidInput(f"input does not match the schema of {flow.start_event}", errors) from exc


def _nul_paths(value: Any, path: str = "") -> list[str]:
    """The dotted path of every string (or key) in `value` holding a NUL character."""
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    if isinstance(value, dict):
        return [p for k, v in value.items()
                for p in ([f"{path}{k}"] if "\x00" in k else _nul_paths(v, f"{path}{k}."))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nul_paths(v, f"{path}{i}.")]
    return []


def _attributes(flow: Flow, data: dict[str, Any]) -> dict[str, str]:
    return {name: str(data[name])[:255] for name in flow.search_attributes if data.get(name) is not None}
