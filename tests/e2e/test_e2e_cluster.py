"""End to end on a real Redis Cluster (tests/cluster.py): the Procfile's processes with REDIS_URL
naming the cluster and RQ on the plain test server (BATON_RQ_REDIS_URL), driving order workflows
that complete, fail and are compensated, and breach their SLA; and a primary killed with -9 mid-run,
its replica taking over, after which every workflow still completes with its effects once; every
node stopped and started again; and bulk_repricing's partitioned fan-out, copies of catalog and
search sharing the partitions across a kill -9."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from contracts import lifecycle_events
from contracts.envelope import new_event
from controller.cli.procfile import procfile_lines
from participants.runtime.connect import connect
from tests.cluster import Cluster
from tests.system import CONTROLLER, ORDER_PARTICIPANTS, TOKENS, System, order_input, wait_until

pytestmark = pytest.mark.slow


def cluster_system(tmp: Path, database_url: str, participant_url: str, cluster_url: str,
                   rq_url: str, **env: str) -> System:
    return System(tmp, database_url, cluster_url, participant_url,
                  extra_env={"BATON_RQ_REDIS_URL": rq_url, **env})


class _Hook(BaseHTTPRequestHandler):
    posts: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        _Hook.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def system(tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_cluster_url: str,
           redis_url: str) -> Iterator[System]:
    sys_ = cluster_system(tmp_path, pg_database_url, pg_participant_url, redis_cluster_url, redis_url)
    try:
        yield sys_
    finally:
        sys_.close_cleanly()


def primaries_used(system: System, cluster_url: str) -> set[str]:
    """The primaries that serve the system's streams."""
    client = connect(cluster_url)
    try:
        streams = [k.decode() for k in client.scan_iter(match=f"{system.prefix}:*", _type="STREAM")]
        return {client.get_node_from_key(s).name for s in streams}  # type: ignore[attr-defined]
    finally:
        client.close()


def test_workflows_complete_compensate_and_breach_on_a_cluster(
        system: System, redis_cluster_url: str) -> None:
    system.start(*CONTROLLER, "inventory", "payment", "notification")  # shipping later
    late = system.start_order(sla_seconds=2)
    declined = system.start_order(input=order_input(customer="cust-broke"))
    wf = system.wait_status(declined, "compensated")
    assert wf["reason"] == "step_failed"
    assert [(c["step"], c["status"]) for c in wf["compensations"]] == [("reserve_inventory", "done")]
    wf = system.wait_status(late, "compensated")
    assert wf["reason"] == "sla_breached"  # swept by the RQ worker, on the plain Redis

    system.start("shipping")  # catches up: schedules the late one, and the controller cancels it
    happy = [system.start_order() for _ in range(5)]
    for cid in happy:
        wf = system.wait_status(cid, "completed")
        assert set(system.steps(wf).values()) == {"done"}
    wait_until(lambda: system.steps(system.workflow(late))["schedule_shipment"] == "compensated",
               30, "the late shipment to be cancelled")
    charges = system.query("payment", "SELECT count(*) FROM payment_ledger WHERE kind = 'charge'")
    assert charges[0][0] == 6  # the five happy orders and the late one; the declined never was
    assert len(primaries_used(system, redis_cluster_url)) == 3  # the streams spread over all three


def test_a_primary_killed_mid_run_loses_nothing(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_url: str) -> None:
    with Cluster(tmp_path / "cluster", replicas=1) as cluster:
        system = cluster_system(tmp_path, pg_database_url, pg_participant_url, cluster.url,
                                redis_url)
        try:
            system.start(*CONTROLLER, *ORDER_PARTICIPANTS)
            cids: list[str] = []
            started = threading.Event()

            def kick_off() -> None:
                for i in range(30):
                    cids.append(system.start_order(input=order_input(order_id=f"ord-fo-{i}")))
                    if i == 10:
                        started.set()

            feeder = threading.Thread(target=kick_off)
            feeder.start()
            started.wait(30)
            victim = cluster.primary_of(system.keys.event_stream("order.placed"))
            cluster.kill(victim)  # kill -9; its replica takes over
            feeder.join(60)
            assert len(cids) == 30
            for cid in cids:
                system.wait_status(cid, "completed", timeout=90)
            for participant, table in (("payment", "payment_ledger"),
                                       ("inventory", "inventory_reservations")):
                rows = system.query(participant, f"SELECT order_id FROM {table}"
                                    + (" WHERE kind = 'charge'" if participant == "payment" else ""))
                counts = Counter(r[0] for r in rows if r[0].startswith("ord-fo-"))
                assert counts == {f"ord-fo-{i}": 1 for i in range(30)}, participant
            assert "Redis restarted" in system.logs("tracker") + system.logs("inventory")
        finally:
            system.close_cleanly()


