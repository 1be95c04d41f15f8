"""Reference participant `shipping`: schedules a shipment once stock is reserved and payment charged.

Joins `inventory.reserved` and `payment.charged` of one workflow, in either order, and acts once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from functools import cache, partial
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)

from contracts.envelope import COMMAND, Envelope
from participants.runtime import joins
from participants.runtime.db import dict_rows, raw_rows, upsert
from participants.runtime.participant import Context, Participant

# Rules: one parcel carries at most PARCEL_LIMIT units in total across the order's reservations;
# more fails with `shipment.scheduling_failed` ("parcel limit exceeded: 101 units, at most 100").
# Delivery is estimated DELIVERY_BUSINESS_DAYS business days (Mon-Fri) after the later occurred_at
# of the two joined events (of the command, for `shipment.schedule`). A workflow's order is shipped
# once: a repeat answers the same shipment. `shipment.cancel` cancels it once and answers again
# after; with no shipment for the order it answers `shipment.cancel_failed`.
NAME = "shipping"
PARCEL_LIMIT = 100
DELIVERY_BUSINESS_DAYS = 3
SCHEDULED, CANCELLED = "scheduled", "cancelled"

metadata = MetaData()
# What shipping learnt from `inventory.reserved`: the units to ship, for the orchestrated variant.
orders = Table(
    "shipping_orders", metadata,
    Column("correlation_id", String(128), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("units", Integer, nullable=False),
    PrimaryKeyConstraint("correlation_id", "order_id"),
)
shipments = Table(
    "shipping_shipments", metadata,
    Column("shipment_id", String(64), primary_key=True),
    Column("correlation_id", String(128), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("units", Integer),
    Column("status", String(16), nullable=False),
    Column("estimated_delivery", Date, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cancelled_at", DateTime(timezone=True)),
)
Index("ix_shipping_shipments_order", shipments.c.correlation_id, shipments.c.order_id)


class OverParcelLimit(Exception):
    """The order does not fit in one parcel."""


def delivery_date(moment: datetime, business_days: int = DELIVERY_BUSINESS_DAYS) -> date:
    """`business_days` working days (Mon-Fri) after the UTC date of `moment`."""
    day = moment.astimezone(UTC).date()
    while business_days > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            business_days -= 1
    return day


def units_of(reserved: Envelope) -> int:
    return sum(int(r["quantity"]) for r in reserved.data["reservations"])


# The statements of every order, built once (building one costs more than running it).
@cache
def _insert_order(dialect: str) -> Any:
    return upsert(dialect, orders).on_conflict_do_nothing()


_UNITS = select(orders.c.units).where(orders.c.correlation_id == bindparam("cid"),
                                      orders.c.order_id == bindparam("order"))
_SHIPMENT_OF = select(shipments).where(
    shipments.c.correlation_id == bindparam("cid"), shipments.c.order_id == bindparam("order"),
    shipments.c.status == bindparam("status"),
).order_by(shipments.c.created_at.desc()).limit(1)
_SCHEDULED_OF = select(shipments).where(
    shipments.c.correlation_id.in_(bindparam("cids", expanding=True)),
    shipments.c.status == bindparam("status"),
).order_by(shipments.c.created_at)
_INSERT_SHIPMENT = insert(shipments)


def remember_units(conn: Connection, reserved: Envelope) -> None:
    row = {"correlation_id": reserved.correlation_id, "order_id": reserved.data["order_id"],
           "units": units_of(reserved)}
    conn.execute(_insert_order(conn.dialect.name), row)


def known_units(conn: Connection, correlation_id: str, order_id: str) -> int | None:
    units: int | None = conn.execute(_UNITS, {"cid": correlation_id, "order": order_id}).scalar_one_or_none()
    return units


def _shipment_of(conn: Connection, correlation_id: str, order_id: str, status: str) -> Row[Any] | None:
    return conn.execute(_SHIPMENT_OF, {"cid": correlation_id, "order": order_id, "status": status}).first()


def schedule(conn: Connection, correlation_id: str, order_id: str, units: int | None,
             basis: datetime, now: datetime) -> dict[str, Any]:
    """The `shipment.scheduled` payload, scheduling now if needed; OverParcelLimit if too big."""
    row = _shipment_of(conn, correlation_id, order_id, SCHEDULED)
    if row is not None:
        return _scheduled(row.order_id, row.shipment_id, row.estimated_delivery)
    if units is not None and units > PARCEL_LIMIT:
        raise OverParcelLimit(f"parcel limit exceeded: {units} units, at most {PARCEL_LIMIT}")
    new = _shipment(correlation_id, order_id, units, basis, now)
    conn.execute(_INSERT_SHIPMENT, new)
    return _scheduled(order_id, new["shipment_id"], new["estimated_delivery"])


def _shipment(correlation_id: str, order_id: str, units: int | None, basis: datetime,
              now: datetime) -> dict[str, Any]:
    return {"shipment_id": f"shp_{uuid.uuid4().hex}", "correlation_id": correlation_id,
            "order_id": order_id, "units": units, "status": SCHEDULED,
            "estimated_delivery": delivery_date(basis), "created_at": now}


def _scheduled(order_id: str, shipment_id: str, estimated: date) -> dict[str, Any]:
    return {"order_id": order_id, "shipment_id": shipment_id, "estimated_delivery": estimated.isoformat()}


def cancel(conn: Connection, msg: Envelope, now: datetime) -> str | None:
    """Cancel the order's shipment once; its id, or None if there is no shipment to cancel."""
    cid, order_id = msg.correlation_id, msg.data["order_id"]
    row = _shipment_of(conn, cid, order_id, SCHEDULED) or _shipment_of(conn, cid, order_id, CANCELLED)
    if row is None:
        return None
    conn.execute(update(shipments)
                 .where(shipments.c.shipment_id == row.shipment_id, shipments.c.status == SCHEDULED)
                 .values(status=CANCELLED, cancelled_at=now))
    shipment_id: str = row.shipment_id
    return shipment_id


