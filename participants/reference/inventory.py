"""Reference participant `inventory`: reserves stock for `order.placed`, releases it on compensation.

All of an order's items are reserved or none; stock never goes below zero, even with two consumers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from contracts.envelope import Envelope
from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant

# Rules: the catalog is CATALOG. An order fails as a whole (`inventory.reservation_failed`, or
# `inventory.reserve_failed` for the command) when a product is unknown ("unknown product SKU-404")
# or short of stock ("insufficient stock for SKU-RARE-2: requested 1, available 0"); the reason names
# the first such product in product-id order. A workflow's order is reserved once, ever: a repeat
# answers the same reservations, one after their release fails ("order ord-1 was reserved and
# released; it is not reserved again"). `inventory.release` gives the stock back once and always answers.
NAME = "inventory"
GENEROUS_STOCK = 1_000_000
# Seeded once: missing products are inserted, existing stock levels are never reset.
CATALOG: dict[str, int] = {
    **{f"SKU-{n:03d}": GENEROUS_STOCK for n in range(1, 21)},
    "SKU-RARE-1": 5,  # the sixth unit ordered fails
    "SKU-RARE-2": 0,  # always out of stock
}
RESERVED, RELEASED = "reserved", "released"

metadata = MetaData()
stock = Table(
    "inventory_stock", metadata,
    Column("product_id", String(128), primary_key=True),
    Column("available", Integer, nullable=False),
)
reservations = Table(
    "inventory_reservations", metadata,
    Column("reservation_id", String(64), primary_key=True),
    Column("correlation_id", String(128), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("line", Integer, nullable=False),
    Column("product_id", String(128), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
)
# The key that reserves an order once, even for two duplicates handled at the same moment. An
# index, not a constraint, so that `seed` can add it to a table created before it existed.
ONCE_PER_LINE = Index("uq_inventory_reservations_order_line", reservations.c.correlation_id,
                      reservations.c.order_id, reservations.c.line, unique=True)


class Shortage(Exception):
    """The order cannot be reserved, for the reason given as the message; nothing of it is taken."""


def seed(conn: Connection) -> None:
    """Insert the products of CATALOG that are missing; safe when several processes start at once.
    A reservations table older than its once-per-line key gets it."""
    ONCE_PER_LINE.create(conn, checkfirst=True)
    rows = [{"product_id": p, "available": q} for p, q in CATALOG.items()]
    conn.execute(upsert(conn, stock).on_conflict_do_nothing(index_elements=["product_id"]), rows)


def available(conn: Connection, product_id: str) -> int | None:
    """The stock level of a product, None if it is not in the catalog."""
    found = conn.execute(select(stock.c.available).where(stock.c.product_id == product_id))
    level: int | None = found.scalar_one_or_none()
    return level


# The statements of every order, built once (building one costs more than running it).
# Conditional decrement: two consumers at once can never take more than there is.
_TAKE = update(stock).where(
    stock.c.product_id == bindparam("product"), stock.c.available >= bindparam("quantity")
).values(available=stock.c.available - bindparam("quantity"))
_OF_ORDER = select(reservations.c.reservation_id, reservations.c.product_id, reservations.c.quantity,
                   reservations.c.status).where(
    reservations.c.correlation_id == bindparam("cid"), reservations.c.order_id == bindparam("order"),
).order_by(reservations.c.line)


def _take(conn: Connection, product_id: str, quantity: int) -> None:
    taken = conn.execute(_TAKE, {"product": product_id, "quantity": quantity})
    if taken.rowcount == 1:
        return
    level = available(conn, product_id)
    if level is None:
        raise Shortage(f"unknown product {product_id}")
    raise Shortage(f"insufficient stock for {product_id}: requested {quantity}, available {level}")


def _of_order(conn: Connection, msg: Envelope, order_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(_OF_ORDER, {"cid": msg.correlation_id, "order": order_id})
    return [dict(r._mapping) for r in rows]


def reserve(conn: Connection, msg: Envelope, now: datetime) -> list[dict[str, Any]]:
    """Reserve every item of the order or none (Shortage); a repeat answers the same reservations."""
    order_id = msg.data["order_id"]
    made = _of_order(conn, msg, order_id) or _new_reservations(conn, msg, now)
    if any(r["status"] == RELEASED for r in made):
        raise Shortage(f"order {order_id} was reserved and released; it is not reserved again")
    return [{k: r[k] for k in ("reservation_id", "product_id", "quantity")} for r in made]


def _new_reservations(conn: Connection, msg: Envelope, now: datetime) -> list[dict[str, Any]]:
    """Claim the order first, with its reservation rows: a duplicate handled at the same moment
    inserts the same (correlation_id, order_id, line), waits for this transaction, then fails on
    the unique key and answers the reservations this one made. The savepoint undoes the claim with
    the stock taken when an item is short."""
    order_id, items = msg.data["order_id"], msg.data["items"]
    rows = [_row(msg, order_id, line, item, now) for line, item in enumerate(items)]
    try:
        with conn.begin_nested():
            conn.execute(insert(reservations), rows)
            for item in sorted(items, key=lambda i: i["product_id"]):  # one lock order: no deadlock
                _take(conn, item["product_id"], item["quantity"])
    except IntegrityError:
        made = _of_order(conn, msg, order_id)  # committed by the duplicate that came first
        if not made:
            raise
        return made
    return rows


def _row(msg: Envelope, order_id: str, line: int, item: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "reservation_id": f"res_{uuid.uuid4().hex}", "correlation_id": msg.correlation_id,
        "order_id": order_id, "line": line, "product_id": item["product_id"],
        "quantity": item["quantity"], "status": RESERVED, "created_at": now,
    }


def release(conn: Connection, msg: Envelope, now: datetime) -> list[str]:
    """Give back the stock of the order's reservations once; the ids of all of them, in order."""
    rows = conn.execute(
        select(reservations).where(reservations.c.correlation_id == msg.correlation_id,
                                   reservations.c.order_id == msg.data["order_id"])
        .order_by(reservations.c.created_at, reservations.c.line)
    ).all()
    for row in rows:
        if row.status == RESERVED:
            _give_back(conn, row.reservation_id, row.product_id, row.quantity, now)
    return [row.reservation_id for row in rows]


