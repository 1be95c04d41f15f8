"""Reference participant `payment`: charges an order against the customer's credit, refunds on compensation.

Amounts are kept in cents; a customer's used credit never exceeds its limit, even with two consumers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from contracts.envelope import Envelope
from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant

# Rules: a charge succeeds when used credit + the order's total_amount stays within the customer's
# credit limit (no currency conversion: a limit counts in the order's currency); otherwise
# `payment.charge_failed` ("card declined: credit limit 50.00 EUR exceeded by 12.00"). A customer
# not in ACCOUNTS gets DEFAULT_LIMIT on first use. A workflow's order is charged once, ever: a repeat
# answers the same charge, one after its refund is declined ("order ord-1 was charged and refunded;
# it is not charged again"). `payment.refund` refunds it once and restores the credit; with no
# charge for the order it answers `payment.refund_failed`.
NAME = "payment"
ACCOUNTS: dict[str, int] = {  # credit limits in cents
    "cust-gold": 1_000_000_00,
    "cust-silver": 5_000_00,
    "cust-small": 50_00,
    "cust-broke": 0,
}
DEFAULT_LIMIT = 10_000_00
CHARGE, REFUND = "charge", "refund"
CHARGED, REFUNDED = "charged", "refunded"

metadata = MetaData()
accounts = Table(
    "payment_accounts", metadata,
    Column("customer_id", String(128), primary_key=True),
    Column("credit_limit", BigInteger, nullable=False),
    Column("used", BigInteger, nullable=False),
)
# Append-only but for a charge's status: one `charge` row, and at most one `refund` row, per order.
ledger = Table(
    "payment_ledger", metadata,
    Column("entry_id", String(64), primary_key=True),
    Column("payment_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("order_id", String(128), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("note", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("payment_id", "kind", name="uq_payment_ledger_payment_kind"),
)
# The key that charges an order once, even for two duplicates handled at the same moment. An
# index, not a constraint, so that `seed` can add it to a ledger created before it existed.
ONCE_PER_ORDER = Index("uq_payment_ledger_order_kind", ledger.c.correlation_id, ledger.c.order_id,
                       ledger.c.kind, unique=True)


class Declined(Exception):
    """The charge is refused for a business reason, given as the message."""


def cents(amount: float) -> int:
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money(amount_cents: int) -> str:
    return f"{Decimal(amount_cents) / 100:.2f}"


def _add_accounts(conn: Connection, limits: dict[str, int]) -> None:
    # Only missing customers are inserted: a used balance is never reset, concurrent inserts are fine.
    rows = [{"customer_id": c, "credit_limit": lim, "used": 0} for c, lim in limits.items()]
    conn.execute(_insert_accounts(conn.dialect.name), rows)


# The statements of every charge, built once (building one costs more than running it).
@cache
def _insert_accounts(dialect: str) -> Any:
    return upsert(dialect, accounts).on_conflict_do_nothing(index_elements=["customer_id"])


_CHARGE_OF = select(ledger).where(
    ledger.c.kind == CHARGE, ledger.c.correlation_id == bindparam("cid"),
    ledger.c.order_id == bindparam("order"),
)
# Conditional: two consumers at once cannot overdraw the account.
_DEBIT = update(accounts).where(
    accounts.c.customer_id == bindparam("customer"),
    accounts.c.used + bindparam("amount") <= accounts.c.credit_limit,
).values(used=accounts.c.used + bindparam("amount"))
_INSERT_LEDGER = insert(ledger)


def seed(conn: Connection) -> None:
    ONCE_PER_ORDER.create(conn, checkfirst=True)  # a ledger older than the key gets it too
    _add_accounts(conn, ACCOUNTS)


def _charge_of(conn: Connection, msg: Envelope) -> dict[str, Any] | None:
    """The order's one charge row, whatever its status."""
    row = conn.execute(_CHARGE_OF, {"cid": msg.correlation_id, "order": msg.data["order_id"]}).first()
    return dict(row._mapping) if row else None


