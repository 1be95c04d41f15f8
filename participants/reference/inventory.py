"""Reference participant `inventory`: reserves stock for `order.placed`, releases it on compensation.

All of an order's items are reserved or none; stock never goes below zero, even with two consumers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
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

from contracts.envelope import Envelope
from participants.runtime.db import dict_rows, raw_rows, upsert
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


# The statements of every batch, built once (building one costs more than running it).
_LOCK = (select(stock.c.product_id, stock.c.available)
         .where(stock.c.product_id.in_(bindparam("products", expanding=True)))
         .order_by(stock.c.product_id).with_for_update())
_OF_ORDERS = (select(reservations).where(reservations.c.correlation_id.in_(bindparam("cids", expanding=True)))
              .order_by(reservations.c.created_at, reservations.c.line))
_RELEASE = (update(reservations).where(reservations.c.reservation_id == bindparam("rid"))
            .values(status=RELEASED, released_at=bindparam("at")))
_LEVEL = update(stock).where(stock.c.product_id == bindparam("product")).values(available=bindparam("level"))
# What an order asks for, and the event that answers its failure.
RESERVES = {"order.placed": "inventory.reservation_failed", "inventory.reserve": "inventory.reserve_failed"}
OrderKey = tuple[str, str]  # (correlation_id, order_id)


@dataclass
class Stock:
    """A batch's view of the stock and reservations it touches, read once under the stock rows'
    locks; the orders are reserved and released in memory, message by message, then written in
    one statement per kind of row (`write`)."""

    levels: dict[str, int]  # locked: no one else changes them before this transaction ends
    orders: dict[OrderKey, list[dict[str, Any]]]  # each order's reservation rows, by line
    new: list[dict[str, Any]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # ids of rows already stored
    changed: set[str] = field(default_factory=set)  # products whose level moved

    @classmethod
    def load(cls, conn: Connection, batch: list[Envelope]) -> Stock:
        """Lock, in product order, every stock row the batch may change, then read its orders'
        reservations: a concurrent handler of the same order took the same first lock, so what it
        committed is seen here, and nothing is reserved twice. Releases name no products: their
        reservations are read once before the locks, to know which to take."""
        cids = sorted({m.correlation_id for m in batch})
        wanted = {i["product_id"] for m in batch if m.type in RESERVES for i in m.data["items"]}
        if any(m.type not in RESERVES for m in batch):
            wanted |= {r["product_id"] for r in _orders_of(conn, cids)}
        levels: dict[str, int] = {}
        tried: set[str] = set()
        while True:  # a second round only if a reservation committed meanwhile names another product
            levels |= cls._lock(conn, sorted(wanted - tried))
            tried |= wanted
            rows = _orders_of(conn, cids)
            wanted = {r["product_id"] for r in rows} - tried
            if not wanted:
                break
        keys = {(m.correlation_id, m.data["order_id"]) for m in batch}
        orders: dict[OrderKey, list[dict[str, Any]]] = {}
        for row in rows:
            if (row["correlation_id"], row["order_id"]) in keys:
                orders.setdefault((row["correlation_id"], row["order_id"]), []).append(row)
        return cls(levels, orders)

    @staticmethod
    def _lock(conn: Connection, products: list[str]) -> dict[str, int]:
        if not products:
            return {}
        if conn.dialect.name == "postgresql":
            return dict(raw_rows(conn, _LOCK_PG, {"products": products}))
        return {r.product_id: r.available for r in conn.execute(_LOCK, {"products": products})}

    def reserve(self, msg: Envelope, now: datetime) -> list[dict[str, Any]]:
        """Reserve every item of the order or none (Shortage); a repeat answers the same reservations."""
        order_id = msg.data["order_id"]
        made = self.orders.get((msg.correlation_id, order_id)) or self._take(msg, now)
        if any(r["status"] == RELEASED for r in made):
            raise Shortage(f"order {order_id} was reserved and released; it is not reserved again")
        return [{k: r[k] for k in ("reservation_id", "product_id", "quantity")} for r in made]

    def _take(self, msg: Envelope, now: datetime) -> list[dict[str, Any]]:
        order_id, items = msg.data["order_id"], msg.data["items"]
        taken: dict[str, int] = {}
        for item in sorted(items, key=lambda i: i["product_id"]):  # the first at fault, by product id
            product, quantity = item["product_id"], item["quantity"]
            if product not in self.levels:
                raise Shortage(f"unknown product {product}")
            level = self.levels[product] - taken.get(product, 0)
            if level < quantity:
                raise Shortage(f"insufficient stock for {product}: requested {quantity}, available {level}")
            taken[product] = taken.get(product, 0) + quantity
        for product, quantity in taken.items():
            self.levels[product] -= quantity
            self.changed.add(product)
        rows = [_row(msg, order_id, line, item, now) for line, item in enumerate(items)]
        self.new += rows
        self.orders[(msg.correlation_id, order_id)] = rows
        return rows

    def release(self, msg: Envelope, now: datetime) -> list[str]:
        """Give back the stock of the order's reservations once; the ids of all of them, in order."""
        rows = self.orders.get((msg.correlation_id, msg.data["order_id"]), [])
        for row in rows:
            if row["status"] != RESERVED:
                continue
            row["status"], row["released_at"] = RELEASED, now
            if not any(row is n for n in self.new):
                self.released.append(row["reservation_id"])
            if row["product_id"] in self.levels:  # a product gone from the catalog gets nothing back
                self.levels[row["product_id"]] += row["quantity"]
                self.changed.add(row["product_id"])
        return [row["reservation_id"] for row in rows]

    def write(self, conn: Connection, now: datetime) -> None:
        if conn.dialect.name == "postgresql":
            self._write_pg(conn, now)
            return
        if self.new:
            conn.execute(insert(reservations), self.new)
        if self.released:
            conn.execute(_RELEASE, [{"rid": r, "at": now} for r in self.released])
        if self.changed:
            conn.execute(_LEVEL, [{"product": p, "level": self.levels[p]} for p in sorted(self.changed)])


    def _write_pg(self, conn: Connection, now: datetime) -> None:
        """`write` in one statement, through the driver (`raw_rows`)."""
        if not (self.new or self.released or self.changed):
            return
        columns = {c: [r[c] for r in self.new] for c in _RESERVATION_COLUMNS}
        changed = sorted(self.changed)
        raw_rows(conn, _WRITE_PG, {**columns, "released_ids": self.released, "now": now,
                                   "products": changed, "levels": [self.levels[p] for p in changed]})


