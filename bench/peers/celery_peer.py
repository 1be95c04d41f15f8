"""`order_fulfillment` as a Celery chain on the benchmark's Redis (broker), with at-least-once acks.

reserve_inventory | charge_payment | schedule_shipment; charge_payment also queues send_confirmation,
which is not on the completion path (as in the flow). The last task announces completion on the
stream `<prefix>:done`, which the harness reads as it reads `workflow.completed` for Baton. The rules
run on in-memory state, as in bench/bare.py: no database, so Celery is measured at its best.

    BENCH_REDIS_URL=redis://... BENCH_PREFIX=c1 celery -A bench.peers.celery_peer worker -c 2
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, chain

from bench.bare import Logic

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_PREFIX", "celery")
QUEUE = f"{PREFIX}-orders"

app = Celery("baton_bench", broker=REDIS_URL)
app.conf.update(
    task_acks_late=True,  # acknowledged after the task ran: at least once, like Baton
    task_ignore_result=True,
    task_serializer="json", accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_state: dict[str, Any] = {}


def _logic(name: str) -> Logic:
    if name not in _state:
        _state[name] = Logic(name)
    logic: Logic = _state[name]
    return logic


def _client() -> redis.Redis:
    if "redis" not in _state:
        _state["redis"] = redis.Redis.from_url(REDIS_URL)
    client: redis.Redis = _state["redis"]
    return client


def _fields(cid: str, data: dict[str, Any]) -> dict[bytes, bytes]:
    import orjson

    return {b"correlation_id": cid.encode(), b"id": cid.encode(), b"data": orjson.dumps(data)}


@app.task(name="reserve_inventory")
def reserve_inventory(cid: str, order: dict[str, Any]) -> dict[str, Any]:
    (_type, data), = _logic("inventory").handle("order.placed", _fields(cid, order))
    return {"cid": cid, "order": order, "reserved": data}


@app.task(name="charge_payment")
def charge_payment(ctx: dict[str, Any]) -> dict[str, Any]:
    (_type, data), = _logic("payment").handle("order.placed", _fields(ctx["cid"], ctx["order"]))
    send_confirmation.delay(ctx["cid"], data)
    return {**ctx, "charged": data}


@app.task(name="schedule_shipment")
def schedule_shipment(ctx: dict[str, Any]) -> None:
    logic = _logic("shipping")
    logic.handle("inventory.reserved", _fields(ctx["cid"], ctx["reserved"]))
    (type_, _data), = logic.handle("payment.charged", _fields(ctx["cid"], ctx["charged"]))
    _client().xadd(f"{PREFIX}:done", {"correlation_id": ctx["cid"], "type": type_})


@app.task(name="send_confirmation")
def send_confirmation(cid: str, charged: dict[str, Any]) -> None:
    _logic("notification").handle("payment.charged", _fields(cid, charged))


def kickoff(cid: str, order: dict[str, Any]) -> None:
    chain(reserve_inventory.s(cid, order), charge_payment.s(), schedule_shipment.s()).apply_async()