def charge(conn: Connection, msg: Envelope, now: datetime) -> dict[str, Any]:
    """The `payment.charged` payload of the order's charge, made now if needed; Declined if refused."""
    entry = _charge_of(conn, msg) or _new_charge(conn, msg, now)
    if entry["status"] == REFUNDED:
        raise Declined(f"order {entry['order_id']} was charged and refunded; it is not charged again")
    return {"order_id": entry["order_id"], "payment_id": entry["payment_id"],
            "amount": entry["amount"] / 100, "currency": entry["currency"],
            "customer_id": entry["customer_id"]}


def _new_charge(conn: Connection, msg: Envelope, now: datetime) -> dict[str, Any]:
    """Claim the order first, with its charge row: a duplicate handled at the same moment inserts
    the same (correlation_id, order_id, kind), waits for this transaction, then fails on the
    unique key and answers the charge this one made. The savepoint undoes the claim on a decline."""
    data = msg.data
    customer, amount = data["customer_id"], cents(data["total_amount"])
    _add_accounts(conn, {customer: DEFAULT_LIMIT})
    entry = {
        "entry_id": f"led_{uuid.uuid4().hex}", "payment_id": f"pay_{uuid.uuid4().hex}",
        "kind": CHARGE, "status": CHARGED, "correlation_id": msg.correlation_id,
        "order_id": data["order_id"], "customer_id": customer, "amount": amount,
        "currency": data["currency"], "created_at": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(_INSERT_LEDGER, entry)
            if conn.execute(_DEBIT, {"customer": customer, "amount": amount}).rowcount != 1:
                raise Declined(_decline_reason(conn, customer, amount, data["currency"]))
    except IntegrityError:
        made = _charge_of(conn, msg)  # committed by the duplicate that came first
        if made is None:
            raise
        return made
    return entry


def _decline_reason(conn: Connection, customer: str, amount: int, currency: str) -> str:
    account = conn.execute(select(accounts).where(accounts.c.customer_id == customer)).one()
    excess = account.used + amount - account.credit_limit
    return f"card declined: credit limit {money(account.credit_limit)} {currency} exceeded by {money(excess)}"


def refund(conn: Connection, msg: Envelope, now: datetime) -> dict[str, Any] | None:
    """The `payment.refunded` payload, refunding the charge at most once; None if nothing was charged."""
    row = _charge_of(conn, msg)
    if row is None:
        return None
    if row["status"] == CHARGED:
        _refund(conn, row, msg.data.get("reason"), now)
    return {"order_id": row["order_id"], "payment_id": row["payment_id"], "amount": row["amount"] / 100}


def _refund(conn: Connection, charged: dict[str, Any], reason: str | None, now: datetime) -> None:
    flipped = conn.execute(  # conditional: a concurrent refund restores the credit only once
        update(ledger).where(ledger.c.entry_id == charged["entry_id"], ledger.c.status == CHARGED)
        .values(status=REFUNDED)
    )
    if flipped.rowcount != 1:
        return
    entry = {**charged, "entry_id": f"led_{uuid.uuid4().hex}", "kind": REFUND,
             "status": REFUNDED, "note": reason, "created_at": now}
    conn.execute(insert(ledger).values(**entry))
    conn.execute(update(accounts).where(accounts.c.customer_id == charged["customer_id"])
                 .values(used=accounts.c.used - charged["amount"]))


def _answer_charge(msg: Envelope, ctx: Context, failed_type: str) -> Iterable[Envelope]:
    try:
        charged = charge(ctx.conn, msg, ctx.now)
    except Declined as exc:
        return [ctx.event(failed_type, {"order_id": msg.data["order_id"], "reason": str(exc)})]
    return [ctx.event("payment.charged", charged)]


def build() -> Participant:
    p = Participant(NAME, metadata=metadata, on_setup=seed)

    @p.on_event("order.placed")
    def on_order_placed(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        return _answer_charge(msg, ctx, "payment.charge_failed")

    @p.on_command("payment.charge")
    def on_charge(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        return _answer_charge(msg, ctx, "payment.charge_failed")

    @p.on_command("payment.refund")
    def on_refund(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        refunded = refund(ctx.conn, msg, ctx.now)
        if refunded is None:
            reason = f"no charge to refund for order {msg.data['order_id']}"
            return [ctx.event("payment.refund_failed", {"order_id": msg.data["order_id"], "reason": reason})]
        return [ctx.event("payment.refunded", refunded)]

    return p
