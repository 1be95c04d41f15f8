"""`baton demo`: the whole system on embedded defaults, a realistic mix of orders, and the outcome.

It starts a private Redis, migrates a fresh SQLite database, runs the Procfile's lines, places
orders through the REST API (some run out of stock, some cards are declined, some parcels are too
big; then, with shipping stopped, some breach their SLA), then proposes price changes through
`price_change` (answering those that wait for approval: most approved, one rejected), waits for
every workflow to settle, prints a summary, and stops everything it started.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import load_settings
from controller.cli.client import ApiClient
from controller.cli.procfile import Processes
from controller.cli.report import write_demo_report
from controller.domain.statuses import StepStatus, WorkflowStatus
from participants.runtime.redis_server import start_server, stop_server

BIN = Path(sys.executable).parent
TERMINAL = {WorkflowStatus.COMPLETED, WorkflowStatus.COMPENSATED, WorkflowStatus.NEEDS_ATTENTION}
SLA_ORDERS = 6


def run_demo(orders: int, timeout: float = 180.0) -> int:
    settings = load_settings()
    run_dir = settings.data_dir / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    own_redis = settings.redis_url is None
    redis_url = settings.redis_url or start_server(run_dir / "redis")
    token = secrets.token_urlsafe(16)
    port = _free_port()
    procs = Processes(_environment(run_dir, redis_url, token, port), run_dir)
    _say(f"data and logs in {run_dir}; Redis at {redis_url}")
    api: ApiClient | None = None
    try:
        subprocess.run([str(BIN / "baton"), "migrate"], env=procs.env, check=True,
                       stdout=subprocess.DEVNULL)
        names = [n for n in procs.lines if n != "release"]
        _say(f"starting the Procfile's processes: {', '.join(names)}; API on port {port}")
        for name in names:
            procs.start(name)
        api = ApiClient(f"http://127.0.0.1:{port}", token)
        _wait_ready(api, procs)
        cids = _place_orders(api, max(orders - SLA_ORDERS, 1))
        results = _wait_settled(api, cids, timeout)
        results += _sla_phase(api, procs, timeout)
        _print_summary(results)
        prices = _price_phase(api, timeout)
        _print_summary(prices, "Outcome of the price changes")
        results += prices
        write_demo_report(api.base, token, run_dir)
        return 0 if all(r["status"] in TERMINAL for r in results) else 1
    finally:
        if api is not None:
            api.close()
        _say("stopping every process (SIGTERM)")
        procs.stop_all()
        if own_redis:
            stop_server(run_dir / "redis")


def _sla_phase(api: ApiClient, procs: Processes, timeout: float) -> list[dict[str, Any]]:
    """Orders that cannot keep a 3-second SLA because shipping is down: breached, compensated;
    when shipping returns, the shipments it schedules late are cancelled too."""
    _say(f"stopping shipping, then placing {SLA_ORDERS} orders with sla_seconds=3")
    procs.stop("shipping")
    rng = random.Random(7)
    cids = [_start(api, {"flow": "order_fulfillment", "sla_seconds": 3,
                         "input": order(rng, 9000 + n, kind="ok")[1]}) for n in range(SLA_ORDERS)]
    _wait_settled(api, cids, timeout)
    _say("restarting shipping: it catches up, and each late shipment is cancelled")
    procs.start("shipping")
    _wait(lambda: all(_late_shipment_settled(api.workflow(c)) for c in cids), timeout)
    return _wait_settled(api, cids, timeout)


# Price changes of every kind: (kind, product, current, proposed, unit cost, competitor price).
PRICE_CHANGES: list[tuple[str, str, float, float, float, float | None]] = [
    ("clean", "PRD-0001", 20.00, 21.50, 12.00, 22.00),
    ("clean", "PRD-0002", 8.00, 7.20, 5.00, None),
    ("clean", "PRD-0003", 149.00, 159.00, 90.00, 155.00),
    ("clean", "PRD-0004", 3.50, 3.90, 2.10, None),
    ("increase above 20 %", "PRD-0005", 10.00, 13.00, 6.00, None),
    ("increase above 20 %", "PRD-0006", 45.00, 59.00, 30.00, 60.00),
    ("above competitor", "PRD-0007", 20.00, 23.00, 12.00, 20.00),
    ("above competitor", "PRD-0008", 99.00, 109.00, 70.00, 95.00),
    ("below margin floor", "PRD-0009", 10.00, 6.20, 6.00, None),
    ("below margin floor", "PRD-0010", 30.00, 18.00, 25.00, 17.00),
    ("discontinued", "DISC-0011", 12.00, 12.60, 7.00, None),
    ("discontinued", "DISC-0012", 60.00, 64.00, 40.00, 65.00),
]


def _price_phase(api: ApiClient, timeout: float) -> list[dict[str, Any]]:
    """Proposed price changes: clean ones are published and reach catalog and search; soft
    violations wait in `approve` until the operator approves them (one is rejected); hard ones are
    rejected; a discontinued product's catalog refuses the price, and the publish is walked back."""
    _say(f"proposing {len(PRICE_CHANGES)} price changes: "
         + ", ".join(f"{n} {k}" for k, n in Counter(k for k, *_ in PRICE_CHANGES).items()))
    cids, waiting = [], []
    for n, (kind, product, current, proposed, cost, competitor) in enumerate(PRICE_CHANGES, 1):
        data: dict[str, Any] = {"change_id": f"chg-{n:04d}", "product_id": product,
                                "current_price": current, "proposed_price": proposed,
                                "unit_cost": cost, "currency": "EUR"}
        if competitor is not None:
            data["competitor_price"] = competitor
        cids.append(_start(api, {"flow": "price_change", "input": data}))
        if kind in ("increase above 20 %", "above competitor"):
            waiting.append(cids[-1])
    _wait(lambda: all(_step_status(api.workflow(c), "approve") == StepStatus.ACTIVE for c in waiting),
          timeout)
    _say(f"{len(waiting)} wait for approval: approving {len(waiting) - 1}, rejecting 1 "
         "(POST /v1/workflows/<cid>/signals/approve or /reject)")
    for cid in waiting[:-1]:
        api.intervene(cid, "signals/approve", {"reason": "within this quarter's pricing guidelines"})
    api.intervene(waiting[-1], "signals/reject",
                  {"reason": "we do not lead the market up on this product"})
    return _wait_settled(api, cids, timeout)


