"""Schemas of `GET /v1/reports/sla`: its query parameters and its JSON answer (for OpenAPI)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from contracts.timefmt import Timestamp

_RFC3339 = ("RFC 3339 timestamp with an offset, e.g. 2026-11-22T10:00:00Z; taken in UTC. "
            "Workflows count when they started in [from, to).")


class SlaQuery(Schema):
    class Meta:
        unknown = RAISE

    flow = fields.Str(validate=validate.Length(min=1, max=64),
                      metadata={"description": "Only this flow (default: every flow)."})
    start = Timestamp(data_key="from",
                      metadata={"description": "Start of the range, inclusive. " + _RFC3339})
    end = Timestamp(data_key="to",
                    metadata={"description": "End of the range, exclusive. " + _RFC3339})
    limit = fields.Int(load_default=20, validate=validate.Range(min=1, max=1000),
                       metadata={"description": "Rows of the breaches and slowest lists."})

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        start, end = data.get("start"), data.get("end")
        if start is not None and end is not None and end < start:
            raise ValidationError("must not be before from", "to")


class Durations(Schema):
    count = fields.Int(metadata={"description": "How many durations the figures are of."})
    p50 = fields.Float(allow_none=True)
    p95 = fields.Float(allow_none=True)
    p99 = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)


class _Outcomes(Schema):
    flow = fields.Str()
    started = fields.Int()
    completed = fields.Int()
    compensated = fields.Int()
    needs_attention = fields.Int()
    breached = fields.Int()
    sla_met = fields.Int()
    sla_judged = fields.Int(metadata={"description": "Finished, or past the deadline."})
    sla_met_pct = fields.Float(allow_none=True, metadata={"description": "100 * sla_met / sla_judged"})
    duration_seconds = fields.Nested(Durations)


class FlowRow(_Outcomes):
    in_flight = fields.Int()


class Histogram(Schema):
    le = fields.List(fields.Float(), metadata={"description": "Upper bounds, seconds."})
    cumulative = fields.List(fields.Int(), metadata={"description": "Durations <= each bound."})
    count = fields.Int()


class StepRow(_Outcomes):
    step = fields.Str()
    failed = fields.Int()
    histogram = fields.Nested(Histogram)


class TransitionRow(Schema):
    flow = fields.Str()
    from_type = fields.Str()
    to_type = fields.Str()
    participant = fields.Str(metadata={"description": "The source of the later message."})
    count = fields.Int()
    duration_seconds = fields.Nested(Durations)


class Breach(Schema):
    correlation_id = fields.Str()
    flow = fields.Str()
    status = fields.Str()
    reason = fields.Str(allow_none=True)
    step = fields.Str(allow_none=True, metadata={"description": "The step that was late."})
    deadline_of = fields.Str(metadata={"description": "`step` or `workflow`: the deadline missed."})
    deadline = fields.Str(allow_none=True)
    late_by_seconds = fields.Float(allow_none=True)
    link = fields.Str()


class Breaches(Schema):
    total = fields.Int()
    items = fields.List(fields.Nested(Breach))


class Slow(Schema):
    correlation_id = fields.Str()
    flow = fields.Str()
    started_at = fields.Str()
    finished_at = fields.Str()
    deadline = fields.Str(allow_none=True)
    duration_seconds = fields.Float()
    link = fields.Str()


class SeriesPoint(Schema):
    start = fields.Str()
    started = fields.Int()
    completed = fields.Int()
    breached = fields.Int()
    sla_met_pct = fields.Float(allow_none=True)


class Series(Schema):
    bucket_seconds = fields.Int()
    items = fields.List(fields.Nested(SeriesPoint))


class SlaReport(Schema):
    generated_at = fields.Str()
    flow = fields.Str(allow_none=True)
    from_ = fields.Str(data_key="from", attribute="from", allow_none=True)
    to = fields.Str(allow_none=True)
    flows = fields.List(fields.Nested(FlowRow))
    steps = fields.List(fields.Nested(StepRow))
    transitions = fields.List(fields.Nested(TransitionRow))
    breaches = fields.Nested(Breaches)
    slowest = fields.List(fields.Nested(Slow))
    series = fields.Nested(Series)
    progress = fields.List(fields.Dict(), metadata={"description": (
        "Per flow with progress events (bulk_repricing): `flow`, `workflows`, and the sums of "
        "each workflow's last counts (skus, published, done, failed, reverted).")})
