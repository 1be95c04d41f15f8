"""Redis lost entirely (restarted on an empty data directory): every process notices, re-creates its
consumer groups and re-publishes its recent outbox, and in-flight workflows converge."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from participants.runtime.redis_server import start_server, stop_server
from tests.system import System, order_input, wait_until

pytestmark = pytest.mark.slow


def test_in_flight_workflows_converge_after_redis_loses_everything(
        tmp_path: Path, pg_database_url: str, pg_participant_url: str) -> None:
    data = tmp_path / "redis"
    binary = os.environ.get("BATON_TEST_REDIS_SERVER")
    url = start_server(data, appendonly=False, binary=binary)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    system = System(tmp_path, pg_database_url, url, pg_participant_url)
    try:
        system.start("web", "tracker", "relay", "clock", "worker",
                      "inventory", "payment", "notification")
        cids = [system.start_order(input=order_input()) for _ in range(3)]
        def joined(cid: str) -> bool:
            return system.steps(system.workflow(cid))["schedule_shipment"] == "active"

        # reserved and charged; shipping, not started, has seen nothing
        wait_until(lambda: all(joined(c) for c in cids), 30, "the join's prerequisites")

        stop_server(data)
        shutil.rmtree(data)
        start_server(data, port=port, appendonly=False, binary=binary)  # same address, no data

        system.start("shipping")
        for cid in cids:
            wf = system.wait_status(cid, "completed", timeout=60)
            assert system.steps(wf)["schedule_shipment"] == "done"
        charges = system.query("payment", "SELECT count(*) FROM payment_ledger")
        assert charges[0][0] == 3  # re-published events were deduplicated, not charged again
        logs = system.logs("inventory") + system.logs("tracker")
        assert "Redis lost its data" in logs

        # The clock and the RQ worker came through too: a breach is swept and compensated.
        system.procs.stop("shipping")
        late = system.start_order(input=order_input(), sla_seconds=3)
        wf = system.wait_status(late, "compensated", timeout=60)
        assert wf["reason"] == "sla_breached"
    finally:
        try:
            system.close_cleanly()
        finally:
            stop_server(data)
