"""Reference participant `pricing` of `price_change`: the rules engine and the price list.

Orchestrated: it only answers the controller's commands `price.evaluate`, `price.publish` and the
compensation `price.revert`. It keeps the product prices, each with a revision that grows with every
publish and every revert that restores a price, the changes it evaluated, and a history.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from contracts.envelope import Envelope
from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant

# Rules, on amounts in cents, a limit itself being allowed:
# - hard `margin_floor`: the proposed price is below unit_cost x 1.05;
# - hard `stale_price`: the price list holds the product at another price or currency than the
#   proposal's current_price (the proposal was made against a price that is no longer current);
# - soft `increase_limit`: the proposed price is more than 20 % above the current price;
# - soft `above_competitor`: a competitor_price is given and the proposed price is more than 10 %
#   above it.
# The verdict is `reject` with any hard violation, else `review` with any soft one, else `accept`.
# A workflow's change is evaluated once: a repeat answers the same verdict. `price.publish` sets the
# price the rules evaluated (a product not in the price list enters it at the proposal's
# current_price), once; it refuses a change that was never evaluated or was rejected
# (`price.publish_failed`). `price.revert` restores the previous price once, only if the product's
# price is still the one the change published (otherwise a later change replaced it, and the price
# stays: `restored` false); with nothing published for the change it answers `price.revert_failed`.
NAME = "pricing"
MARGIN_FLOOR_PERCENT = 105
INCREASE_LIMIT_PERCENT = 120
COMPETITOR_LIMIT_PERCENT = 110
ACCEPT, REVIEW, REJECT = "accept", "review", "reject"
HARD, SOFT = "hard", "soft"
EVALUATED, PUBLISHED, REVERTED = "evaluated", "published", "reverted"
# The price list, seeded once: missing products are inserted, existing prices are never reset.
PRICE_LIST: dict[str, tuple[int, str]] = {
    **{f"SKU-{n:03d}": (1000 + 150 * n, "EUR") for n in range(1, 21)},  # SKU-001 at 11.50 EUR
}

metadata = MetaData()
prices = Table(
    "pricing_prices", metadata,
    Column("product_id", String(128), primary_key=True),
    Column("price", BigInteger, nullable=False),  # cents
    Column("currency", String(3), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("change_id", String(128)),  # the change that set this price; NULL: seeded or restored
    Column("updated_at", DateTime(timezone=True)),
)
changes = Table(
    "pricing_changes", metadata,
    Column("correlation_id", String(128), nullable=False),
    Column("change_id", String(128), nullable=False),
    Column("product_id", String(128), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("current_price", BigInteger, nullable=False),
    Column("proposed_price", BigInteger, nullable=False),
    Column("unit_cost", BigInteger, nullable=False),
    Column("competitor_price", BigInteger),
    Column("verdict", String(16), nullable=False),
    Column("violations", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("previous_price", BigInteger),
    Column("published_revision", Integer),
    Column("reverted_price", BigInteger),
    Column("reverted_revision", Integer),
    Column("restored", Boolean),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True)),
    Column("reverted_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("correlation_id", "change_id"),
)
# Append-only: every price the list took, and why.
history = Table(
    "pricing_history", metadata,
    Column("entry_id", String(64), primary_key=True),
    Column("product_id", String(128), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("change_id", String(128), nullable=False),
    Column("kind", String(16), nullable=False),  # publish or revert
    Column("old_price", BigInteger, nullable=False),
    Column("new_price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("note", Text),
    Column("at", DateTime(timezone=True), nullable=False),
)
Index("ix_pricing_history_product", history.c.product_id, history.c.revision)


def cents(amount: float) -> int:
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def amount(amount_cents: int) -> float:
    return float(Decimal(amount_cents) / 100)


def money(amount_cents: int, currency: str) -> str:
    return f"{Decimal(amount_cents) / 100:.2f} {currency}"


class Refused(Exception):
    """The command cannot be carried out; the message is the `_failed` answer's reason."""


# -- the rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    current: int
    proposed: int
    unit_cost: int
    currency: str
    competitor: int | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Proposal:
        competitor = data.get("competitor_price")
        return cls(cents(data["current_price"]), cents(data["proposed_price"]),
                   cents(data["unit_cost"]), data["currency"],
                   cents(competitor) if competitor is not None else None)