def _step_status(wf: dict[str, Any], step: str) -> str:
    status: str = next(s["status"] for s in wf["steps"] if s["name"] == step)
    return status


def _late_shipment_settled(wf: dict[str, Any]) -> bool:
    shipping = next(s for s in wf["steps"] if s["name"] == "schedule_shipment")
    return shipping["status"] == StepStatus.COMPENSATED and wf["status"] in TERMINAL


def _environment(run_dir: Path, redis_url: str, token: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PORT": str(port),
        "BATON_DATA_DIR": str(run_dir),
        "DATABASE_URL": f"sqlite:///{run_dir}/baton.db",
        "BATON_PARTICIPANT_DATABASE_URL": f"sqlite:///{run_dir}/participant-{{name}}.db",
        "REDIS_URL": redis_url,
        "BATON_TOKENS": f"demo:operator:{token}",
        "BATON_VISIBILITY_TIMEOUT": "5",
    })
    return env


def _wait_ready(api: ApiClient, procs: Processes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [n for n, p in procs.running.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited early; see {procs.log_dir}")
        if api.ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become ready in time; see {procs.log_dir}")


def _start(api: ApiClient, body: dict[str, Any]) -> str:
    cid: str = api.start(body)["correlation_id"]
    return cid


def order(rng: random.Random, n: int, kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """A realistic mix: most orders go through; some are out of stock, declined or too big to ship."""
    kind = kind or rng.choices(["ok", "out_of_stock", "declined", "too_big"], [70, 12, 12, 6])[0]
    items: list[dict[str, Any]] = [
        {"product_id": f"SKU-{rng.randint(1, 20):03d}", "quantity": rng.randint(1, 3),
         "unit_price": round(rng.uniform(2, 80), 2)}
        for _ in range(rng.randint(1, 3))
    ]
    customer = f"cust-{rng.randint(1, 40):03d}"
    if kind == "out_of_stock":
        items.append({"product_id": "SKU-RARE-2", "quantity": 1, "unit_price": 99.0})
    elif kind == "declined":
        customer = "cust-broke"
    elif kind == "too_big":  # a customer whose card covers it: shipping is what refuses
        items[0]["quantity"], customer = 150, "cust-gold"
    total = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)
    return kind, {"order_id": f"ord-{n:05d}", "customer_id": customer, "items": items,
                  "total_amount": total, "currency": "EUR"}


def _place_orders(api: ApiClient, count: int) -> list[str]:
    rng = random.Random(20261122)
    kinds: Counter[str] = Counter()
    cids = []
    for n in range(1, count + 1):
        kind, data = order(rng, n)
        kinds[kind] += 1
        cids.append(_start(api, {"flow": "order_fulfillment", "input": data}))
    _say(f"placed {count} orders: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
    return cids


def _wait_settled(api: ApiClient, cids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    results: dict[str, dict[str, Any]] = {}
    last = -1
    while time.monotonic() < deadline:
        for cid in cids:
            if results.get(cid, {}).get("status") not in TERMINAL:
                results[cid] = api.workflow(cid)
        settled = sum(r["status"] in TERMINAL for r in results.values())
        if settled != last:
            _say(f"{settled}/{len(cids)} workflows settled")
            last = settled
        if settled == len(cids):
            break
        time.sleep(0.5)
    return list(results.values())


def _print_summary(results: list[dict[str, Any]], title: str = "Outcome of the demo's workflows") -> None:
    outcomes: Counter[str] = Counter()
    for r in results:
        failed = [s["name"] for s in r["steps"] if s["status"] == StepStatus.FAILED]
        where = f" at {', '.join(failed)}" if failed else ""
        reason = f" ({r['reason']}{where})" if r["reason"] else ""
        outcomes[f"{r['status']}{reason}"] += 1
    width = max(len(k) for k in outcomes)
    print(f"\n{title}")
    for outcome, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:<{width}}  {n:>4}")
    print(f"  {'total':<{width}}  {len(results):>4}\n")


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo's workflows did not settle in time")
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)
