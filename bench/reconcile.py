"""The reconciliation after a chaos run: the controller's record against the participants' own ledgers.

One query joins every workflow with what each ledger says was done for it (the participants live in
schemas `p_<name>` of the controller's PostgreSQL database, so one query sees them all); the rules
below judge each row. Then the totals that no single workflow shows: stock and credit conserved,
no outbox row left unsent, no entry left pending in any consumer group, and no dead letter that was
not a deliberately bad message. `Reconciliation.violations` is empty when everything holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa

from contracts.streams import Keys
from participants.reference.inventory import CATALOG

PARTICIPANTS = ("inventory", "payment", "shipping", "notification")
TERMINAL = ("completed", "compensated")
IN_FLIGHT = ("running", "compensating", "paused")
GARBAGE_FIELD = "chaos_garbage"  # every deliberately bad entry carries it
# A workflow is legitimately in flight while the controller still owes it a deadline or a retry.
STUCK_AFTER = timedelta(seconds=30)

# One row per workflow: the controller's view and, beside it, each ledger's.
RECONCILE_SQL = """
WITH res AS (
    SELECT correlation_id, count(*) AS lines, count(DISTINCT line) AS distinct_lines,
           count(*) FILTER (WHERE status = 'reserved') AS held,
           count(*) FILTER (WHERE status = 'released') AS released
    FROM p_inventory.inventory_reservations GROUP BY correlation_id
), pay AS (
    SELECT correlation_id, count(*) FILTER (WHERE kind = 'charge') AS charges,
           count(*) FILTER (WHERE kind = 'charge' AND status = 'charged') AS unrefunded,
           count(*) FILTER (WHERE kind = 'refund') AS refunds
    FROM p_payment.payment_ledger GROUP BY correlation_id
), shp AS (
    SELECT correlation_id, count(*) AS shipments,
           count(*) FILTER (WHERE status = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM p_shipping.shipping_shipments GROUP BY correlation_id
), ntf AS (
    SELECT correlation_id, count(*) AS notifications
    FROM p_notification.notification_messages GROUP BY correlation_id
), comp AS (
    SELECT correlation_id, count(*) AS owed, count(*) FILTER (WHERE status = 'done') AS applied,
           string_agg(step || ':' || status, ',' ORDER BY position) AS detail
    FROM workflow_compensations GROUP BY correlation_id
)
SELECT w.correlation_id, w.status, w.reason, w.next_due_at,
       json_array_length((w.input)::json -> 'items') AS items,
       coalesce(res.lines, 0) AS lines, coalesce(res.distinct_lines, 0) AS distinct_lines,
       coalesce(res.held, 0) AS held, coalesce(res.released, 0) AS released,
       coalesce(pay.charges, 0) AS charges, coalesce(pay.unrefunded, 0) AS unrefunded,
       coalesce(pay.refunds, 0) AS refunds,
       coalesce(shp.shipments, 0) AS shipments, coalesce(shp.scheduled, 0) AS scheduled,
       coalesce(shp.cancelled, 0) AS cancelled, coalesce(ntf.notifications, 0) AS notifications,
       coalesce(comp.owed, 0) AS owed, coalesce(comp.applied, 0) AS applied, comp.detail
FROM workflows w
LEFT JOIN res USING (correlation_id) LEFT JOIN pay USING (correlation_id)
LEFT JOIN shp USING (correlation_id) LEFT JOIN ntf USING (correlation_id)
LEFT JOIN comp USING (correlation_id)
"""


@dataclass
class Reconciliation:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, status/reason)
    in_flight: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # an effect applied twice
    violations: list[str] = field(default_factory=list)  # every finding, duplicates and losses too
    dead_letters: int = 0
    pending_entries: int = 0
    unsent_outbox: int = 0

    @property
    def converged(self) -> bool:
        return not self.in_flight and not self.pending_entries and not self.unsent_outbox

    def add(self, what: str, cid: str, text: str) -> None:
        line = f"{cid}: {text}" if cid else text
        self.violations.append(line)
        if what == "lost":
            self.lost.append(line)
        elif what == "duplicated":
            self.duplicated.append(line)


def workflow_rows(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r.correlation_id: dict(r._mapping) for r in conn.execute(sa.text(RECONCILE_SQL))}


def judge(row: dict[str, Any], kind: str | None, now: datetime, out: Reconciliation) -> None:
    """The rules for one workflow: no effect twice; what its status says matches every ledger."""
    cid, status = row["correlation_id"], row["status"]
    if row["lines"] != row["distinct_lines"] or (row["lines"] and row["lines"] != row["items"]):
        out.add("duplicated", cid, f"stock reserved twice: {row['lines']} reservation lines "
                                   f"for {row['items']} items")
    if row["charges"] > 1:
        out.add("duplicated", cid, f"card charged {row['charges']} times")
    if row["refunds"] > 1:
        out.add("duplicated", cid, f"{row['refunds']} refunds")
    if row["refunds"] > row["charges"]:
        out.add("duplicated", cid, "a refund without a charge")
    if row["shipments"] > 1:
        out.add("duplicated", cid, f"{row['shipments']} shipments")
    if row["notifications"] > 1:
        out.add("duplicated", cid, f"{row['notifications']} confirmations")
    if status == "completed":
        _judge_completed(row, kind, out)
    elif status == "compensated":
        _judge_compensated(row, out)
    elif status in IN_FLIGHT:
        due = row["next_due_at"]
        if due is None or due < now - STUCK_AFTER:
            out.add("lost", cid, f"stuck {status}: nothing due (next_due_at {due}), "
                                 f"compensations {row['detail']}")
        else:
            out.in_flight.append(cid)
    else:  # needs_attention: a compensation went unanswered after its last retry
        out.add("lost", cid, f"{status} ({row['reason']}), compensations {row['detail']}")


def _judge_completed(row: dict[str, Any], kind: str | None, out: Reconciliation) -> None:
    cid = row["correlation_id"]
    if kind not in (None, "ok", "sla"):
        out.add("", cid, f"a {kind} order completed")
    if row["held"] != row["items"] or row["released"]:
        out.add("lost", cid, f"completed, but {row['held']} of {row['items']} lines held, "
                             f"{row['released']} released")
    if row["unrefunded"] != 1 or row["refunds"]:
        out.add("lost", cid, f"completed, but {row['unrefunded']} live charges, {row['refunds']} refunds")
    if row["scheduled"] != 1:
        out.add("lost", cid, f"completed, but {row['scheduled']} scheduled shipments")
    if row["owed"]:
        out.add("", cid, f"completed with compensations {row['detail']}")


def _judge_compensated(row: dict[str, Any], out: Reconciliation) -> None:
    cid = row["correlation_id"]
    if row["owed"] != row["applied"]:
        out.add("lost", cid, f"compensated, but compensations {row['detail']}")
    if row["held"]:
        out.add("lost", cid, f"compensated, but {row['held']} stock lines still reserved")
    if row["unrefunded"]:
        out.add("lost", cid, "compensated, but the card is still charged")
    if row["scheduled"]:
        out.add("lost", cid, "compensated, but a shipment is still scheduled")


def check_totals(engine: sa.Engine, out: Reconciliation) -> None:
    """Stock and credit conserved: what each ledger's rows add up to is what its balances show."""
    with engine.connect() as conn:
        stock: dict[str, int] = dict(conn.execute(sa.text(
            "SELECT s.product_id, s.available + coalesce(sum(r.quantity) FILTER "
            "(WHERE r.status = 'reserved'), 0) FROM p_inventory.inventory_stock s "
            "LEFT JOIN p_inventory.inventory_reservations r USING (product_id) GROUP BY s.product_id")
        ).all())
        credit = conn.execute(sa.text(
            "SELECT a.customer_id, a.used, coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge' "
            "AND l.status = 'charged'), 0) FROM p_payment.payment_accounts a LEFT JOIN "
            "p_payment.payment_ledger l USING (customer_id) GROUP BY a.customer_id, a.used")).all()
        for schema in ("public", *(f"p_{p}" for p in PARTICIPANTS)):
            unsent = conn.execute(sa.text(
                f"SELECT count(*) FROM {schema}.baton_outbox WHERE sent_at IS NULL")).scalar_one()
            out.unsent_outbox += unsent
            if unsent:
                out.add("lost", "", f"{unsent} outbox rows of {schema} never published")
    for product, seeded in CATALOG.items():
        if stock.get(product) != seeded:
            out.add("duplicated", "", f"stock of {product}: available + reserved = "
                                      f"{stock.get(product)}, seeded {seeded}")
    for customer, used, charged in credit:
        if used != charged:
            out.add("duplicated", "", f"credit of {customer}: used {used}, live charges add up to {charged}")


def check_streams(client: redis.Redis, keys: Keys, garbage: dict[str, str], out: Reconciliation) -> None:
    """No entry pending in any group; every dead letter is one of ours, and each of ours is one.

    `garbage` maps each deliberately bad entry's token to the stream it was added to."""
    dead_by_group: dict[str, set[str]] = {}
    for stream in client.scan_iter(match=f"{keys.prefix}:*", _type="STREAM"):
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        if name.startswith(f"{keys.prefix}:dead:"):
            group = name.rsplit(":", 1)[1]
            entries: Any = client.xrange(name)
            for entry_id, fields in entries:
                out.dead_letters += 1
                token = fields.get(GARBAGE_FIELD.encode())
                if token is None:
                    reason = fields.get(b"dead_reason", b"").decode(errors="replace")
                    out.add("lost", "", f"dead letter {entry_id!r} in {name} was a real message: {reason}")
                else:
                    dead_by_group.setdefault(group, set()).add(token.decode())
            continue
        groups: Any = client.xinfo_groups(name)
        for group in groups:
            pending = int(group["pending"])
            out.pending_entries += pending
            if pending:
                out.add("lost", "", f"{pending} entries pending in {name} for group "
                                    f"{group['name'].decode()}")
    for token, stream in garbage.items():
        readers: Any = client.xinfo_groups(stream) if client.exists(stream) else []
        for group in readers:
            if token not in dead_by_group.get(group["name"].decode(), set()):
                out.add("", "", f"bad entry {token} on {stream} was not dead-lettered by "
                                f"{group['name'].decode()}")


def reconcile(engine: sa.Engine, client: redis.Redis, keys: Keys, accepted: dict[str, str],
              garbage: dict[str, str], now: datetime) -> Reconciliation:
    """Everything above; `accepted` maps each workflow the API accepted to its kind of order."""
    out = Reconciliation(rows=workflow_rows(engine))
    for cid in accepted:
        if cid not in out.rows:
            out.add("lost", cid, "accepted (201/200) but not in the database")
    for cid, row in out.rows.items():
        kind = accepted.get(cid)
        out.statuses[row["status"]] += 1
        out.outcomes[(kind or "unknown", f"{row['status']}/{row['reason'] or '-'}")] += 1
        judge(row, kind, now, out)
    check_totals(engine, out)
    check_streams(client, keys, garbage, out)
    return out
