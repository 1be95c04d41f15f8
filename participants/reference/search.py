"""Reference participant `search` of `price_change`: the search index's copy of each product's price.

Choreographed: it reacts on its own to `price.published` (the step `update_search` waits for its
answer) and to `price.reverted`, re-indexing the restored price when a change is walked back. No
one tells it to: the undo is a reaction, not a command.
"""

from __future__ import annotations

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
)

from contracts.envelope import Envelope
from participants.reference.catalog import sku_change
from participants.reference.pricing import amount, cents
from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant

# Rules: every product is indexed, on first sight. A price is indexed only when its `revision` is
# newer than the indexed one, so events arriving late, twice or out of order leave the newest
# price. Each `price.published` and `price.reverted` answers `search.price_indexed` with the price
# the index now holds.
NAME = "search"

metadata = MetaData()
index = Table(
    "search_index", metadata,
    Column("product_id", String(128), primary_key=True),
    Column("price", BigInteger, nullable=False),  # cents
    Column("currency", String(3), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("change_id", String(128), nullable=False),  # the change whose event set the price
    Column("indexed_at", DateTime(timezone=True), nullable=False),
)


def indexed(conn: Connection, product_id: str) -> Row[Any] | None:
    return conn.execute(select(index).where(index.c.product_id == product_id)).first()


def reindex(conn: Connection, data: Mapping[str, Any], now: datetime) -> Row[Any]:
    """Index the event's price if it is newer than the indexed one; the entry as it now stands."""
    row = {"product_id": data["product_id"], "price": cents(data["price"]),
           "currency": data["currency"], "revision": data["revision"],
           "change_id": data["change_id"], "indexed_at": now}
    statement = upsert(conn, index).values(**row)
    conn.execute(statement.on_conflict_do_update(
        index_elements=["product_id"],
        set_={k: statement.excluded[k] for k in row if k != "product_id"},
        where=index.c.revision < statement.excluded.revision,
    ))
    found = indexed(conn, data["product_id"])
    assert found is not None
    return found


def build() -> Participant:
    p = Participant(NAME, metadata=metadata)

    def on_price(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        entry = reindex(ctx.conn, msg.data, ctx.now)
        return [ctx.event("search.price_indexed", {
            "change_id": msg.data["change_id"], "product_id": entry.product_id,
            "price": amount(entry.price), "currency": entry.currency, "revision": entry.revision})]

    p.on_event("price.published")(on_price)
    p.on_event("price.reverted")(on_price)

    def on_sku_price(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        """`bulk_repricing`'s per-SKU prices, partitioned by SKU: indexed, not answered."""
        reindex(ctx.conn, sku_change(msg.data), ctx.now)
        return []

    p.on_event("sku_price.published")(on_sku_price)
    p.on_event("sku_price.reverted")(on_sku_price)
    return p