def test_an_alert_is_queued_once_on_rqs_server_and_delivered(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_cluster_url: str,
        redis_url: str) -> None:
    """The `alerts` process reads `workflow.needs_attention` from the cluster and queues the
    webhook, with its once-only marker in one MULTI/EXEC, on RQ's single server, where the
    `worker` process takes it: an event delivered twice is posted once."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_port}/hook"
    system = cluster_system(tmp_path, pg_database_url, pg_participant_url, redis_cluster_url,
                            redis_url, BATON_ALERT_WEBHOOK=hook)
    try:
        system.start("web", "alerts", "worker")
        cid = system.start_order()
        event = new_event(lifecycle_events.NEEDS_ATTENTION, {
            "flow": "order_fulfillment", "flow_version": 1, "correlation_id": cid,
            "status": "needs_attention", "reason": "step_failed"},
            correlation_id=cid, causation_id=cid, source="controller")
        for _ in range(2):  # the same event twice, as a redelivery after a rollback would
            system.redis.xadd(system.keys.event_stream(event.type), event.to_fields())  # type: ignore[arg-type]
        wait_until(lambda: any(p["workflow"]["correlation_id"] == cid for p in _Hook.posts), 30,
                   "the webhook to be posted")
        time.sleep(1.5)  # a second job would be taken at once by the idle worker
        assert [p["workflow"]["correlation_id"] for p in _Hook.posts].count(cid) == 1
        assert system.redis.exists(system.keys.alert_queued(event.id)) == 0  # not on the cluster
        rq = redis.Redis.from_url(redis_url)
        try:
            assert rq.exists(system.keys.alert_queued(event.id)) == 1  # with the job, on RQ's
        finally:
            rq.close()
    finally:
        system.close_cleanly()
        server.shutdown()
        server.server_close()


def test_every_node_down_for_a_while_then_back_every_process_waits_and_goes_on(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_url: str) -> None:
    """The whole cluster stopped (every node, as a restart of the cluster's machines does) and
    started again a few seconds later: no process exits meanwhile, and the workflows started
    before and after the outage complete."""
    with Cluster(tmp_path / "cluster") as cluster:
        system = cluster_system(tmp_path, pg_database_url, pg_participant_url, cluster.url,
                                redis_url)
        try:
            system.start(*CONTROLLER, *ORDER_PARTICIPANTS)
            before = [system.start_order() for _ in range(3)]
            for cid in before:
                system.wait_status(cid, "completed")
            for port in cluster.ports:
                cluster.shut_down(port)
            time.sleep(6)  # every process meets the outage: reads, ticks, the clock's lease
            dead = {n: p.poll() for n, p in system.procs.running.items() if p.poll() is not None}
            assert not dead, {n: system.logs(n)[-2000:] for n in dead}
            for port in cluster.ports:
                cluster.restart(port)
            cluster.wait_ok()
            after = [system.start_order() for _ in range(3)]
            for cid in after:
                system.wait_status(cid, "completed", timeout=60)
            dead = {n: p.poll() for n, p in system.procs.running.items() if p.poll() is not None}
            assert not dead, {n: system.logs(n)[-2000:] for n in dead}
        finally:
            system.close_cleanly()


def test_a_bulk_repricing_fans_out_over_partitions_on_a_cluster_across_a_kill_9(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str, redis_cluster_url: str,
        redis_url: str) -> None:
    """bulk_repricing on the cluster: its partitioned streams spread over the primaries, two
    copies each of catalog and search share them (a partition's lease each), one catalog copy is
    killed with -9 and started again mid-rollout, and two repricings of the same SKUs approved
    together end with every SKU at pricing's last price in catalog and search: each SKU's updates
    were applied in the order pricing published them."""
    copies = {f"{line}.2": procfile_lines()[line] for line in ("catalog", "search")}
    system = System(tmp_path, pg_database_url, redis_cluster_url, pg_participant_url,
                    extra_env={"BATON_RQ_REDIS_URL": redis_url}, lines=copies)
    try:
        system.start(*CONTROLLER, "pricing", "catalog", "search", *copies)
        skus = [f"CL-{n:03d}" for n in range(60)]
        cids = [system.start_order(flow="bulk_repricing", input={
            "repricing_id": f"r-cluster-{price}", "category": "shoes", "currency": "EUR",
            "canary_percent": 10,
            "changes": [{"sku": s, "current_price": 20.0, "price": price} for s in skus]})
            for price in (18.0, 17.0)]
        for cid in cids:
            wait_until(lambda: system.steps(system.workflow(cid))["approve"] == "active", 30,  # noqa: B023
                       "approval")
            r = system.http.post(f"{system.base}/v1/workflows/{cid}/signals/approve",
                                 json={"reason": "the category's new prices"},
                                 headers={"Authorization": f"Bearer {TOKENS['operator']}"}, timeout=10)
            assert r.status_code == 200, r.text
        wait_until(lambda: system.query("catalog", "SELECT count(*) FROM catalog_products "
                                        "WHERE product_id LIKE 'CL-%'")[0][0] > 0, 30,
                   "the catalog to apply the first prices")
        system.procs.kill("catalog")
        system.procs.start("catalog")
        for cid in cids:
            wf = system.wait_status(cid, "completed", timeout=90)
            assert wf["progress"] == {"skus": 60, "published": 60, "done": 60, "failed": 0,
                                      "reverted": 0}
        last = dict(system.query("pricing", "SELECT product_id, price FROM pricing_prices "
                                 "WHERE product_id LIKE 'CL-%'"))
        assert len(last) == 60 and set(last.values()) <= {1700, 1800}
        for participant, table in (("catalog", "catalog_products"), ("search", "search_index")):
            rows = dict(system.query(participant, f"SELECT product_id, price FROM {table} "
                                     "WHERE product_id LIKE 'CL-%'"))
            assert rows == last, participant
        client = connect(redis_cluster_url)
        try:
            streams = [k.decode() for k in client.scan_iter(
                match=f"{system.prefix}:event:sku_price.published:*", _type="STREAM")]
            assert len(streams) == 16
            assert len({client.get_node_from_key(s).name for s in streams}) == 3  # type: ignore[attr-defined]
        finally:
            client.close()
    finally:
        system.close_cleanly()