def _answer(ctx: Context, order_id: str, units: int | None, basis: datetime,
            failed_type: str) -> list[Envelope]:
    try:
        data = schedule(ctx.conn, ctx.message.correlation_id, order_id, units, basis, ctx.now)
    except OverParcelLimit as exc:
        return [ctx.event(failed_type, {"order_id": order_id, "reason": str(exc)})]
    return [ctx.event("shipment.scheduled", data)]


JOINED = ("inventory.reserved", "payment.charged")


def handle(p: Participant, conn: Connection, batch: list[Envelope], now: datetime) -> list[list[Envelope]]:
    """What each message of the batch emits. Events only (the choreography): the units of every
    `inventory.reserved` remembered in one statement, the join decided for the whole batch in a
    few (`joins.arrive_many`), then each completed order scheduled. A batch with a command (the
    orchestrated variant) is handled message by message, in order."""
    if any(m.kind == COMMAND for m in batch):
        return [_one(Context(conn, m, now, NAME, p.registry)) for m in batch]
    reserved = [{"correlation_id": m.correlation_id, "order_id": m.data["order_id"], "units": units_of(m)}
                for m in batch if m.type == "inventory.reserved"]
    if reserved:
        _remember_all(conn, sorted(reserved, key=lambda r: (r["correlation_id"], r["order_id"])))
    complete = joins.arrive_many(conn, NAME, "schedule", JOINED, batch)
    booked = _Booked.load(conn, [both for both in complete if both])
    out = [booked.answer(Context(conn, m, now, NAME, p.registry), both) if both else []
           for m, both in zip(batch, complete, strict=True)]
    booked.write(conn)
    return out


class _Booked:
    """The scheduled shipments of a batch's completed orders, read in one statement; the new ones
    scheduled in memory, in order, then inserted in one."""

    def __init__(self, scheduled: dict[tuple[str, str], Any]) -> None:
        self.scheduled = scheduled  # (correlation_id, order_id): its latest scheduled shipment
        self.new: list[dict[str, Any]] = []

    @classmethod
    def load(cls, conn: Connection, completed: list[dict[str, Envelope]]) -> _Booked:
        cids = sorted({m["inventory.reserved"].correlation_id for m in completed})
        scheduled: dict[tuple[str, str], Any] = {}
        if not cids:
            return cls(scheduled)
        params = {"cids": cids, "status": SCHEDULED}
        for row in dict_rows(conn, _SCHEDULED_OF, _SCHEDULED_OF_PG, params):  # oldest first: latest kept
            scheduled[(row["correlation_id"], row["order_id"])] = row
        return cls(scheduled)

    def answer(self, ctx: Context, msgs: dict[str, Envelope]) -> list[Envelope]:
        reserved, charged = msgs["inventory.reserved"], msgs["payment.charged"]
        cid, order_id, units = reserved.correlation_id, reserved.data["order_id"], units_of(reserved)
        row = self.scheduled.get((cid, order_id))
        if row is not None:
            data = _scheduled(order_id, row["shipment_id"], row["estimated_delivery"])
            return [ctx.event("shipment.scheduled", data)]
        if units > PARCEL_LIMIT:
            reason = f"parcel limit exceeded: {units} units, at most {PARCEL_LIMIT}"
            return [ctx.event("shipment.scheduling_failed", {"order_id": order_id, "reason": reason})]
        row = _shipment(cid, order_id, units, max(reserved.occurred_at, charged.occurred_at), ctx.now)
        self.new.append(row)
        self.scheduled[(cid, order_id)] = row
        data = _scheduled(order_id, row["shipment_id"], row["estimated_delivery"])
        return [ctx.event("shipment.scheduled", data)]

    def write(self, conn: Connection) -> None:
        if self.new and conn.dialect.name == "postgresql":
            raw_rows(conn, _INSERT_SHIPMENTS_PG, {c: [r[c] for r in self.new] for c in _SHIPMENT_COLUMNS})
        elif self.new:
            conn.execute(_INSERT_SHIPMENT, self.new)


