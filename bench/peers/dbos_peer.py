"""`order_fulfillment` as a DBOS durable workflow on the benchmark's PostgreSQL.

Each of the four participants' rules is a `@DBOS.step` (its result checkpointed in DBOS's system
database), the workflow runs them with the join (reserve and charge, then ship, then notify), and a
last step announces completion on the Redis stream `<prefix>:done`, which the harness reads. Kickoffs
arrive on `<prefix>:kick` and are started in-process with `DBOS.start_workflow` under the workflow
ID the harness chose: DBOS at its best, with no queue polling between the client and the workflow.

    BENCH_REDIS_URL=redis://... BENCH_PREFIX=d1 BENCH_DBOS_URL=postgresql://... \
        python -m bench.peers.dbos_peer
"""

from __future__ import annotations

import os
import signal
from typing import Any

import orjson
import redis
from dbos import DBOS, SetWorkflowID

from bench.bare import Logic

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "dbos")
DB_URL = os.environ.get("BENCH_DBOS_URL", "postgresql://baton@127.0.0.1:5432/dbos")
_logic = {name: Logic(name) for name in ("inventory", "payment", "shipping", "notification")}
_redis = redis.Redis.from_url(REDIS_URL)


def _fields(cid: str, data: dict[str, Any]) -> dict[bytes, bytes]:
    return {b"correlation_id": cid.encode(), b"id": cid.encode(), b"data": orjson.dumps(data)}


@DBOS.step()
def reserve_inventory(cid: str, order: dict[str, Any]) -> dict[str, Any]:
    (_type, data), = _logic["inventory"].handle("order.placed", _fields(cid, order))
    return data


@DBOS.step()
def charge_payment(cid: str, order: dict[str, Any]) -> dict[str, Any]:
    (_type, data), = _logic["payment"].handle("order.placed", _fields(cid, order))
    return data


@DBOS.step()
def schedule_shipment(cid: str, reserved: dict[str, Any], charged: dict[str, Any]) -> str:
    logic = _logic["shipping"]
    logic.handle("inventory.reserved", _fields(cid, reserved))
    (type_, _data), = logic.handle("payment.charged", _fields(cid, charged))
    return type_


@DBOS.step()
def send_confirmation(cid: str, charged: dict[str, Any]) -> None:
    _logic["notification"].handle("payment.charged", _fields(cid, charged))


@DBOS.step()
def announce(cid: str, outcome: str) -> None:
    _redis.xadd(f"{PREFIX}:done", {"correlation_id": cid, "type": outcome})


@DBOS.workflow()
def order_fulfillment(cid: str, order: dict[str, Any]) -> str:
    reserved = reserve_inventory(cid, order)
    charged = charge_payment(cid, order)
    outcome = schedule_shipment(cid, reserved, charged)
    send_confirmation(cid, charged)
    announce(cid, outcome)
    return outcome


def main() -> None:
    DBOS(config={"name": "baton-bench", "system_database_url": DB_URL, "log_level": "WARNING",
                 "max_executor_threads": 32})
    DBOS.launch()
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    kick, last = f"{PREFIX}:kick", "0"
    _redis.set(f"{PREFIX}:ready", "1")
    while not stopping:
        reply: Any = _redis.xread({kick: last}, count=500, block=500)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                cid = fields[b"correlation_id"].decode()
                with SetWorkflowID(cid):
                    DBOS.start_workflow(order_fulfillment, cid, orjson.loads(fields[b"order"]))
    DBOS.destroy()


if __name__ == "__main__":
    main()