def evaluate(p: Proposal, listed: tuple[int, str] | None = None) -> tuple[str, list[dict[str, str]]]:
    """The verdict and the violations of a proposal; `listed` is the price list's (price, currency)."""
    found: list[dict[str, str]] = []

    def violated(rule: str, severity: str, detail: str) -> None:
        found.append({"rule": rule, "severity": severity, "detail": detail})

    c = p.currency
    if p.proposed * 100 < p.unit_cost * MARGIN_FLOOR_PERCENT:
        floor = Decimal(p.unit_cost * MARGIN_FLOOR_PERCENT) / 10000
        violated("margin_floor", HARD, f"{money(p.proposed, c)} is below the margin floor "
                 f"{floor:.2f} {c} (unit cost {money(p.unit_cost, c)} + "
                 f"{MARGIN_FLOOR_PERCENT - 100} %)")
    if listed is not None and listed != (p.current, c):
        violated("stale_price", HARD, f"the current price is {money(*listed)}, "
                 f"not {money(p.current, c)}")
    if p.proposed * 100 > p.current * INCREASE_LIMIT_PERCENT:
        rise = Decimal((p.proposed - p.current) * 100) / p.current
        violated("increase_limit", SOFT, f"an increase of {rise:.1f} % over {money(p.current, c)}"
                 f" is above {INCREASE_LIMIT_PERCENT - 100} %")
    if p.competitor is not None and p.proposed * 100 > p.competitor * COMPETITOR_LIMIT_PERCENT:
        violated("above_competitor", SOFT, f"{money(p.proposed, c)} is more than "
                 f"{COMPETITOR_LIMIT_PERCENT - 100} % above the competitor's {money(p.competitor, c)}")
    if any(v["severity"] == HARD for v in found):
        return REJECT, found
    return (REVIEW if found else ACCEPT), found


# -- state -----------------------------------------------------------------------------------------


def seed(conn: Connection) -> None:
    """Insert the products of PRICE_LIST that are missing; safe when several processes start at once."""
    rows = [{"product_id": p, "price": price, "currency": cur, "revision": 1}
            for p, (price, cur) in PRICE_LIST.items()]
    conn.execute(upsert(conn, prices).on_conflict_do_nothing(index_elements=["product_id"]), rows)


def listed_price(conn: Connection, product_id: str) -> tuple[int, str] | None:
    row = conn.execute(select(prices.c.price, prices.c.currency)
                       .where(prices.c.product_id == product_id)).first()
    return (row.price, row.currency) if row else None


def _change(conn: Connection, correlation_id: str, change_id: str) -> Row[Any] | None:
    return conn.execute(select(changes).where(changes.c.correlation_id == correlation_id,
                                              changes.c.change_id == change_id)).first()


def evaluate_change(conn: Connection, msg: Envelope, now: datetime) -> dict[str, Any]:
    """The `price.evaluated` payload; the change is evaluated once, a repeat answers the same."""
    data = msg.data
    row = _change(conn, msg.correlation_id, data["change_id"])
    if row is None:
        proposal = Proposal.of(data)
        verdict, violations = evaluate(proposal, listed_price(conn, data["product_id"]))
        conn.execute(upsert(conn, changes).values(
            correlation_id=msg.correlation_id, change_id=data["change_id"],
            product_id=data["product_id"], currency=proposal.currency,
            current_price=proposal.current, proposed_price=proposal.proposed,
            unit_cost=proposal.unit_cost, competitor_price=proposal.competitor, verdict=verdict,
            violations=violations, status=EVALUATED, evaluated_at=now,
        ).on_conflict_do_nothing())  # a concurrent evaluation of the same change: the first stands
        row = _change(conn, msg.correlation_id, data["change_id"])
        assert row is not None
    return {"change_id": row.change_id, "product_id": row.product_id, "verdict": row.verdict,
            "violations": row.violations, "proposed_price": amount(row.proposed_price),
            "currency": row.currency}


