"""A whole Baton system for end-to-end tests: the Procfile's real processes on a real Redis and a
real database, the REST client (controller/cli/client.py's ApiClient, the `baton` command's), and
helpers that poll to a deadline (never sleep and hope)."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from contracts.streams import Keys
from controller.cli.client import ApiClient
from controller.cli.procfile import ROOT, Processes, procfile_lines
from controller.db import migrate
from participants.runtime.connect import connect
from participants.runtime.db import make_engine

BIN = Path(sys.executable).parent
TOKENS = {"starter": "t-starter", "viewer": "t-viewer", "operator": "t-operator"}
CONTROLLER = ("web", "tracker", "relay", "clock", "worker", "alerts")
ORDER_PARTICIPANTS = ("inventory", "payment", "shipping", "notification")
PARTICIPANTS = (*ORDER_PARTICIPANTS, "pricing", "catalog", "search")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def order_input(order_id: str | None = None, customer: str = "cust-gold",
                items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    items = items or [{"product_id": "SKU-001", "quantity": 2, "unit_price": 10.0}]
    total = sum(i["quantity"] * i["unit_price"] for i in items)
    return {"order_id": order_id or f"ord-{uuid.uuid4().hex[:8]}", "customer_id": customer,
            "items": items, "total_amount": total, "currency": "EUR"}


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class System:
    def __init__(self, tmp: Path, database_url: str, redis_url: str,
                 participant_db: str | None = None, extra_env: dict[str, str] | None = None,
                 lines: dict[str, str] | None = None) -> None:
        """`lines` replaces or adds Procfile lines by name (another participant's command)."""
        self.prefix = f"e{uuid.uuid4().hex[:8]}"
        self.keys = Keys(self.prefix)
        self.port = free_port()
        self.database_url = database_url
        self.participant_db = participant_db or database_url
        tokens = ",".join(f"{role}-user:{role}:{token}" for role, token in TOKENS.items())
        env = {
            "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp), "PORT": str(self.port),
            # this checkout's code, even when the venv's editable install points at another one
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "BATON_PARTICIPANT_DATABASE_URL": self.participant_db,
            "BATON_STREAM_PREFIX": self.prefix, "BATON_TOKENS": tokens,
            "BATON_DATA_DIR": str(tmp / "data"), "BATON_VISIBILITY_TIMEOUT": "1",
            # A sweep is an RQ job, and RQ forks a work horse for each: 40-45 CPU ms a sweep. At
            # 0.2 s a system's idle worker took 23 % of a core, half of all its idle processes.
            "BATON_BLOCK_MS": "200", "BATON_SWEEP_INTERVAL": "0.5", "BATON_RELAY_INTERVAL": "0.2",
            **(extra_env or {}),
        }
        (tmp / "logs").mkdir(exist_ok=True)
        self.procs = Processes(env, tmp / "logs", {**procfile_lines(), **(lines or {})})
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = ApiClient(self.base, TOKENS["operator"])
        self.http = self.api.session  # the client's own session, for a test that reads raw answers
        self.redis = connect(redis_url, decode_responses=True)  # one server, or a cluster
        self._released = False

    def start(self, *names: str) -> None:
        """The named processes; by default the controller's and order_fulfillment's (each process
        costs about a CPU second to start: a test starts what its flows need). Before the web,
        the schema is brought up to date, as the Procfile's `release` line does in a deployment:
        the web does not migrate, and the other processes that do may not have yet when it
        answers /readyz."""
        wanted = names or (*CONTROLLER, *ORDER_PARTICIPANTS)
        if "web" in wanted and not self._released:
            self.release()
        for name in wanted:
            self.procs.start(name)
        if "web" in wanted:
            wait_until(self._ready, 60, "the API to be ready")

    def release(self) -> None:
        """What `baton migrate` (the `release` line) does, in this process. A database it cannot
        reach or use is left to the processes, which wait for it or say what is wrong themselves
        (the tests of those cases start them so); the next `start` tries again."""
        try:
            engine = make_engine(self.database_url)
        except sa.exc.SQLAlchemyError:
            return
        try:
            migrate.upgrade(engine)
            self._released = True
        except sa.exc.SQLAlchemyError:
            pass
        finally:
            engine.dispose()

    def _ready(self) -> bool:
        dead = [n for n, p in self.procs.running.items() if p.poll() is not None]
        if dead:
            raise AssertionError(f"{dead} exited early: " + self.logs(dead[0])[-3000:])
        return self.api.ready()

    def logs(self, name: str) -> str:
        path = self.procs.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> dict[str, int | None]:
        codes = self.procs.stop_all()
        self.api.close()
        self.redis.close()
        return codes

    def close_cleanly(self) -> None:
        """Stop every process with one SIGTERM: each must exit 0, else its log's tail says why."""
        failed = {n: c for n, c in self.close().items() if c != 0}
        assert not failed, "\n\n".join(f"{n} exited {c}:\n{self.logs(n)[-3000:]}"
                                        for n, c in failed.items())

    # -- the REST API ----------------------------------------------------------------------

    def start_order(self, **body: Any) -> str:
        body.setdefault("flow", "order_fulfillment")
        body.setdefault("input", order_input())
        r = self.api.call("POST", "/v1/workflows", json=body)
        assert r.status_code == 201, r.text
        cid: str = r.json()["correlation_id"]
        return cid

    def workflow(self, cid: str) -> dict[str, Any]:
        r = self.api.call("GET", f"/v1/workflows/{cid}")
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    def timeline(self, cid: str) -> list[dict[str, Any]]:
        r = self.api.call("GET", f"/v1/workflows/{cid}/timeline", params={"limit": 1000})
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def wait_status(self, cid: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            wf = self.workflow(cid)
            return wf if wf["status"] in statuses else None
        try:
            found: dict[str, Any] = wait_until(reached, timeout, f"{cid} to be {statuses}")
        except AssertionError:
            raise AssertionError(f"{cid} is {self.workflow(cid)}") from None
        return found

    def steps(self, wf: dict[str, Any]) -> dict[str, str]:
        return {s["name"]: s["status"] for s in wf["steps"]}

    # -- the participants' own state -------------------------------------------------------

    def query(self, participant: str, sql: str, **params: Any) -> list[Any]:
        url = self.participant_db.replace("{name}", participant)
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql), params))
        finally:
            engine.dispose()

    def commands(self, participant: str) -> list[dict[str, str]]:
        entries: list[tuple[str, dict[str, str]]] = self.redis.xrange(  # type: ignore[assignment]
            self.keys.command_stream(participant))
        return [fields for _, fields in entries]