def _remember_all(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The units of each order reserved, in the order given, unless known already."""
    if conn.dialect.name != "postgresql":
        conn.execute(_insert_order(conn.dialect.name), rows)
        return
    raw_rows(conn, _REMEMBER_PG, {c: [r[c] for r in rows] for c in ("correlation_id", "order_id", "units")})


# A batch's statements on PostgreSQL, through the driver (`raw_rows`), rows in the order given.
_REMEMBER_PG = (
    "INSERT INTO shipping_orders (correlation_id, order_id, units) SELECT c, o, u FROM"
    " unnest(%(correlation_id)b::text[], %(order_id)b::text[], %(units)b::int[]) WITH ORDINALITY"
    " AS t(c, o, u, n) ORDER BY n ON CONFLICT DO NOTHING")
_SCHEDULED_COLUMNS = ("correlation_id", "order_id", "shipment_id", "estimated_delivery")
_SCHEDULED_OF_PG = (
    "SELECT " + ", ".join(_SCHEDULED_COLUMNS) + " FROM shipping_shipments"
    " WHERE correlation_id = ANY(%(cids)b::text[]) AND status = %(status)b ORDER BY created_at")
_SHIPMENT_COLUMNS = ("shipment_id", "correlation_id", "order_id", "units", "status", "estimated_delivery",
                     "created_at")
_INSERT_SHIPMENTS_PG = (
    "INSERT INTO shipping_shipments (" + ", ".join(_SHIPMENT_COLUMNS) + ") SELECT * FROM"
    " unnest(%(shipment_id)b::text[], %(correlation_id)b::text[], %(order_id)b::text[], %(units)b::int[],"
    " %(status)b::text[], %(estimated_delivery)b::date[], %(created_at)b::timestamptz[])")


def _on_both(ctx: Context, msgs: dict[str, Envelope]) -> list[Envelope]:
    reserved, charged = msgs["inventory.reserved"], msgs["payment.charged"]
    basis = max(reserved.occurred_at, charged.occurred_at)
    order_id = reserved.data["order_id"]
    return _answer(ctx, order_id, units_of(reserved), basis, "shipment.scheduling_failed")


def _one(ctx: Context) -> list[Envelope]:
    msg, order_id = ctx.message, ctx.message.data["order_id"]
    if msg.type in JOINED:
        if msg.type == "inventory.reserved":  # before the join: remembers the units
            remember_units(ctx.conn, msg)
        both = joins.arrive(ctx.conn, NAME, "schedule", JOINED, msg)
        return _on_both(ctx, both) if both else []
    if msg.type == "shipment.schedule":
        units = known_units(ctx.conn, msg.correlation_id, order_id)  # None: not seen, not checked
        return _answer(ctx, order_id, units, msg.occurred_at, "shipment.schedule_failed")
    shipment_id = cancel(ctx.conn, msg, ctx.now)  # shipment.cancel
    if shipment_id is None:
        reason = f"no shipment to cancel for order {order_id}"
        return [ctx.event("shipment.cancel_failed", {"order_id": order_id, "reason": reason})]
    return [ctx.event("shipment.cancelled", {"order_id": order_id, "shipment_id": shipment_id})]


def build() -> Participant:
    """Every message through `handle`, a batch at once; the command table names what it answers."""
    p = Participant(NAME, metadata=metadata, batch_types=JOINED)
    p.batch = partial(handle, p)

    def one(msg: Envelope, ctx: Context) -> list[Envelope]:
        return _one(ctx)

    p.commands["shipment.schedule"] = one
    p.commands["shipment.cancel"] = one
    return p
