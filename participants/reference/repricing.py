"""`pricing`'s part in `bulk_repricing`: a batch of SKU prices behind one approval, a canary first.

Commands from the controller: `repricing.evaluate` records the batch (one row per SKU, the first
`canary_percent` of them, at least one, marked canary) and answers `review`, or `reject` when a SKU
is listed twice or a price is in another currency than the price list's; `repricing.publish_canary`
and `repricing.publish_rest` set the price list and emit `sku_price.published` per SKU;
`repricing.revert_canary` restores the canary SKUs' previous prices (a SKU a later change
repriced keeps its price) and emits `sku_price.reverted` for each. Every command is answered the
same way when repeated. Events: the catalog's per-SKU answers, counted under the batch's row lock
(so that replicas of pricing count right), decide the canary once all of its SKUs have answered
(failed when the share rejected passes `failure_threshold_percent`), and complete the batch once
all of the rest have. With `watch_seconds`, the canary is watched that long after its last answer
before it is decided: a canary SKU reported rejected meanwhile (even after it was applied) counts
as failed. The window's end is stored in the batch row and acted on by pricing's timer (`on_tick`,
under the row's lock, SKIP LOCKED), so a restart keeps it and two replicas decide once.
In between, each tenth of the SKUs answered is reported as `repricing.progress` (the counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Integer,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    bindparam,
    inspect,
    select,
    update,
)

from contracts.envelope import Envelope, new_event
from participants.reference import pricing
from participants.reference.pricing import metadata, prices
from participants.runtime.db import upsert
from participants.runtime.participant import Context, Participant

EVALUATED, CANARY, PASSED, FAILED, REST, COMPLETED, REVERTED = (
    "evaluated", "canary", "canary_passed", "canary_failed", "rest", "completed", "reverted")
APPLIED, REJECTED = "applied", "rejected"
DEFAULT_CANARY_PERCENT, DEFAULT_THRESHOLD_PERCENT, DEFAULT_WATCH_SECONDS = 5.0, 10.0, 0.0
REPORTS = 10  # progress events over a batch's answers, at most (each tenth)


batches = Table(
    "pricing_repricings", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("repricing_id", String(128), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("threshold_percent", Float, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("skus", Integer, nullable=False),
    Column("canary_skus", Integer, nullable=False),
    Column("published", Integer, nullable=False, default=0),
    Column("waiting", Integer, nullable=False, default=0),  # published, not yet answered
    Column("done", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("canary_failed", Integer, nullable=False, default=0),
    Column("reverted", Integer, nullable=False, default=0),
    Column("watch_seconds", Float, nullable=False, default=0.0),
    Column("watch_until", DateTime(timezone=True)),  # the canary's window ends: decided then
    Column("watch_cause", String(64)),  # the message that opened the window: the verdict's cause
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
skus = Table(
    "pricing_repricing_skus", metadata,
    Column("correlation_id", String(128), nullable=False),
    Column("sku", String(128), nullable=False),
    Column("position", Integer, nullable=False),
    Column("canary", Boolean, nullable=False),
    Column("previous_price", BigInteger, nullable=False),  # cents
    Column("price", BigInteger, nullable=False),
    Column("revision", Integer),  # the price list's, once published
    Column("outcome", String(16)),  # the catalog's answer
    Column("reverted", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("correlation_id", "sku"),
)


def build() -> Participant:
    """The reference `pricing`: `price_change`'s commands and `bulk_repricing`'s."""
    p = pricing.build()
    p.on_setup = setup
    Repricing().register(p)
    return p


# Added with the canary's watch window: a pricing database made before it gets them at setup (the
# participants' tables are created, not migrated).
_WINDOW_COLUMNS = {"watch_seconds": "FLOAT NOT NULL DEFAULT 0", "watch_until": "TIMESTAMP WITH TIME ZONE",
                   "watch_cause": "VARCHAR(64)"}


def setup(conn: Connection) -> None:
    """pricing's seed, and the window's columns added to an older `pricing_repricings`."""
    pricing.seed(conn)
    have = {c["name"] for c in inspect(conn).get_columns(batches.name)}
    exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
    for name, ddl in _WINDOW_COLUMNS.items():
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE {batches.name} ADD COLUMN{exists} {name} {ddl}")


class Repricing:
    """The handlers, over pricing's price list and the two tables above."""

    prices, batches, skus = prices, batches, skus

    def register(self, p: Participant) -> None:
        p.on_command("repricing.evaluate")(self.on_evaluate)
        p.on_command("repricing.publish_canary")(lambda m, c: self.on_publish(m, c, canary=True))
        p.on_command("repricing.publish_rest")(lambda m, c: self.on_publish(m, c, canary=False))
        p.on_command("repricing.revert_canary")(self.on_revert)
        # The steps watch_canary and confirm_rollout react to these: pricing reads them (its group
        # on their streams is what the trimming and the diagnosis expect), and has nothing to do
        # then, the catalog's answers being counted as they come.
        p.on_event("repricing.canary_published")(lambda m, c: [])
        p.on_event("repricing.rest_published")(lambda m, c: [])
        p.on_event("catalog.sku_price_applied")(lambda m, c: self.on_answer(m, c, APPLIED))
        p.on_event("catalog.sku_price_rejected")(lambda m, c: self.on_answer(m, c, REJECTED))
        p.tick = self.on_tick

    # -- commands --------------------------------------------------------------------------------

    def on_evaluate(self, msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        batch = self._batch(ctx.conn, msg.correlation_id)
        if batch is None:
            violations = self._violations(ctx.conn, msg.data)
            if not violations:
                self._record(ctx.conn, msg.data, msg.correlation_id, ctx.now)
            batch = self._batch(ctx.conn, msg.correlation_id)
        else:
            violations = []
        data = msg.data
        return [ctx.event("repricing.evaluated", {
            "repricing_id": data["repricing_id"], "verdict": "reject" if violations else "review",
            "skus": batch.skus if batch else len(data.get("changes", [])),
            "canary_skus": batch.canary_skus if batch else 0, "violations": violations})]

    def _violations(self, conn: Connection, data: Mapping[str, Any]) -> list[str]:
        changes = data.get("changes", [])
        seen: set[str] = set()
        found = [f"{c['sku']} is listed twice" for c in changes
                 if c["sku"] in seen or seen.add(c["sku"])]  # type: ignore[func-returns-value]
        for chunk in _chunks([c["sku"] for c in changes], 500):
            found += [f"{r.product_id} is priced in {r.currency}, not {data['currency']}"
                      for r in conn.execute(select(self.prices.c.product_id, self.prices.c.currency)
                                            .where(self.prices.c.product_id.in_(chunk),
                                                   self.prices.c.currency != data["currency"]))]
        return found[:20]

    def _record(self, conn: Connection, data: Mapping[str, Any], cid: str, now: datetime) -> None:
        changes = data["changes"]
        canary = max(1, math.ceil(len(changes) * data.get("canary_percent",
                                                          DEFAULT_CANARY_PERCENT) / 100))
        conn.execute(self.batches.insert().values(
            correlation_id=cid, repricing_id=data["repricing_id"], currency=data["currency"],
            threshold_percent=data.get("failure_threshold_percent", DEFAULT_THRESHOLD_PERCENT),
            watch_seconds=data.get("watch_seconds", DEFAULT_WATCH_SECONDS),
            phase=EVALUATED, skus=len(changes), canary_skus=canary, updated_at=now))
        conn.execute(self.skus.insert(), [
            {"correlation_id": cid, "sku": c["sku"], "position": i, "canary": i < canary,
             "previous_price": _cents(c["current_price"]), "price": _cents(c["price"]),
             "reverted": False}
            for i, c in enumerate(changes)])

    def on_publish(self, msg: Envelope, ctx: Context, *, canary: bool) -> Iterable[Envelope]:
        batch = self._locked(ctx.conn, msg.correlation_id)
        answer = "repricing.canary_published" if canary else "repricing.rest_published"
        if batch is None or batch.phase not in ((EVALUATED, CANARY) if canary else (PASSED, REST, COMPLETED)):
            kind = "publish_canary" if canary else "publish_rest"
            why = f"batch {msg.data['repricing_id']} is {batch.phase if batch else 'not evaluated'}"
            return [ctx.event(f"repricing.{kind}_failed", {**_id(msg), "reason": why})]
        emitted: list[Envelope] = []
        nothing_left = False
        if batch.phase in (EVALUATED, PASSED):
            rows = self._unpublished(ctx.conn, msg.correlation_id, canary)
            emitted = self._publish(ctx, batch, rows)
            nothing_left = not canary and not rows  # every SKU was in the canary
            self._set(ctx.conn, msg.correlation_id, ctx.now,
                      phase=CANARY if canary else (COMPLETED if nothing_left else REST),
                      published=batch.published + len(rows), waiting=batch.waiting + len(rows))
        batch = self._batch(ctx.conn, msg.correlation_id)
        assert batch is not None
        emitted.append(ctx.event(answer, self._progress(batch)))
        if nothing_left:
            emitted.append(ctx.event("repricing.completed", self._progress(batch)))
        return emitted

    def _unpublished(self, conn: Connection, cid: str, canary: bool) -> list[Row[Any]]:
        return list(conn.execute(select(self.skus).where(
            self.skus.c.correlation_id == cid, self.skus.c.canary == canary,
            self.skus.c.revision.is_(None)).order_by(self.skus.c.position)))

    def _publish(self, ctx: Context, batch: Row[Any], rows: list[Row[Any]]) -> list[Envelope]:
        """Set each SKU's price in the price list, a revision up, and announce it."""
        revisions = self._set_prices(ctx.conn, batch, [(r.sku, r.price) for r in rows], ctx.now)
        if rows:  # one executemany, not a round trip per SKU
            ctx.conn.execute(_SET_REVISION, [
                {"cid": batch.correlation_id, "the_sku": r.sku, "rev": revisions[r.sku]} for r in rows])
        return [ctx.event("sku_price.published", {
            "repricing_id": batch.repricing_id, "sku": r.sku, "price": _amount(r.price),
            "previous_price": _amount(r.previous_price), "currency": batch.currency,
            "revision": revisions[r.sku]}) for r in rows]

    def _set_prices(self, conn: Connection, batch: Row[Any], changes: list[tuple[str, int]],
                    now: datetime) -> dict[str, int]:
        """(sku, new price) each, set in the price list: the new revision of each."""
        current: dict[str, int] = {}
        for chunk in _chunks([sku for sku, _ in changes], 500):
            current.update({r.product_id: r.revision for r in conn.execute(
                select(self.prices.c.product_id, self.prices.c.revision)
                .where(self.prices.c.product_id.in_(chunk)))})
        rows = [{"product_id": sku, "price": price, "currency": batch.currency,
                 "revision": current.get(sku, 1) + 1, "change_id": batch.repricing_id,
                 "updated_at": now} for sku, price in changes]
        if rows:
            statement = upsert(conn, self.prices)
            conn.execute(statement.on_conflict_do_update(
                index_elements=["product_id"],
                set_={k: statement.excluded[k] for k in rows[0] if k != "product_id"}), rows)
        return {r["product_id"]: r["revision"] for r in rows}

    def on_revert(self, msg: Envelope, ctx: Context) -> Iterable[Envelope]:
        batch = self._locked(ctx.conn, msg.correlation_id)
        if batch is None:
            return [ctx.event("repricing.revert_canary_failed",
                              {**_id(msg), "reason": f"batch {msg.data['repricing_id']} is unknown"})]
        emitted: list[Envelope] = []
        if batch.phase != REVERTED:
            emitted = self._revert(ctx, batch)
            self._set(ctx.conn, msg.correlation_id, ctx.now, phase=REVERTED, reverted=len(emitted))
        batch = self._batch(ctx.conn, msg.correlation_id)
        assert batch is not None
        return [*emitted, ctx.event("repricing.canary_reverted", self._progress(batch))]

    def _revert(self, ctx: Context, batch: Row[Any]) -> list[Envelope]:
        rows = list(ctx.conn.execute(select(self.skus).where(
            self.skus.c.correlation_id == batch.correlation_id, self.skus.c.canary.is_(True),
            self.skus.c.revision.is_not(None)).order_by(self.skus.c.position)))
        listed = {r.product_id: r for chunk in _chunks([r.sku for r in rows], 500)
                  for r in ctx.conn.execute(select(self.prices).where(self.prices.c.product_id.in_(chunk)))}
        still = [r for r in rows if listed[r.sku].revision == r.revision]  # not repriced since
        revisions = self._set_prices(ctx.conn, batch, [(r.sku, r.previous_price) for r in still],
                                     ctx.now)
        ctx.conn.execute(update(self.skus).where(
            self.skus.c.correlation_id == batch.correlation_id, self.skus.c.canary.is_(True),
            self.skus.c.revision.is_not(None)).values(reverted=True))
        return [ctx.event("sku_price.reverted", {
            "repricing_id": batch.repricing_id, "sku": r.sku, "price": _amount(r.previous_price),
            "previous_price": _amount(r.price), "currency": batch.currency,
            "revision": revisions[r.sku]}) for r in still]

    # -- the catalog's answers -------------------------------------------------------------------

    def on_answer(self, msg: Envelope, ctx: Context, outcome: str) -> Iterable[Envelope]:
        batch = self._locked(ctx.conn, msg.correlation_id)
        if batch is None:
            return []
        counts = self._count(ctx.conn, msg, outcome, batch)
        if counts is None:
            return []  # a repeat, the answer to a revert, or one too late to count
        self._set(ctx.conn, msg.correlation_id, ctx.now, **counts)
        if counts["waiting"] and batch.phase in (CANARY, REST):
            return self._report(ctx, batch, counts)
        if batch.phase not in (CANARY, REST):
            return []
        if batch.phase == CANARY and batch.watch_seconds > 0:
            if batch.watch_until is None:  # the last answer: the window opens (on_tick ends it)
                self._set(ctx.conn, msg.correlation_id, ctx.now, watch_cause=msg.id,
                          watch_until=ctx.now + timedelta(seconds=batch.watch_seconds))
            return []
        fresh = self._batch(ctx.conn, msg.correlation_id)
        assert fresh is not None
        message_type, data = self._verdict(ctx.conn, fresh, ctx.now)
        return [ctx.event(message_type, data)]

    def _report(self, ctx: Context, batch: Row[Any], counts: dict[str, int]) -> list[Envelope]:
        """`repricing.progress` as each tenth of the batch's SKUs has answered (while others are
        still awaited: the milestones report the rest), so that the API and the report follow a
        long rollout. Counted answers only: a repeat or a later rejection reports nothing."""
        answered = counts["done"] + counts["failed"]
        tenth = max(1, math.ceil(batch.skus / REPORTS))
        if counts["waiting"] == batch.waiting or answered % tenth:
            return []
        fresh = self._batch(ctx.conn, batch.correlation_id)
        assert fresh is not None
        return [ctx.event("repricing.progress", self._progress(fresh))]

    def _count(self, conn: Connection, msg: Envelope, outcome: str,
               batch: Row[Any]) -> dict[str, int] | None:
        """The batch's counts with this answer, or None when it changes none. The first answer of
        a published SKU counts; while the canary is watched, a canary SKU applied and then
        reported rejected counts as failed (a catalog that saw a problem after the fact)."""
        where = (self.skus.c.correlation_id == msg.correlation_id,
                 self.skus.c.sku == msg.data["sku"], self.skus.c.revision.is_not(None))
        first = conn.execute(update(self.skus).where(*where, self.skus.c.outcome.is_(None))
                             .values(outcome=outcome).returning(self.skus.c.canary)).first()
        if first is not None:
            failed = int(outcome == REJECTED)
            return {"waiting": batch.waiting - 1, "done": batch.done + 1 - failed,
                    "failed": batch.failed + failed,
                    "canary_failed": batch.canary_failed + (failed if first.canary else 0)}
        if outcome != REJECTED or batch.phase != CANARY:
            return None
        later = conn.execute(update(self.skus).where(
            *where, self.skus.c.canary.is_(True), self.skus.c.outcome == APPLIED,
        ).values(outcome=REJECTED).returning(self.skus.c.sku)).first()
        if later is None:
            return None
        return {"waiting": batch.waiting, "done": batch.done - 1, "failed": batch.failed + 1,
                "canary_failed": batch.canary_failed + 1}

    def on_tick(self, conn: Connection, now: datetime) -> list[Envelope]:
        """Decide each canary whose watch window has ended. The rows are locked, those another
        replica holds skipped (it is deciding them), and a decided batch leaves the canary phase
        in the same transaction: each canary is decided once, whoever ticks."""
        query = select(self.batches).where(self.batches.c.phase == CANARY,
                                           self.batches.c.watch_until <= now).limit(100)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        out: list[Envelope] = []
        for batch in conn.execute(query).all():
            message_type, data = self._verdict(conn, batch, now)
            out.append(new_event(message_type, data, correlation_id=batch.correlation_id,
                                 causation_id=batch.watch_cause, source=pricing.NAME))
        return out

    def _verdict(self, conn: Connection, batch: Row[Any], now: datetime) -> tuple[str, dict[str, Any]]:
        """Complete the rest, or pass or fail the canary on its failure rate: the event to emit."""
        if batch.phase == REST:
            self._set(conn, batch.correlation_id, now, phase=COMPLETED)
            return "repricing.completed", self._progress(batch)
        rate = 100.0 * batch.canary_failed / max(batch.canary_skus, 1)
        verdict = FAILED if rate > batch.threshold_percent else PASSED
        self._set(conn, batch.correlation_id, now, phase=verdict)
        return f"repricing.{verdict}", {**self._progress(batch), "failure_rate_percent": round(rate, 2)}

    # -- the batch row ---------------------------------------------------------------------------

    def _batch(self, conn: Connection, cid: str) -> Row[Any] | None:
        return conn.execute(select(self.batches).where(self.batches.c.correlation_id == cid)).first()

    def _locked(self, conn: Connection, cid: str) -> Row[Any] | None:
        """The batch row, locked until the commit: its counts are read and written by one
        transaction at a time, however many replicas of pricing run."""
        query = select(self.batches).where(self.batches.c.correlation_id == cid)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).first()

    def _set(self, conn: Connection, cid: str, now: datetime, **values: Any) -> None:
        conn.execute(update(self.batches).where(self.batches.c.correlation_id == cid)
                     .values(updated_at=now, **values))

    @staticmethod
    def _progress(batch: Row[Any]) -> dict[str, Any]:
        return {"repricing_id": batch.repricing_id, "progress": {
            "skus": batch.skus, "published": batch.published, "done": batch.done,
            "failed": batch.failed, "reverted": batch.reverted}}


_SET_REVISION = update(skus).where(
    skus.c.correlation_id == bindparam("cid"), skus.c.sku == bindparam("the_sku"),
).values(revision=bindparam("rev"))


def _id(msg: Envelope) -> dict[str, Any]:
    return {"repricing_id": msg.data["repricing_id"]}


def _cents(value: float) -> int:
    return round(value * 100)


def _amount(value: int) -> float:
    return value / 100


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
