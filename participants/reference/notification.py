"""Reference participant `notification`: e-mails an order confirmation once the payment is charged.

One confirmation per order, however often `payment.charged` arrives; each arrival answers `notification.sent`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Column, Connection, DateTime, MetaData, String, Table, Text, bindparam, select

from contracts.envelope import Envelope
from participants.runtime.db import upsert
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


_RECORDED = select(messages.c.notification_id).where(messages.c.order_id == bindparam("order"),
                                                     messages.c.template == TEMPLATE)


def record(conn: Connection, msg: Envelope, now: datetime) -> str:
    """Record the order's confirmation unless there is one; the id of the one recorded."""
    conn.execute(_insert_message(conn.dialect.name), compose(msg, now))
    notification_id: str = conn.execute(_RECORDED, {"order": msg.data["order_id"]}).scalar_one()
    return notification_id


def build() -> Participant:
    p = Participant(NAME, metadata=metadata)

    @p.on_event("payment.charged")
    def on_charged(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        notification_id = record(ctx.conn, msg, ctx.now)
        data = {"order_id": msg.data["order_id"], "channel": CHANNEL, "notification_id": notification_id}
        return [ctx.event("notification.sent", data)]

    return p
