"""The bare choreography of `order_fulfillment`: the four participants written directly on redis-py.

No controller and no database: each participant reads its streams with its own consumer group in
batches (XREADGROUP COUNT n), applies the reference rules to state held in memory (stock, credit,
the shipping join), writes its events with XADD and acknowledges the batch, all in one pipelined
round trip. The wire format is the contract's (flat string fields, `data` as JSON), so the message
sizes and the decoding work match Baton's; what it leaves out is exactly what Baton adds: durable
state, dedupe, validation, the outbox and the tracker.

With `--commands` a participant also reads `<prefix>:command:<name>` and answers the flow's
compensation commands (`inventory.release`, `payment.refund`, `shipment.cancel`) from its memory,
so it can stand in for a reference participant beside Baton's controller (bench.throughput's
`baton-core`): the tracker then sees every event, on the contract's streams.

    python -m bench.bare inventory --redis redis://... --prefix bare1 [--commands]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis

STREAMS = {
    "inventory": ("order.placed",),
    "payment": ("order.placed",),
    "shipping": ("inventory.reserved", "payment.charged"),
    "notification": ("payment.charged",),
}
COMPENSATES = ("inventory", "payment", "shipping")  # the participants that answer a compensation command
EFFECTS = ("inventory.reserved", "payment.charged", "shipment.scheduled")  # what a compensation undoes


def envelope(type_: str, data: dict[str, Any], cause: dict[bytes, bytes], source: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "id": str(uuid.uuid4()), "kind": "event", "type": type_, "version": "1",
        "correlation_id": cause[b"correlation_id"].decode(), "causation_id": cause[b"id"].decode(),
        "occurred_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": source, "data": orjson.dumps(data).decode(),
    }


class Logic:
    """The reference rules on in-memory state: stock, credit, and shipping's join."""

    def __init__(self, name: str, remember: bool = False) -> None:
        self.name = name
        self.stock: dict[str, int] = {f"SKU-{n:03d}": 1_000_000 for n in range(1, 21)}
        self.used: dict[str, int] = {}
        self.joins: dict[str, dict[str, dict[str, Any]]] = {}
        self.remember = remember  # keep each order's effect, for its compensation command
        self.effects: dict[str, dict[str, Any]] = {}

    def command(self, type_: str, fields: dict[bytes, bytes]) -> list[tuple[str, dict[str, Any]]]:
        """Undo an order's effect once; answer again (with nothing left to undo) after."""
        order_id = orjson.loads(fields[b"data"])["order_id"]
        done = self.effects.pop(order_id, None)
        if type_ == "inventory.release":
            for r in (done or {}).get("reservations", []):
                self.stock[r["product_id"]] += int(r["quantity"])
            ids = [r["reservation_id"] for r in (done or {}).get("reservations", [])]
            return [("inventory.released", {"order_id": order_id, "released_reservations": ids})]
        if type_ == "payment.refund":
            if done is None:
                reason = "no charge for the order"
                return [("payment.refund_failed", {"order_id": order_id, "reason": reason})]
            self.used[done["customer_id"]] -= round(done["amount"] * 100)
            return [("payment.refunded", {"order_id": order_id, "payment_id": done["payment_id"],
                                          "amount": done["amount"]})]
        if type_ == "shipment.cancel":
            if done is None:
                reason = "no shipment for the order"
                return [("shipment.cancel_failed", {"order_id": order_id, "reason": reason})]
            return [("shipment.cancelled", {"order_id": order_id, "shipment_id": done["shipment_id"]})]
        return [(f"{type_}_failed", {"order_id": order_id, "reason": f"unknown command {type_}"})]

    def handle(self, type_: str, fields: dict[bytes, bytes]) -> list[tuple[str, dict[str, Any]]]:
        out = self._handle(type_, fields)
        if self.remember and out and out[0][0] in EFFECTS:
            self.effects[out[0][1]["order_id"]] = out[0][1]
        return out

    def _handle(self, type_: str, fields: dict[bytes, bytes]) -> list[tuple[str, dict[str, Any]]]:
        data = orjson.loads(fields[b"data"])
        order_id = data["order_id"]
        if self.name == "inventory":
            made = []
            for item in data["items"]:
                pid, qty = item["product_id"], int(item["quantity"])
                if self.stock.get(pid, 0) < qty:
                    reason = f"insufficient stock for {pid}"
                    return [("inventory.reservation_failed", {"order_id": order_id, "reason": reason})]
                self.stock[pid] -= qty
                made.append({"reservation_id": f"res_{uuid.uuid4().hex}", "product_id": pid, "quantity": qty})
            return [("inventory.reserved", {"order_id": order_id, "reservations": made})]
        if self.name == "payment":
            customer, cents = data["customer_id"], round(float(data["total_amount"]) * 100)
            if self.used.get(customer, 0) + cents > 1_000_000_00:
                return [("payment.charge_failed", {"order_id": order_id, "reason": "card declined"})]
            self.used[customer] = self.used.get(customer, 0) + cents
            return [("payment.charged", {"order_id": order_id, "payment_id": f"pay_{uuid.uuid4().hex}",
                                         "amount": cents / 100, "currency": data["currency"],
                                         "customer_id": customer})]
        if self.name == "notification":
            return [("notification.sent", {"order_id": order_id, "channel": "email"})]
        # shipping: the join of inventory.reserved and payment.charged, in either order
        cid = fields[b"correlation_id"].decode()
        seen = self.joins.setdefault(cid, {})
        seen[type_] = data
        if len(seen) < 2:
            return []
        del self.joins[cid]
        units = sum(int(r["quantity"]) for r in seen["inventory.reserved"]["reservations"])
        if units > 100:
            return [("shipment.scheduling_failed", {"order_id": order_id, "reason": "parcel limit"})]
        eta = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
        return [("shipment.scheduled", {"order_id": order_id, "shipment_id": f"shp_{uuid.uuid4().hex}",
                                        "estimated_delivery": eta})]


def run(name: str, url: str, prefix: str, count: int, block_ms: int, commands: bool = False) -> None:
    client = redis.Redis.from_url(url)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    streams = {f"{prefix}:event:{t}": t for t in STREAMS[name]}
    command_stream = f"{prefix}:command:{name}"
    if commands and name in COMPENSATES:
        streams[command_stream] = ""  # the command's own `type` field says which
    for stream in streams:
        try:
            client.xgroup_create(stream, name, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    logic = Logic(name, remember=commands)
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopping:
        reply: Any = client.xreadgroup(name, consumer, dict.fromkeys(streams, ">"), count=count,
                                       block=block_ms)
        if not reply:
            continue
        pipe = client.pipeline(transaction=False)
        for stream_b, entries in reply:
            stream = stream_b.decode()
            for _, fields in entries:
                if stream == command_stream:
                    answers = logic.command(fields[b"type"].decode(), fields)
                else:
                    answers = logic.handle(streams[stream], fields)
                for type_, data in answers:
                    pipe.xadd(f"{prefix}:event:{type_}", envelope(type_, data, fields, name))  # type: ignore[arg-type]
            pipe.xack(stream, name, *[eid for eid, _ in entries])
        pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(STREAMS))
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--block-ms", type=int, default=2000)
    parser.add_argument("--commands", action="store_true",
                        help="also answer the flow's compensation commands on <prefix>:command:<name>")
    args = parser.parse_args()
    run(args.name, args.redis, args.prefix, args.count, args.block_ms, args.commands)


if __name__ == "__main__":
    main()
