"""Schemas of the REST API: they validate requests and generate the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from contracts.envelope import CORRELATION_PATTERN
from contracts.envelope_rules import NO_NUL_PATTERN
from contracts.flows import Flow
from contracts.jsonsafe import wide_integer_errors
from contracts.statuses import Reason, WorkflowStatus
from contracts.timefmt import Timestamp

STATUSES = [s.value for s in WorkflowStatus]
REASONS = [r.value for r in Reason]


class StartBody(Schema):
    """`start_body` adds the check of `input` against the flow's own schema."""

    class Meta:
        unknown = RAISE

    flow = fields.Str(required=True, validate=validate.Length(min=1, max=64))
    input = fields.Dict(keys=fields.Str(), required=True)
    sla_seconds = fields.Int(strict=True, validate=validate.Range(min=1, max=366 * 86400))
    correlation_id = fields.Str(validate=validate.Regexp(
        CORRELATION_PATTERN, error="1 to 128 characters from [A-Za-z0-9._:-]"))


# A flow's input checked: its errors keyed `input.<field>`, and the input as validated when it has
# none; neither for a flow not loaded (a 404 later).
InputCheck = Callable[[str, dict[str, Any]], tuple[dict[str, Any], "dict[str, Any] | None"]]
CHECKED = "checked_input"  # where a loaded start body keeps its input as validated


def start_body(check: InputCheck, base: type[StartBody] = StartBody) -> type[Schema]:
    """StartBody checking `input` against the flow's schema even when other fields are wrong,
    so that one 422 names every bad field, the body's and `input.*` alike; the input as
    validated is handed on under CHECKED, so that the start does not validate it again."""
    def check_input(schema: Schema, data: dict[str, Any], **kwargs: Any) -> None:
        if "flow" in data and "input" in data:  # both valid as fields
            errors, checked = check(data["flow"], data["input"])
            if errors:
                raise ValidationError(errors)
            if checked is not None:
                data[CHECKED] = checked  # `data` is what `load` returns

    validator = validates_schema(skip_on_field_errors=False)(check_input)
    return type(base.__name__, (base,), {"_check_input": validator})


class BatchItem(StartBody):
    """One start of a batch: a body of `POST /v1/workflows` and its own idempotency key."""

    idempotency_key = fields.Str(validate=[validate.Length(min=1, max=255), validate.Regexp(
        NO_NUL_PATTERN, error="must not contain a NUL character")])


MAX_BATCH = 1000


@dataclass(frozen=True)
class Refused:
    """A batch item that does not match its schema: its errors, answered as its 422."""

    errors: dict[str, Any]


class _OnItsOwn(fields.Raw):
    """A batch item, loaded by `schema`: one that does not load is that item's `Refused`, not the
    request's 422. So the document says any value is accepted here, and which values start."""

    def __init__(self, schema: type[Schema]) -> None:
        super().__init__(metadata={"anyOf": [
            {"$ref": "#/components/schemas/BatchItem"},
            {"description": "anything else: answered as this item's 422"}]})
        self.schema = schema()

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kwargs: Any) -> Any:
        try:  # null too: an item like any other
            return self.schema.load(value)
        except ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_body": exc.messages}
            return Refused(messages)


def batch_body(check: InputCheck) -> type[Schema]:
    """`{"workflows": [...]}`: up to MAX_BATCH items, each loaded on its own."""
    item = start_body(check, BatchItem)
    return type("BatchBody", (Schema,), {
        "Meta": type("Meta", (), {"unknown": RAISE}),
        "workflows": fields.List(_OnItsOwn(item), required=True, validate=validate.Length(max=MAX_BATCH),
                                 metadata={"description": f"at most {MAX_BATCH} starts"}),
    })


class WorkflowFilter(Schema):
    """What selects workflows, for a listing and for a bulk action."""

    class Meta:
        unknown = RAISE

    flow = fields.Str(validate=validate.Length(min=1, max=64))
    status = fields.Str(validate=validate.OneOf(STATUSES))
    reason = fields.Str(validate=validate.OneOf(REASONS))
    started_after = Timestamp()
    started_before = Timestamp()
    overdue = fields.Bool()
    stalled_step = fields.Str(validate=validate.Length(min=1, max=64))


