"""Seed 004's bulk repricing end to end: the Procfile's real processes (the controller, pricing,
and `--replicas` each of catalog and search) on a private Redis and a durable PostgreSQL, two
`bulk_repricing` workflows of the same `--skus` SKUs started together and approved together, so
that each SKU gets two prices in flight at once over the partitioned streams.

It reports the time from the approvals to both workflows completed, the SKUs per second, and the
per-SKU order check: for every SKU, the catalog handled its `sku_price.published` events in the
order pricing published them (the revisions of its `catalog.sku_price_applied` answers, in stream
order, increase), and the catalog and the search index end at pricing's last price.

    .venv/bin/python -m bench.repricing --skus 10000 --replicas 2   # the issue's size
    .venv/bin/python -m bench.repricing --skus 200                  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench.servers import make_servers
from contracts.envelope import decode_fields
from contracts.streams import Keys, Partitioning
from tests.system import CONTROLLER, System, wait_until

TYPES = ("sku_price.published", "catalog.sku_price_applied")


def batch(skus: list[str], price: float) -> dict[str, Any]:
    return {"repricing_id": f"bench-{uuid.uuid4().hex[:8]}", "category": "bench", "currency": "EUR",
            "canary_percent": 5, "failure_threshold_percent": 10,
            "changes": [{"sku": s, "current_price": 20.0, "price": price} for s in skus]}


def keep_answers(system: System, redis_url: str) -> None:
    """A group of the bench's own on each partition of the catalog's answers, never acknowledged:
    the trimming keeps every entry a group has not acknowledged, so the check sees them all."""
    raw = redis.Redis.from_url(redis_url)
    keys = Keys(system.prefix, dict.fromkeys(TYPES, Partitioning("sku", 16)))
    for stream in keys.event_streams("catalog.sku_price_applied"):
        raw.xgroup_create(stream, "bench-order-check", id="0", mkstream=True)
    raw.close()


def run(system: System, redis_url: str, size: int, timeout: float) -> dict[str, Any]:
    skus = [f"BENCH-{n:06d}" for n in range(size)]
    keep_answers(system, redis_url)
    began = time.monotonic()
    cids = [system.start_order(flow="bulk_repricing", input=batch(skus, p)) for p in (18.0, 17.0)]
    for cid in cids:
        wait_until(partial(_is_active, system, cid, "approve"), timeout, "evaluated")
    evaluated = time.monotonic()
    for cid in cids:
        r = system.http.post(f"{system.base}/v1/workflows/{cid}/signals/approve",
                             json={"reason": "bench"}, timeout=30)
        assert r.status_code == 200, r.text
    done = [system.wait_status(cid, "completed", "compensated", "needs_attention", timeout=timeout)
            for cid in cids]
    finished = time.monotonic()
    return {"skus": size, "workflows": [(w["status"], w.get("progress")) for w in done],
            "evaluate_s": round(evaluated - began, 2), "rollout_s": round(finished - evaluated, 2),
            "sku_updates_per_s": round(2 * size / (finished - evaluated), 1),
            "order": check_order(system, redis_url, skus)}


def _is_active(system: System, cid: str, name: str) -> bool:
    return _step(system, cid, name) == "active"


def _step(system: System, cid: str, name: str) -> str:
    return next(s["status"] for s in system.workflow(cid)["steps"] if s["name"] == name)


def check_order(system: System, redis_url: str, skus: list[str]) -> dict[str, Any]:
    keys = Keys(system.prefix, dict.fromkeys(TYPES, Partitioning("sku", 16)))
    raw = redis.Redis.from_url(redis_url)
    answered: dict[str, list[int]] = {}
    for stream in keys.event_streams("catalog.sku_price_applied"):
        entries: Any = raw.xrange(stream)
        for _, fields in entries:
            data = decode_fields(fields).data
            answered.setdefault(data["sku"], []).append(data["revision"])
    raw.close()
    out_of_order = [s for s, revs in answered.items() if revs != sorted(revs)]
    listed = _prices(system, "pricing", "SELECT product_id, price FROM pricing_prices")
    differ = [s for p, sql in (("catalog", "SELECT product_id, price FROM catalog_products"),
                               ("search", "SELECT product_id, price FROM search_index"))
              for s, price in _prices(system, p, sql).items()
              if s in listed and s.startswith("BENCH-") and price != listed[s]]
    return {"skus_answered": len(answered), "answers": sum(map(len, answered.values())),
            "out_of_order": len(out_of_order), "final_price_differs": len(differ),
            "ok": not out_of_order and not differ and len(answered) == len(skus)}


def _prices(system: System, participant: str, sql: str) -> dict[str, int]:
    return {r[0]: r[1] for r in system.query(participant, sql)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=10000)
    parser.add_argument("--replicas", type=int, default=2, help="of catalog and of search")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    servers = make_servers()
    try:
        redis_url = servers.start_redis()
        servers.start_postgres()
        db, participants = servers.create_db("baton"), servers.create_db("participants")
        lines = {f"{p}{i}": f"baton participant {p}" for p in ("catalog", "search")
                 for i in range(2, args.replicas + 1)}
        tmp = Path(tempfile.mkdtemp(prefix="baton-repricing."))
        system = System(tmp, db, redis_url, participants, lines=lines,
                        extra_env={"BATON_VISIBILITY_TIMEOUT": "10"})
        try:
            system.start(*CONTROLLER, "pricing", "catalog", "search", *lines)
            print(json.dumps(run(system, redis_url, args.skus, args.timeout), indent=2))
        finally:
            system.close()
    finally:
        servers.close()


if __name__ == "__main__":
    main()
