"""Reference participant `payment`: charges an order against the customer's credit, refunds on compensation.

Amounts are kept in cents; a customer's used credit never exceeds its limit, even with two consumers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache, partial
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

from contracts.envelope import Envelope
from participants.runtime.db import dict_rows, raw_rows, upsert
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


def seed(conn: Connection) -> None:
    ONCE_PER_ORDER.create(conn, checkfirst=True)  # a ledger older than the key gets it too
    _add_accounts(conn, ACCOUNTS)


# The statements of every batch, built once (building one costs more than running it).
_LOCK = (select(accounts).where(accounts.c.customer_id.in_(bindparam("customers", expanding=True)))
         .order_by(accounts.c.customer_id).with_for_update())
_OF_ORDERS = select(ledger).where(ledger.c.correlation_id.in_(bindparam("cids", expanding=True)))
_REFUNDED = update(ledger).where(ledger.c.entry_id == bindparam("entry")).values(status=REFUNDED)
_USED = (update(accounts).where(accounts.c.customer_id == bindparam("customer"))
         .values(used=bindparam("now_used")))
# `_LOCK` and `_OF_ORDERS` through the driver on PostgreSQL (`dict_rows`).
_LOCK_PG = ("SELECT * FROM payment_accounts WHERE customer_id = ANY(%(customers)b::text[])"
            " ORDER BY customer_id FOR UPDATE")
_OF_ORDERS_PG = "SELECT * FROM payment_ledger WHERE correlation_id = ANY(%(cids)b::text[])"
CHARGES = {"order.placed", "payment.charge"}


OrderKey = tuple[str, str]  # (correlation_id, order_id)


@dataclass
class Credit:
    """A batch's view of the accounts and charges it touches, read once under the accounts' row
    locks; orders are charged and refunded in memory, message by message, then written in one
    statement per kind of row (`write`)."""

    accounts: dict[str, dict[str, Any]]  # locked: no one else changes them before the commit
    charges: dict[OrderKey, dict[str, Any]]  # each order's one charge row
    new: list[dict[str, Any]] = field(default_factory=list)
    refunded: list[str] = field(default_factory=list)  # entry ids of charges already stored
    changed: set[str] = field(default_factory=set)  # customers whose used credit moved

    @classmethod
    def load(cls, conn: Connection, batch: list[Envelope]) -> Credit:
        """Add the customers seen for the first time, then lock, in customer order, every account
        the batch may change, then read its orders' charges: a concurrent handler of the same
        order took the same lock first, so what it committed is seen here and nothing is charged
        twice. Refunds name no customer: their charges are read once before the locks."""
        cids = sorted({m.correlation_id for m in batch})
        wanted = {m.data["customer_id"] for m in batch if m.type in CHARGES}
        if wanted:
            _add_accounts(conn, dict.fromkeys(sorted(wanted), DEFAULT_LIMIT))
        if any(m.type not in CHARGES for m in batch):
            wanted |= {r["customer_id"] for r in dict_rows(conn, _OF_ORDERS, _OF_ORDERS_PG, {"cids": cids})}
        found: dict[str, dict[str, Any]] = {}
        tried: set[str] = set()
        while True:  # a second round only if a charge committed meanwhile names another customer
            if wanted - tried:
                rows = dict_rows(conn, _LOCK, _LOCK_PG, {"customers": sorted(wanted - tried)})
                found |= {r["customer_id"]: r for r in rows}
            tried |= wanted
            entries = dict_rows(conn, _OF_ORDERS, _OF_ORDERS_PG, {"cids": cids})
            wanted = {e["customer_id"] for e in entries} - tried
            if not wanted:
                break
        keys = {(m.correlation_id, m.data["order_id"]) for m in batch}
        charges = {(e["correlation_id"], e["order_id"]): e for e in entries
                   if e["kind"] == CHARGE and (e["correlation_id"], e["order_id"]) in keys}
        return cls(found, charges)

    def charge(self, msg: Envelope, now: datetime) -> dict[str, Any]:
        """The `payment.charged` payload of the order's charge, made now if needed; Declined if refused."""
        entry = self.charges.get((msg.correlation_id, msg.data["order_id"])) or self._debit(msg, now)
        if entry["status"] == REFUNDED:
            raise Declined(f"order {entry['order_id']} was charged and refunded; it is not charged again")
        return {"order_id": entry["order_id"], "payment_id": entry["payment_id"],
                "amount": entry["amount"] / 100, "currency": entry["currency"],
                "customer_id": entry["customer_id"]}

    def _debit(self, msg: Envelope, now: datetime) -> dict[str, Any]:
        data = msg.data
        customer, amount = data["customer_id"], cents(data["total_amount"])
        account = self.accounts[customer]
        if account["used"] + amount > account["credit_limit"]:
            excess = account["used"] + amount - account["credit_limit"]
            raise Declined(f"card declined: credit limit {money(account['credit_limit'])} "
                           f"{data['currency']} exceeded by {money(excess)}")
        account["used"] += amount
        self.changed.add(customer)
        entry = {
            "entry_id": f"led_{uuid.uuid4().hex}", "payment_id": f"pay_{uuid.uuid4().hex}",
            "kind": CHARGE, "status": CHARGED, "correlation_id": msg.correlation_id,
            "order_id": data["order_id"], "customer_id": customer, "amount": amount,
            "currency": data["currency"], "note": None, "created_at": now,
        }
        self.new.append(entry)
        self.charges[(msg.correlation_id, data["order_id"])] = entry
        return entry

    def refund(self, msg: Envelope, now: datetime) -> dict[str, Any] | None:
        """The `payment.refunded` payload, refunding the charge at most once; None if nothing was charged."""
        row = self.charges.get((msg.correlation_id, msg.data["order_id"]))
        if row is None:
            return None
        if row["status"] == CHARGED:
            row["status"] = REFUNDED
            if not any(row is n for n in self.new):
                self.refunded.append(row["entry_id"])
            self.new.append({**row, "entry_id": f"led_{uuid.uuid4().hex}", "kind": REFUND,
                             "status": REFUNDED, "note": msg.data.get("reason"), "created_at": now})
            if row["customer_id"] in self.accounts:
                self.accounts[row["customer_id"]]["used"] -= row["amount"]
                self.changed.add(row["customer_id"])
        return {"order_id": row["order_id"], "payment_id": row["payment_id"], "amount": row["amount"] / 100}

    def write(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            self._write_pg(conn)
            return
        if self.new:
            conn.execute(_INSERT_LEDGER, self.new)
        if self.refunded:
            conn.execute(_REFUNDED, [{"entry": e} for e in self.refunded])
        if self.changed:
            conn.execute(_USED, [{"customer": c, "now_used": self.accounts[c]["used"]}
                                 for c in sorted(self.changed)])


    def _write_pg(self, conn: Connection) -> None:
        """`write` in one statement, through the driver (`raw_rows`)."""
        if not (self.new or self.refunded or self.changed):
            return
        columns = {c: [r[c] for r in self.new] for c in _LEDGER_COLUMNS}
        changed = sorted(self.changed)
        raw_rows(conn, _WRITE_PG, {**columns, "refunded_ids": self.refunded, "customers": changed,
                                   "used_now": [self.accounts[c]["used"] for c in changed]})


_INSERT_LEDGER = insert(ledger)
_LEDGER_COLUMNS = ("entry_id", "payment_id", "kind", "status", "correlation_id", "order_id", "customer_id",
                   "amount", "currency", "note", "created_at")
# The new ledger rows, the refunded charges and the accounts' credit used (their rows locked by
# `_LOCK`) in one statement: the three touch different rows, a new charge is inserted refunded.
_WRITE_PG = (
    "WITH new AS (INSERT INTO payment_ledger (" + ", ".join(_LEDGER_COLUMNS) + ")"
    " SELECT * FROM unnest(%(entry_id)b::text[], %(payment_id)b::text[], %(kind)b::text[],"
    " %(status)b::text[], %(correlation_id)b::text[], %(order_id)b::text[], %(customer_id)b::text[],"
    " %(amount)b::bigint[], %(currency)b::text[], %(note)b::text[], %(created_at)b::timestamptz[])),"
    f" refunded AS (UPDATE payment_ledger SET status = '{REFUNDED}'"
    " WHERE entry_id = ANY(%(refunded_ids)b::text[])),"
    " used AS (UPDATE payment_accounts SET used = v.used FROM unnest(%(customers)b::text[],"
    " %(used_now)b::bigint[]) AS v(customer, used) WHERE payment_accounts.customer_id = v.customer)"
    " SELECT 1")


def handle(p: Participant, conn: Connection, batch: list[Envelope], now: datetime) -> list[list[Envelope]]:
    """The batch's orders charged and refunded in memory, in order, then written at once: what
    each message emits. No savepoint: a declined charge writes nothing, so there is nothing to undo."""
    credit = Credit.load(conn, batch)
    out = [_answer(credit, Context(conn, msg, now, NAME, p.registry)) for msg in batch]
    credit.write(conn)
    return out


def _answer(credit: Credit, ctx: Context) -> list[Envelope]:
    msg = ctx.message
    order_id = msg.data["order_id"]
    if msg.type not in CHARGES:  # payment.refund
        refunded = credit.refund(msg, ctx.now)
        if refunded is None:
            reason = f"no charge to refund for order {order_id}"
            return [ctx.event("payment.refund_failed", {"order_id": order_id, "reason": reason})]
        return [ctx.event("payment.refunded", refunded)]
    try:
        charged = credit.charge(msg, ctx.now)
    except Declined as exc:
        return [ctx.event("payment.charge_failed", {"order_id": order_id, "reason": str(exc)})]
    return [ctx.event("payment.charged", charged)]


def build() -> Participant:
    """Every message through `handle`, a batch at once; the handler tables name what it reads
    (and route one message at a time through the same code)."""
    p = Participant(NAME, metadata=metadata, on_setup=seed)
    p.batch = partial(handle, p)

    def one(msg: Envelope, ctx: Context) -> list[Envelope]:
        return handle(p, ctx.conn, [msg], ctx.now)[0]

    p.events["order.placed"] = one
    p.commands["payment.charge"] = one
    p.commands["payment.refund"] = one
    return p