def _locked_price(conn: Connection, change: Row[Any]) -> Row[Any]:
    """The product's price row, locked; a product new to the list enters it at current_price."""
    conn.execute(upsert(conn, prices).values(
        product_id=change.product_id, price=change.current_price, currency=change.currency,
        revision=0,
    ).on_conflict_do_nothing(index_elements=["product_id"]))
    query = select(prices).where(prices.c.product_id == change.product_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one()


def _record(conn: Connection, change: Row[Any], kind: str, old: int, new: int, revision: int,
            note: str | None, now: datetime) -> None:
    conn.execute(insert(history).values(
        entry_id=f"hst_{uuid.uuid4().hex}", product_id=change.product_id,
        correlation_id=change.correlation_id, change_id=change.change_id, kind=kind, old_price=old,
        new_price=new, currency=change.currency, revision=revision, note=note, at=now,
    ))


def _under_lock(conn: Connection, change: Row[Any]) -> Row[Any]:
    again = _change(conn, change.correlation_id, change.change_id)
    assert again is not None
    return again


def publish(conn: Connection, msg: Envelope, now: datetime) -> dict[str, Any]:
    """The `price.published` payload, publishing the evaluated price once; Refused if it may not."""
    change_id = msg.data["change_id"]
    change = _change(conn, msg.correlation_id, change_id)
    if change is None:
        raise Refused(f"change {change_id} was never evaluated")
    if change.verdict == REJECT:
        raise Refused(f"change {change_id} was rejected by the rules")
    if change.status == EVALUATED:
        current = _locked_price(conn, change)
        change = _under_lock(conn, change)  # a concurrent publish of it may have won the lock
        if change.status == EVALUATED:
            change = _publish(conn, change, current, now)
    return {"change_id": change_id, "product_id": change.product_id,
            "price": amount(change.proposed_price), "previous_price": amount(change.previous_price),
            "currency": change.currency, "revision": change.published_revision}


def _publish(conn: Connection, change: Row[Any], current: Row[Any], now: datetime) -> Row[Any]:
    revision = current.revision + 1
    conn.execute(update(prices).where(prices.c.product_id == change.product_id).values(
        price=change.proposed_price, currency=change.currency, revision=revision,
        change_id=change.change_id, updated_at=now))
    conn.execute(update(changes).where(
        changes.c.correlation_id == change.correlation_id, changes.c.change_id == change.change_id,
    ).values(status=PUBLISHED, previous_price=current.price, published_revision=revision,
             published_at=now))
    _record(conn, change, "publish", current.price, change.proposed_price, revision, None, now)
    return _under_lock(conn, change)


def revert(conn: Connection, msg: Envelope, now: datetime) -> dict[str, Any]:
    """The `price.reverted` payload, walking the change back once; Refused if nothing was published."""
    change_id = msg.data["change_id"]
    change = _change(conn, msg.correlation_id, change_id)
    if change is None or change.status == EVALUATED:
        raise Refused(f"nothing was published for change {change_id}")
    if change.status == PUBLISHED:
        current = _locked_price(conn, change)
        change = _under_lock(conn, change)  # a concurrent revert of it may have won the lock
        if change.status == PUBLISHED:
            change = _revert(conn, change, current, msg.data.get("reason") or None, now)
    return {"change_id": change_id, "product_id": change.product_id,
            "price": amount(change.reverted_price), "currency": change.currency,
            "revision": change.reverted_revision, "restored": bool(change.restored)}


def _revert(conn: Connection, change: Row[Any], current: Row[Any], reason: str | None,
            now: datetime) -> Row[Any]:
    # Restore only the price this change set: a later change that replaced it is not undone.
    restored = (current.change_id == change.change_id
                and current.revision == change.published_revision)
    price, revision, note = current.price, current.revision, reason
    if restored:
        price, revision = change.previous_price, current.revision + 1
        conn.execute(update(prices).where(prices.c.product_id == change.product_id).values(
            price=price, revision=revision, change_id=None, updated_at=now))
    else:
        note = (f"the price changed since revision {change.published_revision} "
                f"(now {current.revision}): it stays")
    conn.execute(update(changes).where(
        changes.c.correlation_id == change.correlation_id, changes.c.change_id == change.change_id,
    ).values(status=REVERTED, reverted_price=price, reverted_revision=revision, restored=restored,
             reverted_at=now))
    _record(conn, change, "revert", current.price, price, revision, note, now)
    return _under_lock(conn, change)


def _failed(ctx: Context, msg: Envelope, failed_type: str, reason: str) -> list[Envelope]:
    data = {"change_id": msg.data["change_id"], "product_id": msg.data["product_id"], "reason": reason}
    return [ctx.event(failed_type, data)]


def build() -> Participant:
    p = Participant(NAME, metadata=metadata, on_setup=seed)

    @p.on_command("price.evaluate")
    def on_evaluate(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        return [ctx.event("price.evaluated", evaluate_change(ctx.conn, msg, ctx.now))]

    @p.on_command("price.publish")
    def on_publish(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        try:
            return [ctx.event("price.published", publish(ctx.conn, msg, ctx.now))]
        except Refused as exc:
            return _failed(ctx, msg, "price.publish_failed", str(exc))

    @p.on_command("price.revert")
    def on_revert(msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        try:
            return [ctx.event("price.reverted", revert(ctx.conn, msg, ctx.now))]
        except Refused as exc:
            return _failed(ctx, msg, "price.revert_failed", str(exc))

    return p
