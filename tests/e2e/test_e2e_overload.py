"""Overload end to end: a flood of kickoffs on loopback is answered 201, 200, 429 or 503, never
anything else, and every workflow accepted converges once the flood is over."""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from tests.system import TOKENS, System, order_input, wait_until

# The flood goes on until the first 429, at most MAX_KICKOFFS: a web measures the backlog at
# most once a second, and a fast machine admits a few hundred kickoffs in that second.
MAX_KICKOFFS, THREADS, MAX_BACKLOG = 3000, 8, 25
TERMINAL = ("completed", "compensated")


@pytest.fixture
def system(tmp_path: Path, pg_database_url: str, pg_participant_url: str,
           redis_url: str) -> Iterator[System]:
    sys_ = System(tmp_path, pg_database_url, redis_url, pg_participant_url,
                  {"BATON_MAX_BACKLOG": str(MAX_BACKLOG)})
    try:
        yield sys_
    finally:
        sys_.close_cleanly()


def test_a_flood_of_kickoffs_is_admitted_or_refused_and_what_was_admitted_converges(
        system: System) -> None:
    system.start("web", "tracker", "relay", "clock", "worker",
                 "inventory", "payment", "shipping", "notification")
    # Shipping is away during the flood: its consumer group falls behind whatever the speed of
    # the machine and of Baton, so the backlog limit must engage.
    charged = system.keys.event_stream("payment.charged")

    def shipping_reads() -> bool:
        try:
            return any(g["name"] == "shipping" for g in system.redis.xinfo_groups(charged))
        except redis.ResponseError:  # the stream is not there yet
            return False
    wait_until(shipping_reads, 30, "shipping's consumer groups")
    system.procs.stop("shipping")
    local = threading.local()
    answers: dict[str, int] = {}
    lock = threading.Lock()
    first_429 = threading.Event()

    def kickoff(i: int) -> None:
        if first_429.is_set():
            return
        if not hasattr(local, "http"):
            local.http = requests.Session()
            local.http.headers["Authorization"] = f"Bearer {TOKENS['starter']}"
        cid = f"flood-{i}-{uuid.uuid4().hex[:6]}"
        body = {"flow": "order_fulfillment", "correlation_id": cid,
                "input": order_input(customer="cust-broke" if i % 10 == 0 else "cust-gold")}
        r = local.http.post(f"{system.base}/v1/workflows", json=body, timeout=30)
        if r.status_code in (429, 503):
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["Content-Type"].startswith("application/problem+json")
        if r.status_code == 429:
            first_429.set()
        with lock:
            answers[cid] = r.status_code

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(kickoff, range(MAX_KICKOFFS)))
    counts = collections.Counter(answers.values())
    assert set(counts) <= {200, 201, 429, 503}, counts
    assert counts[429] > 0, f"the backlog limit never engaged: {counts}"
    accepted = [cid for cid, status in answers.items() if status in (200, 201)]
    assert accepted, counts
    system.start("shipping")

    def converged() -> bool:
        return all(system.workflow(cid)["status"] in TERMINAL for cid in accepted)
    wait_until(converged, 180, f"the {len(accepted)} accepted workflows to converge")
    refused = [cid for cid, status in answers.items() if status == 429]
    r = system.http.get(f"{system.base}/v1/workflows/{refused[0]}", timeout=10)
    assert r.status_code == 404  # a refused kickoff left nothing behind

    def admitted() -> bool:  # once every consumer has caught up, kickoffs are admitted again
        r = system.http.post(f"{system.base}/v1/workflows", timeout=10, json={
            "flow": "order_fulfillment", "input": order_input()})
        assert r.status_code in (201, 429), r.text
        return r.status_code == 201
    wait_until(admitted, 60, "a kickoff to be admitted again")
