"""What a service declares to join a flow: its name, its handlers, its joins, its own tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, overload

from sqlalchemy import Connection, MetaData

from contracts.envelope import Envelope, new_event
from contracts.payloads import Registry
from contracts.registry import default_registry
from contracts.streams import Keys


@dataclass
class Context:
    """Handed to a handler: the database transaction of its effect and a way to build events."""

    conn: Connection
    message: Envelope
    now: datetime
    participant: str
    registry: Registry

    def event(self, message_type: str, data: Mapping[str, Any], *,
              version: int | None = None) -> Envelope:
        """An event caused by the message at hand, its payload checked against the registry here,
        and not again by the runtime before it leaves (an event built another way is)."""
        version = version or self.registry.latest(message_type)
        loaded = self.registry.validate(message_type, version, data)
        return self.registry.vouch(new_event(
            message_type, loaded, correlation_id=self.message.correlation_id,
            causation_id=self.message.id, source=self.participant, version=version,
            traceparent=self.message.traceparent,
        ))


Emitted = Iterable[Envelope] | None
Handler = Callable[[Envelope, Context], Emitted]
JoinHandler = Callable[[dict[str, Envelope], Context], Emitted]
# All the new messages of a batch at once, in order, in one transaction; what each one emits.
BatchHandler = Callable[[Connection, list[Envelope], datetime], list[list[Envelope]]]
# Takes, in one sorted order, every lock the handlers of these messages will take.
Locker = Callable[[Connection, list[Envelope]], None]
# What falls due by `now` (a due time the participant keeps in its own tables, so that a crash
# does not lose it): the messages that emits, in the transaction of its effects.
Ticker = Callable[[Connection, datetime], Iterable[Envelope]]


@dataclass(frozen=True)
class Join:
    name: str
    types: tuple[str, ...]
    handler: JoinHandler


class _RegistrySlot:
    """`Participant.registry`: the one it was given, else the one its process gives it at run
    (`adopt_registry`), else the shipped schemas. Nothing is bound when the participant is
    defined, at import, before its process has read the settings that say what is declared."""

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> None: ...
    @overload
    def __get__(self, obj: Participant, owner: type | None = None) -> Registry: ...

    def __get__(self, obj: Participant | None, owner: type | None = None) -> Registry | None:
        if obj is None:
            return None  # the field's default: no registry of its own
        if obj._own_registry is not None:
            return obj._own_registry
        if obj._default_registry is None:
            obj._default_registry = default_registry()
        return obj._default_registry

    def __set__(self, obj: Participant, value: Registry | None) -> None:
        obj._own_registry = value


@dataclass
class Participant:
    """`@p.on_event("order.placed")`, `@p.on_command("payment.refund")`, `@p.join(...)`."""

    name: str
    registry: _RegistrySlot = _RegistrySlot()
    metadata: MetaData | None = None
    events: dict[str, Handler] = field(default_factory=dict)
    commands: dict[str, Handler] = field(default_factory=dict)
    joins: list[Join] = field(default_factory=list)
    on_setup: Callable[[Connection], None] | None = None  # e.g. seed reference data, idempotently
    # Instead of handlers per type: one for all the events of `batch_types` in a batch, for a
    # consumer that gains from seeing them at once, as the controller's tracker does.
    batch: BatchHandler | None = None
    batch_types: tuple[str, ...] = ()
    # For handlers that lock (the tracker's: each workflow's): the per-message fallback, which
    # runs the batch's messages one by one in one transaction, calls it first with them all, so
    # that two consumers never take those locks message by message in crossing orders.
    lock: Locker | None = None
    # Messages it has nothing to do with although it reads their stream (the tracker: the start
    # events it published itself): acknowledged without a claim or a transaction.
    ignore: Callable[[Envelope], bool] | None = None
    # A timer: run by the runtime's loop about every `tick_seconds` (when its read wakes, so up to
    # BATON_BLOCK_MS later), in a transaction of its own; what it emits goes out as a handler's.
    # Replicas all tick: it takes row locks (SKIP LOCKED) so that each due item is acted on once.
    tick: Ticker | None = None
    tick_seconds: float = 1.0

    _own_registry: Registry | None = field(default=None, init=False, repr=False, compare=False)
    _default_registry: Registry | None = field(default=None, init=False, repr=False, compare=False)

    def adopt_registry(self, registry: Registry) -> None:
        """Use `registry` unless the participant was given one of its own."""
        if self._own_registry is None:
            self._own_registry = registry

    def on_event(self, message_type: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.events[message_type] = handler
            return handler
        return register

    def on_command(self, message_type: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.commands[message_type] = handler
            return handler
        return register

    def join(self, name: str, *types: str) -> Callable[[JoinHandler], JoinHandler]:
        def register(handler: JoinHandler) -> JoinHandler:
            self.joins.append(Join(name, tuple(types), handler))
            return handler
        return register

    def streams(self, keys: Keys) -> list[str]:
        types = dict.fromkeys([*self.events, *self.batch_types, *(t for j in self.joins for t in j.types)])
        streams = [s for t in types for s in keys.event_streams(t)]
        if self.commands:
            streams.append(keys.command_stream(self.name))
        return streams