class ListQuery(WorkflowFilter):
    """`list_query` adds the search attributes the loaded flows declare (`order_id=...`)."""

    limit = fields.Int(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.Str(validate=validate.Length(min=1, max=512))


class PageQuery(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Int(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.Str(validate=validate.Length(min=1, max=512))


class StepOut(Schema):
    name = fields.Str()
    kind = fields.Str()
    participant = fields.Str()
    status = fields.Str()
    started_at = fields.Str(allow_none=True)
    finished_at = fields.Str(allow_none=True)
    deadline = fields.Str(allow_none=True)
    attempts = fields.Int()
    reason = fields.Str(allow_none=True, metadata={"description": (
        "why the step failed, null unless its status is failed: the `reason` of the failed event "
        "that ended it; for a done event that matched the step's `fails_when`, its `reason` or the "
        "match; for a command step that ran out of attempts unanswered, that")})


class CompensationOut(Schema):
    step = fields.Str()
    command = fields.Str()
    status = fields.Str()
    attempts = fields.Int()
    sent_at = fields.Str(allow_none=True)
    finished_at = fields.Str(allow_none=True)


class WorkflowSummaryOut(Schema):
    """A list item: the workflow without its input and steps (GET /v1/workflows/<cid> has them)."""

    correlation_id = fields.Str()
    flow = fields.Str()
    flow_version = fields.Int()
    status = fields.Str()
    reason = fields.Str(allow_none=True)
    started_at = fields.Str()
    deadline = fields.Str(allow_none=True)
    finished_at = fields.Str(allow_none=True)
    started_by = fields.Str()
    search_attributes = fields.Dict(keys=fields.Str(), values=fields.Str())


class WorkflowOut(WorkflowSummaryOut):
    """The workflow as GET /v1/workflows/<cid> shows it: its summary, input, steps and compensations."""

    input = fields.Dict()
    steps = fields.List(fields.Nested(StepOut))
    compensations = fields.List(fields.Nested(CompensationOut))
    progress = fields.Dict(allow_none=True, metadata={"description": (
        "For a flow with `progress_on` (e.g. bulk_repricing): the counts its last progress event "
        "carried, e.g. skus, published, done, failed, reverted; null otherwise or before any.")})


class WorkflowPage(Schema):
    items = fields.List(fields.Nested(WorkflowSummaryOut))
    next_cursor = fields.Str(allow_none=True)


class MessageOut(Schema):
    id = fields.Str()
    kind = fields.Str()
    type = fields.Str()
    version = fields.Int()
    source = fields.Str()
    causation_id = fields.Str()
    target = fields.Str(allow_none=True)
    occurred_at = fields.Str()
    received_at = fields.Str()
    data = fields.Dict()


class TimelinePage(Schema):
    items = fields.List(fields.Nested(MessageOut))
    next_cursor = fields.Str(allow_none=True)


class MessageVersionOut(Schema):
    version = fields.Int()
    declared = fields.Bool(metadata={
        "description": "declared in a flow file's `messages:` section; false: shipped with Baton"})
    schema = fields.Dict(metadata={"description": "the payload's JSON Schema"})


class MessageTypeOut(Schema):
    type = fields.Str()
    kind = fields.Str(metadata={"description": "event or command"})
    versions = fields.List(fields.Nested(MessageVersionOut))


class FlowOut(Schema):
    name = fields.Str()
    version = fields.Int()
    description = fields.Str()
    start_event = fields.Str()
    sla_seconds = fields.Int()
    search_attributes = fields.List(fields.Str())
    steps = fields.List(fields.Dict(), metadata={
        "description": "each step as loaded; `retry` is its effective retry policy (null for a step "
                       "that sends no command), `compensation.retry` its compensation's"})
    completes_when = fields.List(fields.Str())
    messages = fields.List(fields.Nested(MessageTypeOut), metadata={
        "description": "every message type the flow uses, with the schema of each version"})
    mermaid = fields.Str()


class FlowList(Schema):
    items = fields.List(fields.Nested(FlowOut))


class Problem(Schema):
    """RFC 9457 problem details, with validation errors keyed by field."""

    type = fields.Str()
    title = fields.Str()
    status = fields.Int()
    detail = fields.Str()
    errors = fields.Dict()


class BatchItemOut(Schema):
    """One item's answer: its status and the workflow (201, 200) or the problem (404, 409, 422)."""

    status = fields.Int(validate=validate.OneOf([201, 200, 404, 409, 422]))
    workflow = fields.Nested(WorkflowOut)
    problem = fields.Nested(Problem)


class BatchOut(Schema):
    items = fields.List(fields.Nested(BatchItemOut), metadata={"description": "in request order"})


class InterventionBody(Schema):
    """Every intervention says why; the reason is kept in the audit."""

    class Meta:
        unknown = RAISE

    reason = fields.Str(required=True, validate=[
        validate.Length(min=1, max=2000),
        validate.Regexp(r"\s*\S", error="must say something: not only blanks")])


class RetryBody(InterventionBody):
    step = fields.Str(validate=validate.Length(min=1, max=64))


def _narrow_integers(value: dict[str, Any]) -> None:
    if errors := wide_integer_errors(value, ""):
        raise ValidationError({k.lstrip("."): v for k, v in errors.items()})


class SignalBody(InterventionBody):
    step = fields.Str(validate=validate.Length(min=1, max=64))
    data = fields.Dict(keys=fields.Str(), validate=_narrow_integers)


class DeadlineBody(InterventionBody):
    deadline = Timestamp()
    extend_seconds = fields.Int(strict=True, validate=validate.Range(min=1, max=366 * 86400))

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("deadline" in data) == ("extend_seconds" in data):
            message = ["give exactly one of deadline or extend_seconds"]
            raise ValidationError({"deadline": message, "extend_seconds": message})


class BulkBody(InterventionBody):
    """`bulk_body` adds `action`, one of the bulk actions, and `filter`: a WorkflowFilter with the
    flows' search attributes."""

    action = fields.Str(required=True)
    dry_run = fields.Bool(load_default=False)
    limit = fields.Int(load_default=100, validate=validate.Range(min=1, max=1000))
    extend_seconds = fields.Int(strict=True, validate=validate.Range(min=1, max=366 * 86400))
    step = fields.Str(validate=validate.Length(min=1, max=64))


# The bulk actions, each with the fields of the body it takes, True where it requires the field.
BulkActions = Mapping[str, Mapping[str, bool]]


def list_query(flows: Iterable[Flow]) -> type[Schema]:
    """ListQuery with an optional filter for each search attribute `flows` declare."""
    return ListQuery.from_dict(_attributes(flows, ListQuery().fields), name="ListQuery")


def bulk_body(flows: Iterable[Flow], actions: BulkActions) -> type[Schema]:
    """BulkBody whose `action` is one of `actions`, each field of the body an action takes only
    with that action, and whose filter takes `attributes`: the search attributes `flows` declare."""
    attributes = Schema.from_dict(_attributes(flows), name="SearchAttributes")
    bulk_filter = WorkflowFilter.from_dict({"attributes": fields.Nested(attributes)},
                                           name="BulkFilter")
    owned = [f for f in BulkBody().fields if any(f in p for p in actions.values())]

    def check_params(schema: Schema, data: dict[str, Any], **kwargs: Any) -> None:
        action, errors = data.get("action"), {}
        for name in owned:  # e.g. `extend_seconds`: the deadline action's, required there
            owners = [a for a, params in actions.items() if name in params]
            if action in owners and actions[action][name] and name not in data:
                errors[name] = [f"required by action {action}"]
            if action not in owners and name in data:
                errors[name] = [f"only for action {' or '.join(owners)}"]
        if errors:
            raise ValidationError(errors)

    return type("BulkBody", (BulkBody,), {
        "action": fields.Str(required=True, validate=validate.OneOf(list(actions))),
        "filter": fields.Nested(bulk_filter, required=True),
        "_check_params": validates_schema(check_params)})


def _attributes(flows: Iterable[Flow], taken: Collection[str] = ()) -> dict[str, fields.Field]:
    """One optional string per declared name; a name that is a filter already stays the filter."""
    names = sorted({a for f in flows for a in f.search_attributes} - set(taken))
    return {n: fields.Str(metadata={"description": "a search attribute the flows declare"})
            for n in names}


class BulkResult(Schema):
    correlation_id = fields.Str()
    status = fields.Int()
    detail = fields.Str()


class BulkOut(Schema):
    dry_run = fields.Bool()
    matched = fields.List(fields.Str())
    results = fields.List(fields.Nested(BulkResult))


class AuditEntry(Schema):
    actor = fields.Str()
    action = fields.Str()
    reason = fields.Str()
    at = fields.Str()
    result = fields.Str()
    details = fields.Dict(allow_none=True)


class AuditPage(Schema):
    items = fields.List(fields.Nested(AuditEntry))
    next_cursor = fields.Str(allow_none=True)
