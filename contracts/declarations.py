"""Message types declared in a flow file's `messages:` section: their validation, the rule a new
declaration of a type and version keeps (no field removed or retyped, no new required one), and
their registration next to the shipped schemas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from contracts.envelope import COMMAND, EVENT, TYPE_PATTERN
from contracts.errors import FlowDefinitionError
from contracts.json_payloads import FAILED_SCHEMA, JsonPayload, schema_problems
from contracts.payloads import Registry, failed_type
from contracts.streams import MAX_PARTITIONS, Partitioning

_TYPE = validate.Regexp(TYPE_PATTERN, error="must be a message type such as payment.charged")


@dataclass(frozen=True)
class Declaration:
    type: str
    kind: str
    version: int
    payload: JsonPayload
    partitioning: Partitioning | None = None

    @property
    def source(self) -> str:
        return self.payload.source


class MessageSchema(Schema):
    """One entry of `messages:`, keyed by its type."""

    class Meta:
        unknown = RAISE

    kind = fields.Str(load_default=EVENT, validate=validate.OneOf([EVENT, COMMAND]))
    version = fields.Int(load_default=1, strict=True, validate=validate.Range(min=1))
    schema = fields.Dict(keys=fields.Str(), required=True)
    # An event type appended to `P:event:<type>:<n>`, n from this field (contracts.streams).
    partition_by = fields.Str(load_default=None, validate=validate.Length(min=1))
    partitions = fields.Int(load_default=None, strict=True,
                            validate=validate.Range(min=1, max=MAX_PARTITIONS))

    @validates("schema")
    def _json_schema(self, value: dict[str, Any], **kwargs: Any) -> None:
        problems = schema_problems(value)
        if problems:
            raise ValidationError(problems)

    @validates_schema
    def _partitioning(self, data: dict[str, Any], **kwargs: Any) -> None:
        by, count = data.get("partition_by"), data.get("partitions")
        if by is None and count is None:
            return
        if by is None or count is None:
            missing = "partition_by" if by is None else "partitions"
            raise ValidationError("partition_by and partitions go together", missing)
        if data.get("kind", EVENT) != EVENT:
            raise ValidationError("only an event type is partitioned; a command has one stream "
                                  "per participant", "partition_by")
        problem = _key_problem(data.get("schema") or {}, by)
        if problem:
            raise ValidationError(problem, "partition_by")


def _key_problem(schema: Mapping[str, Any], name: str) -> str | None:
    """Why `name` cannot be the partition key of payloads of `schema`, or None: every payload
    must carry it, as a string or an integer."""
    prop = _mapping(schema.get("properties")).get(name)
    if not isinstance(prop, Mapping):
        return f"{name} is not a property of the schema"
    if name not in _list(schema.get("required")):
        return f"{name} must be required: every event needs its partition key"
    if prop.get("type") not in ("string", "integer"):
        return f"{name} must be of type string or integer, not {prop.get('type')}"
    return None


_MESSAGE = MessageSchema()


def read_messages(section: Any, source: str) -> list[Declaration]:
    """The declarations of one file's `messages:` section (None: there is none); errors keyed
    `messages.<type>.<field>`, naming `source`."""
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise FlowDefinitionError(source, {"messages": ["must map each message type to its schema"]})
    found, problems = [], {}
    for message_type, entry in section.items():
        at = f"messages.{message_type}"
        try:
            _TYPE(message_type if isinstance(message_type, str) else "")
            if not isinstance(entry, Mapping):
                raise ValidationError(["must be a mapping with the type's schema"])
            raw = _MESSAGE.load(dict(entry))
        except ValidationError as exc:
            problems.update(_keyed(at, exc.messages))
            continue
        part = raw["partition_by"] and Partitioning(raw["partition_by"], raw["partitions"])
        found.append(Declaration(message_type, raw["kind"], raw["version"],
                                 JsonPayload(raw["schema"], source), part or None))
    if problems:
        raise FlowDefinitionError(source, problems)
    return found


def _keyed(at: str, messages: Any) -> dict[str, object]:
    if isinstance(messages, dict):
        return {f"{at}.{k}": v for k, v in messages.items()}
    return {at: messages}


def declare(registry: Registry, declarations: Iterable[Declaration]) -> None:
    """Register each declaration in turn, refusing a redeclared shipped type and version, a
    change of kind, and a same-version change that breaks its readers (`breaking_changes`)."""
    for declaration in declarations:
        if _admit(registry, declaration):
            _register(registry, declaration)


def _admit(registry: Registry, new: Declaration) -> bool:
    """Whether `new` is to be registered: False for an identical redeclaration."""
    at = f"messages.{new.type}"
    if registry.knows(new.type) and registry.partitioning(new.type) != new.partitioning:
        raise FlowDefinitionError(new.source, {f"{at}.partition_by": [
            f"{new.type} is declared {_partitioned_as(registry.partitioning(new.type))} elsewhere: "
            "every declaration of a type says the same, since that decides its streams"]})
    if registry.knows(new.type) and registry.kind(new.type) != new.kind:
        raise FlowDefinitionError(new.source, {f"{at}.kind": [
            f"{new.type} is a {registry.kind(new.type)}{_where(registry, new.type)}, not a {new.kind}"]})
    answer = failed_type(new.type)
    if new.kind == COMMAND and registry.knows(answer) and registry.kind(answer) != EVENT:
        raise FlowDefinitionError(new.source, {f"{at}.kind": [
            f"the answer {answer} of a command is an event; it is declared a {registry.kind(answer)}"]})
    if not registry.knows(new.type) or new.version not in registry.versions(new.type):
        return True
    old = registry.schema(new.type, new.version)
    if not isinstance(old, JsonPayload):
        raise FlowDefinitionError(new.source, {f"{at}.version": [
            f"{new.type} v{new.version} is shipped with Baton: it cannot be redeclared; "
            f"declare version {registry.latest(new.type) + 1}"]})
    if old.schema == new.payload.schema:
        return False
    breaks = breaking_changes(old.schema, new.payload.schema)
    if breaks:
        raise FlowDefinitionError(new.source, {f"{at}.schema": [
            f"{new.type} v{new.version} is declared differently in {old.source}: this one "
            f"removes or retypes a field ({'; '.join(breaks)}): declare version "
            f"{registry.latest(new.type) + 1}"]})
    return True  # optional fields added: the later declaration wins


def _partitioned_as(part: Partitioning | None) -> str:
    return f"partitioned by {part.field} in {part.partitions}" if part else "unpartitioned"


def _where(registry: Registry, message_type: str) -> str:
    schema = registry.schema(message_type, registry.latest(message_type))
    return f" in {schema.source}" if isinstance(schema, JsonPayload) and schema.source else ""


def _register(registry: Registry, d: Declaration) -> None:
    failed = None
    if d.kind == COMMAND:  # keep an answer declared on its own; else the default, like shipped
        answer = failed_type(d.type)
        known = registry.knows(answer) and d.version in registry.versions(answer)
        failed = registry.schema(answer, d.version) if known else JsonPayload(FAILED_SCHEMA, d.source)
    registry.register(d.type, d.payload, version=d.version, kind=d.kind, failed_schema=failed)
    registry.partition(d.type, d.partitioning)


def breaking_changes(old: Mapping[str, Any], new: Mapping[str, Any], at: str = "") -> list[str]:
    """What a reader of `old` would no longer find in a payload valid under `new`: a property
    removed or its `type` changed, a property newly required; nested objects and array items
    too. Anything else (an optional property added, a bound changed) is not a breaking change."""
    found: list[str] = []
    if old.get("type") != new.get("type"):
        found.append(f"{at or 'the payload'} changes type from {old.get('type')} to {new.get('type')}")
        return found
    old_props, new_props = _mapping(old.get("properties")), _mapping(new.get("properties"))
    for name, old_prop in old_props.items():
        path = f"{at}.{name}" if at else name
        if name not in new_props:
            found.append(f"{path} is removed")
        elif isinstance(old_prop, Mapping) and isinstance(new_props[name], Mapping):
            found.extend(breaking_changes(old_prop, new_props[name], path))
    added = sorted(set(_list(new.get("required"))) - set(_list(old.get("required"))))
    found.extend(f"{at + '.' if at else ''}{name} is newly required" for name in added)
    old_items, new_items = old.get("items"), new.get("items")
    if isinstance(old_items, Mapping) and isinstance(new_items, Mapping):
        found.extend(breaking_changes(old_items, new_items, f"{at}[]" if at else "[]"))
    return found


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []
