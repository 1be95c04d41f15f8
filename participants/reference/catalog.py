"""Reference participant `catalog` of `price_change`: the product catalog's read model of prices.

Choreographed: no one sends it a command. It reacts on its own to `price.published` (the step
`update_catalog` waits for its answer) and to `price.reverted`, so that a change walked back leaves
the catalog at the restored price. A discontinued product cannot take a new price: the catalog says
so with `catalog.price_update_failed`, and the controller walks the published change back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    select,
    update,
)

from contracts.envelope import Envelope
from participants.reference.pricing import amount, cents
from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant

# Rules: a product is listed in PRODUCTS, or on first sight; either way, an id starting with
# DISCONTINUED_PREFIX is discontinued. A price is applied only when its `revision` is newer than the
# one the catalog holds, so events arriving late, twice or out of order leave the newest price.
# `price.published` for a discontinued product answers `catalog.price_update_failed`
# ("product DISC-001 is discontinued: its price cannot change") and changes nothing; otherwise it
# answers `catalog.price_updated` with the price the catalog now holds. `price.reverted` applies
# the restored price the same way (and answers `catalog.price_updated`), except for a discontinued
# product, where there is nothing to undo and nothing is answered.
NAME = "catalog"
ACTIVE, DISCONTINUED = "active", "discontinued"
DISCONTINUED_PREFIX = "DISC-"
# Seeded once: missing products are inserted, existing ones are never reset.
PRODUCTS: dict[str, str] = {
    **{f"SKU-{n:03d}": ACTIVE for n in range(1, 21)},
    **{f"DISC-{n:03d}": DISCONTINUED for n in range(1, 4)},
}

metadata = MetaData()
products = Table(
    "catalog_products", metadata,
    Column("product_id", String(128), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("price", BigInteger),  # cents; NULL until a price is published
    Column("currency", String(3)),
    Column("revision", Integer, nullable=False),
    Column("change_id", String(128)),  # the change whose event set the price
    Column("updated_at", DateTime(timezone=True)),
)


class Discontinued(Exception):
    """The product is no longer sold: its price cannot change."""


def status_of(product_id: str) -> str:
    return DISCONTINUED if product_id.startswith(DISCONTINUED_PREFIX) else ACTIVE


def _list(conn: Connection, statuses: dict[str, str]) -> None:
    rows = [{"product_id": p, "status": s, "revision": 0} for p, s in statuses.items()]
    conn.execute(upsert(conn, products).on_conflict_do_nothing(index_elements=["product_id"]), rows)


def seed(conn: Connection) -> None:
    _list(conn, PRODUCTS)


def product(conn: Connection, product_id: str) -> Row[Any] | None:
    return conn.execute(select(products).where(products.c.product_id == product_id)).first()


def apply(conn: Connection, data: Mapping[str, Any], now: datetime) -> Row[Any]:
    """Apply the event's price if it is newer; the product as it now stands. Discontinued if it is."""
    product_id = data["product_id"]
    _list(conn, {product_id: status_of(product_id)})
    conn.execute(update(products).where(  # conditional: an older or repeated price changes nothing
        products.c.product_id == product_id, products.c.status == ACTIVE,
        products.c.revision < data["revision"],
    ).values(price=cents(data["price"]), currency=data["currency"], revision=data["revision"],
             change_id=data["change_id"], updated_at=now))
    row = product(conn, product_id)
    assert row is not None
    if row.status == DISCONTINUED:
        raise Discontinued(f"product {product_id} is discontinued: its price cannot change")
    return row


def _updated(ctx: Context, msg: Envelope, row: Row[Any]) -> Envelope:
    return ctx.event("catalog.price_updated", {
        "change_id": msg.data["change_id"], "product_id": row.product_id,
        "price": amount(row.price), "currency": row.currency, "revision": row.revision})


def build() -> Participant:
    p = Participant(NAME, metadata=metadata, on_setup=seed)

    @p.on_event("price.published")
    def on_published(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        try:
            row = apply(ctx.conn, msg.data, ctx.now)
        except Discontinued as exc:
            data = {"change_id": msg.data["change_id"], "product_id": msg.data["product_id"],
                    "reason": str(exc)}
            return [ctx.event("catalog.price_update_failed", data)]
        return [_updated(ctx, msg, row)]

    @p.on_event("price.reverted")
    def on_reverted(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        try:
            row = apply(ctx.conn, msg.data, ctx.now)
        except Discontinued:
            return []  # it never took the change's price
        return [_updated(ctx, msg, row)]

    register_bulk(p)
    return p


def sku_change(data: Mapping[str, Any]) -> dict[str, Any]:
    """A `sku_price.*` event of `bulk_repricing` as the change `apply` takes."""
    return {"product_id": data["sku"], "change_id": data["repricing_id"], "price": data["price"],
            "currency": data["currency"], "revision": data["revision"]}


def register_bulk(p: Participant) -> None:
    """`bulk_repricing`'s per-SKU events, partitioned by SKU: a published price is applied and
    answered (`catalog.sku_price_applied`, or `catalog.sku_price_rejected` for a discontinued
    product); a reverted one is applied and not answered (no one waits for it)."""

    @p.on_event("sku_price.published")
    def on_sku_published(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        answer = {"repricing_id": msg.data["repricing_id"], "sku": msg.data["sku"]}
        try:
            row = apply(ctx.conn, sku_change(msg.data), ctx.now)
        except Discontinued as exc:
            return [ctx.event("catalog.sku_price_rejected", {**answer, "reason": str(exc)})]
        return [ctx.event("catalog.sku_price_applied", {**answer, "revision": row.revision})]

    @p.on_event("sku_price.reverted")
    def on_sku_reverted(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        with contextlib.suppress(Discontinued):  # a discontinued one never took the price
            apply(ctx.conn, sku_change(msg.data), ctx.now)
        return []
