"""Payload schemas of the second reference flow, `price_change`.

A proposed price change is orchestrated through its core (rules by command, a human approval when
a soft limit is crossed, publishing by command) and choreographed at its edges: once
`price.published` is out, the catalog and the search index react to it on their own, and to
`price.reverted` when the change is walked back.

Every payload carries the change's `change_id` and `product_id`. Prices are JSON numbers in the
change's `currency` (ISO 4217); `revision` numbers the product's price as the pricing participant
publishes it, so that a read model applies a price only when it is newer than the one it holds.
"""

from __future__ import annotations

from marshmallow import fields, validate

from contracts.order_fulfillment import CURRENCY
from contracts.payloads import Amount, FailedPayload, Payload, Registry

VERDICTS = ("accept", "review", "reject")
SEVERITIES = ("hard", "soft")
_ID = validate.Length(min=1, max=128)
_POSITIVE = validate.Range(min=0, min_inclusive=False)


class _Change(Payload):
    change_id = fields.Str(required=True, validate=_ID)
    product_id = fields.Str(required=True, validate=_ID)


class PriceChangeProposed(_Change):
    """The start event; also the payload of the `price.evaluate` command."""

    current_price = Amount(required=True, validate=_POSITIVE)
    proposed_price = Amount(required=True, validate=_POSITIVE)
    unit_cost = Amount(required=True, validate=validate.Range(min=0))
    currency = fields.Str(required=True, validate=CURRENCY)
    competitor_price = Amount(validate=_POSITIVE)


class Violation(Payload):
    rule = fields.Str(required=True, validate=validate.Length(min=1))
    severity = fields.Str(required=True, validate=validate.OneOf(SEVERITIES))
    detail = fields.Str(required=True)


class PriceEvaluated(_Change):
    verdict = fields.Str(required=True, validate=validate.OneOf(VERDICTS))
    violations = fields.List(fields.Nested(Violation), required=True)


class PriceDecision(_Change):
    """`price.approved` / `price.rejected`: the controller emits them on an operator's signal, with
    the start event's data and whatever the signal's `data` adds."""


class PublishPrice(_Change):
    proposed_price = Amount(required=True, validate=_POSITIVE)
    currency = fields.Str(required=True, validate=CURRENCY)


class PricePublished(_Change):
    price = Amount(required=True, validate=_POSITIVE)
    previous_price = Amount(required=True, validate=_POSITIVE)
    currency = fields.Str(required=True, validate=CURRENCY)
    revision = fields.Int(required=True, strict=True, validate=validate.Range(min=1))


class RevertPrice(_Change):
    reason = fields.Str(required=True)


class PriceReverted(_Change):
    price = Amount(required=True, validate=_POSITIVE)  # the product's price after the revert
    currency = fields.Str(required=True, validate=CURRENCY)
    revision = fields.Int(required=True, strict=True, validate=validate.Range(min=1))
    restored = fields.Bool(required=True)  # False: a later change had already replaced it


class PriceApplied(_Change):
    """`catalog.price_updated` and `search.price_indexed`: the price the read model now holds."""

    price = Amount(required=True, validate=_POSITIVE)
    currency = fields.Str(required=True, validate=CURRENCY)
    revision = fields.Int(required=True, strict=True, validate=validate.Range(min=1))


class ChangeFailed(_Change, FailedPayload):
    pass


def register(registry: Registry) -> None:
    events = {
        "price.change_proposed": PriceChangeProposed(),
        "price.evaluated": PriceEvaluated(),
        "price.approved": PriceDecision(),
        "price.rejected": PriceDecision(),
        "price.published": PricePublished(),
        "price.reverted": PriceReverted(),
        "catalog.price_updated": PriceApplied(),
        "catalog.price_update_failed": ChangeFailed(),
        "search.price_indexed": PriceApplied(),
    }
    commands = {
        "price.evaluate": PriceChangeProposed(),
        "price.publish": PublishPrice(),
        "price.revert": RevertPrice(),
    }
    registry.register_all(events, commands, failed_schema=ChangeFailed())