_RESERVATION_COLUMNS = ("reservation_id", "correlation_id", "order_id", "line", "product_id", "quantity",
                        "status", "created_at", "released_at")
# The new reservations, the released ones and the stock levels (their rows locked by `_LOCK`) in
# one statement: the three touch different rows, a new one is inserted already released.
_WRITE_PG = (
    "WITH new AS (INSERT INTO inventory_reservations (" + ", ".join(_RESERVATION_COLUMNS) + ")"
    " SELECT * FROM unnest(%(reservation_id)b::text[], %(correlation_id)b::text[], %(order_id)b::text[],"
    " %(line)b::int[], %(product_id)b::text[], %(quantity)b::int[], %(status)b::text[],"
    " %(created_at)b::timestamptz[], %(released_at)b::timestamptz[])),"
    f" released AS (UPDATE inventory_reservations SET status = '{RELEASED}', released_at = %(now)b"
    " WHERE reservation_id = ANY(%(released_ids)b::text[])),"
    " levels AS (UPDATE inventory_stock SET available = v.level FROM unnest(%(products)b::text[],"
    " %(levels)b::int[]) AS v(product, level) WHERE inventory_stock.product_id = v.product)"
    " SELECT 1")


def _orders_of(conn: Connection, cids: list[str]) -> list[dict[str, Any]]:
    """The reservations of the workflows `cids`, oldest first, by line."""
    return dict_rows(conn, _OF_ORDERS, _OF_ORDERS_PG, {"cids": cids})


# `_LOCK` and `_OF_ORDERS` through the driver (`raw_rows`).
_LOCK_PG = ("SELECT product_id, available FROM inventory_stock WHERE product_id = ANY(%(products)b::text[])"
            " ORDER BY product_id FOR UPDATE")
_OF_ORDERS_PG = ("SELECT * FROM inventory_reservations WHERE correlation_id = ANY(%(cids)b::text[])"
                 " ORDER BY created_at, line")


def _row(msg: Envelope, order_id: str, line: int, item: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "reservation_id": f"res_{uuid.uuid4().hex}", "correlation_id": msg.correlation_id,
        "order_id": order_id, "line": line, "product_id": item["product_id"],
        "quantity": item["quantity"], "status": RESERVED, "created_at": now, "released_at": None,
    }


def handle(p: Participant, conn: Connection, batch: list[Envelope], now: datetime) -> list[list[Envelope]]:
    """The batch's orders reserved and released in memory, in order, then written at once: what
    each message emits. No savepoint: a short order takes nothing, so there is nothing to undo."""
    found = Stock.load(conn, batch)
    out = [_answer(found, Context(conn, msg, now, NAME, p.registry)) for msg in batch]
    found.write(conn, now)
    return out


def _answer(found: Stock, ctx: Context) -> list[Envelope]:
    msg = ctx.message
    order_id = msg.data["order_id"]
    if msg.type not in RESERVES:  # inventory.release
        released = found.release(msg, ctx.now)
        return [ctx.event("inventory.released", {"order_id": order_id, "released_reservations": released})]
    try:
        made = found.reserve(msg, ctx.now)
    except Shortage as exc:
        return [ctx.event(RESERVES[msg.type], {"order_id": order_id, "reason": str(exc)})]
    return [ctx.event("inventory.reserved", {"order_id": order_id, "reservations": made})]


def build() -> Participant:
    """Every message through `handle`, a batch at once; the handler tables name what it reads
    (and route one message at a time through the same code)."""
    p = Participant(NAME, metadata=metadata, on_setup=seed)
    p.batch = partial(handle, p)

    def one(msg: Envelope, ctx: Context) -> list[Envelope]:
        return handle(p, ctx.conn, [msg], ctx.now)[0]

    p.events["order.placed"] = one
    p.commands["inventory.reserve"] = one
    p.commands["inventory.release"] = one
    return p
