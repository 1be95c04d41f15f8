"""The reference participants: `inventory`, `payment`, `shipping`, `notification` of `order_fulfillment`
and `pricing`, `catalog`, `search` of `price_change` and `bulk_repricing`, each with its own tables
and business rules.

`build(name)` returns a fresh Participant for one of NAMES; the Procfile runs one per process.
"""

from __future__ import annotations

from collections.abc import Callable

from participants.reference import (
    catalog,
    inventory,
    notification,
    payment,
    pricing,
    repricing,
    search,
    shipping,
)
from participants.runtime.participant import Participant

NAMES = ("inventory", "payment", "shipping", "notification", "pricing", "catalog", "search")
REFERENCE: dict[str, Callable[[], Participant]] = {
    inventory.NAME: inventory.build,
    payment.NAME: payment.build,
    shipping.NAME: shipping.build,
    notification.NAME: notification.build,
    pricing.NAME: repricing.build,  # price_change's commands and bulk_repricing's
    catalog.NAME: catalog.build,
    search.NAME: search.build,
}


def build(name: str) -> Participant:
    """The reference participant called `name`; KeyError naming the known ones otherwise."""
    try:
        factory = REFERENCE[name]
    except KeyError:
        raise KeyError(f"no reference participant {name!r}; known: {', '.join(NAMES)}") from None
    return factory()
