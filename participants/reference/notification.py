"""Reference participant `notification`: e-mails an order confirmation once the payment is charged.

One confirmation per order, however often `payment.charged` arrives; each arrival answers `notification.sent`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache, partial
from typing import Any

from sqlalchemy import Column, Connection, DateTime, MetaData, String, Table, Text, bindparam, select

from contracts.envelope import Envelope
from participants.runtime.db import raw_rows, upsert
from participants.runtime.participant import Context, Participant

# Rules: the recipient is `<customer_id>@customers.example` when `payment.charged` names the customer
# (the reference payment adds `customer_id`; a payload without it is accepted, the recipient stays
# unknown). Nothing is really sent: the e-mail is recorded in `notification_messages`.
NAME = "notification"
CHANNEL = "email"
TEMPLATE = "order_confirmation"
DOMAIN = "customers.example"

metadata = MetaData()
messages = Table(
    "notification_messages", metadata,
    Column("order_id", String(128), primary_key=True),
    Column("template", String(64), primary_key=True),
    Column("notification_id", String(64), nullable=False, unique=True),
    Column("correlation_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("recipient", String(255)),
    Column("subject", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def compose(msg: Envelope, now: datetime) -> dict[str, Any]:
    data = msg.data
    customer = data.get("customer_id")
    total = f"{float(data['amount']):.2f} {data['currency']}"
    return {
        "order_id": data["order_id"], "template": TEMPLATE,
        "notification_id": f"ntf_{uuid.uuid4().hex}", "correlation_id": msg.correlation_id,
        "channel": CHANNEL, "recipient": f"{customer}@{DOMAIN}" if customer else None,
        "subject": f"Your order {data['order_id']} is confirmed",
        "body": f"We received your payment of {total} (payment {data['payment_id']}).",
        "created_at": now,
    }


# The statements of every order, built once (building one costs more than running it).
@cache
def _insert_message(dialect: str) -> Any:
    return upsert(dialect, messages).on_conflict_do_nothing()


_RECORDED = select(messages.c.order_id, messages.c.notification_id).where(
    messages.c.order_id.in_(bindparam("orders", expanding=True)), messages.c.template == TEMPLATE)


def record(conn: Connection, batch: list[Envelope], now: datetime) -> dict[str, str]:
    """Record each order's confirmation unless there is one (the first of the batch's messages for
    an order composes it); the id of each order's one confirmation. One statement on PostgreSQL,
    two on SQLite."""
    first = {m.data["order_id"]: m for m in reversed(batch)}  # the earliest message of each order
    rows = [compose(first[order_id], now) for order_id in sorted(first)]  # one lock order
    if conn.dialect.name == "postgresql":
        found = {r[0]: r[1] for r in raw_rows(conn, _RECORD_PG, _columns(rows, now))}
        if len(found) == len(rows):
            return found
        # An order another consumer recorded while this one waited on it: committed after the
        # statement's snapshot, so seen only by a statement of its own.
    else:
        conn.execute(_insert_message(conn.dialect.name), rows)
    return {r.order_id: r.notification_id for r in conn.execute(_RECORDED, {"orders": sorted(first)})}


def _columns(rows: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    names = ("order_id", "notification_id", "correlation_id", "recipient", "subject", "body")
    return {**{n: [r[n] for r in rows] for n in names}, "template": TEMPLATE, "channel": CHANNEL, "now": now}


# PostgreSQL's insert and read in one statement, through the driver (`raw_rows`): the rows it
# inserted, and those there before (the main query's snapshot does not see what the WITH inserts).
_RECORD_PG = (
    "WITH new AS (INSERT INTO notification_messages (order_id, template, notification_id,"
    " correlation_id, channel, recipient, subject, body, created_at)"
    " SELECT o, %(template)b, n, c, %(channel)b, r, s, b, %(now)b"
    " FROM unnest(%(order_id)b::text[], %(notification_id)b::text[], %(correlation_id)b::text[],"
    " %(recipient)b::text[], %(subject)b::text[], %(body)b::text[]) WITH ORDINALITY AS t(o, n, c, r, s, b, i)"
    " ORDER BY i ON CONFLICT DO NOTHING RETURNING order_id, notification_id)"
    " SELECT order_id, notification_id FROM new UNION ALL SELECT order_id, notification_id"
    " FROM notification_messages WHERE order_id = ANY(%(order_id)b::text[]) AND template = %(template)b")


def handle(p: Participant, conn: Connection, batch: list[Envelope], now: datetime) -> list[list[Envelope]]:
    """Every `payment.charged` of the batch at once: one insert, one read; a `notification.sent` each."""
    recorded = record(conn, batch, now)
    out: list[list[Envelope]] = []
    for msg in batch:
        data = {"order_id": msg.data["order_id"], "channel": CHANNEL,
                "notification_id": recorded[msg.data["order_id"]]}
        out.append([Context(conn, msg, now, NAME, p.registry).event("notification.sent", data)])
    return out


def build() -> Participant:
    p = Participant(NAME, metadata=metadata)
    p.batch = partial(handle, p)

    @p.on_event("payment.charged")  # what it reads; the runtime calls `handle`
    def on_charged(msg: Envelope, ctx: Context) -> list[Envelope]:
        return handle(p, ctx.conn, [msg], ctx.now)[0]

    return p
