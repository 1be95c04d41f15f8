"""The registry of payload schemas by (message type, version), and the rules every payload keeps."""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from contracts.envelope import COMMAND, EVENT
from contracts.errors import InvalidMessage, UnknownMessageType, UnsupportedVersion
from contracts.payload_check import Amount as Amount  # its home is the check that knows it
from contracts.payload_check import Verdict, verbatim_of, verdict_of
from contracts.streams import Partitioning

FAILED_SUFFIX = "_failed"
M = TypeVar("M")


class Payload(Schema):
    """Tolerant reader: unknown fields pass through, missing or mistyped ones do not."""

    class Meta:
        unknown = INCLUDE


class FailedPayload(Payload):
    reason = fields.Str(required=True, validate=validate.Length(min=1))


class EmptyPayload(Payload):
    pass


class PayloadSchema(Protocol):
    """What the registry holds for a type and version: a marshmallow schema, or a declared one
    (`contracts.json_payloads.JsonPayload`). `load` returns the payload or raises marshmallow's
    ValidationError with messages keyed by field."""

    def load(self, data: Mapping[str, Any], /) -> Any: ...


def failed_type(command_type: str) -> str:
    """The answer to a command that could not be carried out: `payment.refund_failed`."""
    return command_type + FAILED_SUFFIX


@dataclass
class Registry:
    """Schemas by type and version; a command type also registers its `_failed` answer."""

    _schemas: dict[tuple[str, int], PayloadSchema] = field(default_factory=dict)
    _kinds: dict[str, str] = field(default_factory=dict)
    _partitioned: dict[str, Partitioning] = field(default_factory=dict)
    # Each type's versions, in order: `latest` is asked for every message a process emits.
    _versions: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)
    # The messages built from a payload validated here, by identity, while they live.
    # The fast verdict of each schema (`check`), compiled on first use; None: marshmallow decides.
    _verdicts: dict[tuple[str, int], Verdict | None] = field(default_factory=dict, repr=False,
                                                             compare=False)
    # Of each schema, what says a payload loads as it is (`validate`), made on first use.
    _verbatims: dict[tuple[str, int], Verdict | None] = field(default_factory=dict, repr=False,
                                                              compare=False)
    _vouched: weakref.WeakValueDictionary[int, Any] = field(
        default_factory=weakref.WeakValueDictionary, repr=False, compare=False)

    def register(self, message_type: str, schema: PayloadSchema, *, version: int = 1,
                 kind: str = EVENT, failed_schema: PayloadSchema | None = None) -> None:
        self._add(message_type, version, schema, kind)
        if kind == COMMAND:
            self._add(failed_type(message_type), version, failed_schema or FailedPayload(), EVENT)

    def _add(self, message_type: str, version: int, schema: PayloadSchema, kind: str) -> None:
        self._schemas[(message_type, version)] = schema
        self._verdicts.clear()
        self._verbatims.clear()
        self._kinds[message_type] = kind
        known = self._versions.setdefault(message_type, [])
        if version not in known:
            bisect.insort(known, version)

    def register_all(self, events: Mapping[str, Schema], commands: Mapping[str, Schema], *,
                     failed_schema: Schema) -> None:
        """Version 1 of a flow's events, and of its commands, whose `_failed` answers all take
        `failed_schema`."""
        for message_type, schema in events.items():
            self.register(message_type, schema)
        for message_type, schema in commands.items():
            self.register(message_type, schema, kind=COMMAND, failed_schema=failed_schema)

    def partition(self, message_type: str, partitioning: Partitioning | None) -> None:
        """Declare (or, with None, undeclare) that events of `message_type` are partitioned."""
        if partitioning is None:
            self._partitioned.pop(message_type, None)
        else:
            self._partitioned[message_type] = partitioning

    def partitioning(self, message_type: str) -> Partitioning | None:
        return self._partitioned.get(message_type)

    def partitioned(self) -> dict[str, Partitioning]:
        """Every partitioned event type: what `Keys(prefix, registry.partitioned())` needs."""
        return dict(self._partitioned)

    def kind(self, message_type: str) -> str:
        try:
            return self._kinds[message_type]
        except KeyError:
            raise UnknownMessageType(message_type) from None

    def knows(self, message_type: str) -> bool:
        return message_type in self._kinds

    def versions(self, message_type: str) -> list[int]:
        return list(self._known_versions(message_type))

    def latest(self, message_type: str) -> int:
        return self._known_versions(message_type)[-1]

    def _known_versions(self, message_type: str) -> list[int]:
        try:
            return self._versions[message_type]
        except KeyError:
            raise UnknownMessageType(message_type) from None

    def types(self) -> list[str]:
        return sorted(self._kinds)

    def schema(self, message_type: str, version: int) -> PayloadSchema:
        try:
            return self._schemas[(message_type, version)]
        except KeyError:
            raise UnsupportedVersion(message_type, version, self.versions(message_type)) from None

    def validate(self, message_type: str, version: int, data: Mapping[str, Any]) -> dict[str, Any]:
        """The loaded payload, or InvalidMessage with errors keyed `data.<field>`. A payload that
        loading would return unchanged (`contracts.payload_check.verbatim_of`) is copied instead."""
        schema = self.schema(message_type, version)
        verbatim = _made(self._verbatims, (message_type, version), verbatim_of, schema)
        plain = data if type(data) is dict else dict(data)
        if verbatim is not None and verbatim(plain):
            return _copy(plain)
        return _load(schema, plain)

    def check(self, message_type: str, version: int, data: Mapping[str, Any]) -> None:
        """What `validate` raises, when it would raise; None when it would return. For the callers
        that throw the loaded payload away: most payloads are accepted by the fast verdict
        (`contracts.payload_check`) alone, and marshmallow judges the rest, in its own words."""
        schema = self.schema(message_type, version)
        verdict = _made(self._verdicts, (message_type, version), verdict_of, schema)
        plain = data if type(data) is dict else dict(data)
        if verdict is None or not verdict(plain):
            _load(schema, plain)

    def vouch(self, message: M) -> M:
        """`message`, recorded as built from a payload `validate` just returned, so that the
        runtime does not validate it a second time before it leaves: once per hop. A copy made
        with `dataclasses.replace` is another object, and is validated again."""
        self._vouched[id(message)] = message
        return message

    def vouched(self, message: object) -> bool:
        return self._vouched.get(id(message)) is message


def _made(made: dict[tuple[str, int], Verdict | None], key: tuple[str, int],
          make: Callable[[object], Verdict | None], schema: PayloadSchema) -> Verdict | None:
    """`make(schema)`, made once per type and version and kept in `made`."""
    if key not in made:
        made[key] = make(schema)
    return made[key]


def _load(schema: PayloadSchema, data: dict[str, Any]) -> dict[str, Any]:
    """marshmallow's load (or a declared schema's) of a copy of `data`; InvalidMessage with the
    errors keyed `data.<field>`."""
    try:
        loaded: dict[str, Any] = schema.load(dict(data))
    except ValidationError as exc:
        raise InvalidMessage({f"data.{k}": v for k, v in exc.messages_dict.items()}) from exc
    return loaded


def _copy(value: Any) -> Any:
    """A copy of a JSON value: new dicts and lists, the same strings and numbers (what a load
    would have built)."""
    if type(value) is dict:  # a scalar is taken as it is, without a call
        return {k: _copy(v) if type(v) in _NESTED else v for k, v in value.items()}
    if type(value) in (list, tuple):  # a list field loads a tuple as a list
        return [_copy(v) if type(v) in _NESTED else v for v in value]
    return value


_NESTED = (dict, list, tuple)