def _give_back(conn: Connection, reservation_id: str, product_id: str, quantity: int, now: datetime) -> None:
    # Flip the status first, conditionally: a concurrent release gives the stock back only once.
    flipped = conn.execute(
        update(reservations)
        .where(reservations.c.reservation_id == reservation_id, reservations.c.status == RESERVED)
        .values(status=RELEASED, released_at=now)
    )
    if flipped.rowcount == 1:
        conn.execute(update(stock).where(stock.c.product_id == product_id)
                     .values(available=stock.c.available + quantity))


def _answer(msg: Envelope, ctx: Context, failed_type: str) -> Iterable[Envelope]:
    order_id = msg.data["order_id"]
    try:
        made = reserve(ctx.conn, msg, ctx.now)
    except Shortage as exc:
        return [ctx.event(failed_type, {"order_id": order_id, "reason": str(exc)})]
    return [ctx.event("inventory.reserved", {"order_id": order_id, "reservations": made})]


def build() -> Participant:
    p = Participant(NAME, metadata=metadata, on_setup=seed)

    @p.on_event("order.placed")
    def on_order_placed(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        return _answer(msg, ctx, "inventory.reservation_failed")

    @p.on_command("inventory.reserve")
    def on_reserve(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        return _answer(msg, ctx, "inventory.reserve_failed")

    @p.on_command("inventory.release")
    def on_release(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        released = release(ctx.conn, msg, ctx.now)
        data = {"order_id": msg.data["order_id"], "released_reservations": released}
        return [ctx.event("inventory.released", data)]

    return p


