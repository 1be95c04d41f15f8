"""The payload schemas this project ships, gathered into one registry."""

from __future__ import annotations

from contracts import lifecycle_events, order_fulfillment, price_change
from contracts.payloads import Registry


def default_registry() -> Registry:
    registry = Registry()
    order_fulfillment.register(registry)
    price_change.register(registry)
    lifecycle_events.register(registry)
    return registry