def report_facts_as_rebuilt(engine: sa.Engine) -> None:
    """Assert that what the write path kept of the SLA report (facts, and rollup plus deltas)
    is what `report_store.rebuild` computes from the base tables (rolled back)."""
    from sqlalchemy import select

    from controller.db.tables import report_deltas, report_facts, report_rollup
    from controller.reporting import store as report_store

    def facts(conn: sa.Connection) -> list[tuple[Any, ...]]:
        order = (report_facts.c.correlation_id, report_facts.c.kind, report_facts.c.item)
        return [tuple(r) for r in conn.execute(select(report_facts).order_by(*order))]

    def sums(conn: sa.Connection) -> dict[tuple[Any, ...], tuple[int, ...]]:
        found: dict[tuple[Any, ...], list[int]] = {}
        for table in (report_rollup, report_deltas):
            for r in conn.execute(select(table)):
                row = dict(r._mapping)
                key = tuple(row[k] for k in ("flow", "kind", "name", "to_type", "participant",
                                             "hour", "bucket"))
                values = [v for k, v in row.items() if k not in (*key_names, "seq")]
                into = found.setdefault(key, [0] * len(values))
                for i, v in enumerate(values):
                    into[i] += v
        return {k: tuple(v) for k, v in found.items() if any(v)}

    key_names = ("flow", "kind", "name", "to_type", "participant", "hour", "bucket")
    with engine.connect() as conn:
        kept = facts(conn), sums(conn)
        conn.rollback()
        with conn.begin() as tx:
            report_store.rebuild(conn, fold=False)
            rebuilt = facts(conn), sums(conn)
            tx.rollback()
    assert kept[0] == rebuilt[0], "report facts differ from a rebuild"
    assert kept[1] == rebuilt[1], "report rollup and deltas differ from a rebuild"
