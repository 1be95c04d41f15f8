"""End to end, supervision under failure: `kill -9` of each controller process in the middle of a
compensation, and two of every controller process at once.

Each victim is started with a crash point (BATON_CRASH_POINTS), so it dies at a known spot, then
restarted without one. What must hold afterwards: every workflow reaches its terminal state, and each
participant's own ledger shows each compensation applied exactly once (stock back to the seed level,
one refund row per order, one cancelled shipment), however often the command was delivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from config.flows import load_catalog
from config.settings import Settings
from contracts.registry import default_registry
from contracts.streams import Keys
from controller.cli.procfile import descendants
from controller.db import migrate
from controller.service import sweep as sweeper
from controller.service.bootstrap import Services
from participants.runtime import outbox
from participants.runtime.db import make_engine
from tests.system import System, order_input, wait_until

pytestmark = pytest.mark.slow

SEED = 1_000_000  # participants.reference.inventory.GENEROUS_STOCK
FLOW_FILE = Path(__file__).parents[2] / "config" / "flows" / "order_fulfillment.yaml"


class Tap(threading.Thread):
    """Every entry ever added to the system's command and event streams, read as it arrives (the
    clock trims acknowledged entries every 30 s, so XRANGE at the end would miss some)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.prefix = prefix
        self.seen: dict[str, list[dict[str, str]]] = {}
        self.last: dict[str, str] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.passes = 0  # whole passes done, under `done`
        self.ended = False  # the thread left its loop (halted, or died), under `done`
        self.done = threading.Condition(self.lock)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.poll()
                with self.done:
                    self.passes += 1
                    self.done.notify_all()
                self.halt.wait(0.05)
        finally:
            with self.done:  # a waiter learns at once that no pass will come
                self.ended = True
                self.done.notify_all()
            self.client.close()

    def poll(self) -> None:
        # The server is shared with the other tests' systems, and SCAN walks all of its keys: 1,000
        # a call, not the default 10, keeps a pass to a few round trips.
        for kind in ("command", "event"):
            for key in self.client.scan_iter(f"{self.prefix}:{kind}:*", count=1000, _type="stream"):
                self.last.setdefault(key, "0")
        if not self.last:
            return
        reply: Any = self.client.xread(self.last)  # type: ignore[arg-type]
        with self.lock:
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    self.seen.setdefault(stream, []).append(fields)
                    self.last[stream] = entry_id

    def entries(self, stream: str) -> list[dict[str, str]]:
        self.poll_now()
        with self.lock:
            return list(self.seen.get(stream, []))

    def all_entries(self) -> list[dict[str, str]]:
        self.poll_now()
        with self.lock:
            return [e for entries in self.seen.values() for e in entries]

    def poll_now(self) -> None:
        """Wait for a whole pass that began after this call (a pass under way may have scanned
        before the newest stream or read before the newest entry)."""
        if self.halt.is_set():
            return  # stopped with the system: what it holds is final
        with self.done:
            wanted = self.passes + 2
            if not self.done.wait_for(lambda: self.passes >= wanted or self.ended, timeout=30):
                raise AssertionError("the tap made no whole pass in 30 s")
            assert not self.ended, "the tap's thread died (see its traceback above)"


class Supervised(System):
    """The harness, plus starting a process and waiting until it would stop cleanly on SIGTERM,
    and a tap on every stream."""

    def __init__(self, tmp: Path, database_url: str, redis_url: str, participant_db: str,
                 extra_env: dict[str, str]) -> None:
        super().__init__(tmp, database_url, redis_url, participant_db, extra_env)
        self.raw = redis.Redis.from_url(redis_url)  # RQ wants bytes
        self.tap = Tap(redis_url, self.prefix)
        self.tap.start()

    def commands(self, participant: str) -> list[dict[str, str]]:
        return self.tap.entries(self.keys.command_stream(participant))

    def close(self) -> dict[str, int | None]:
        """One SIGTERM to each process, then wait. (`Processes.stop_all` signals twice; a second
        SIGTERM that lands while Python is finalizing kills it with -15.)"""
        running = self.procs.running
        for proc in running.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in running.items():
            try:
                codes[name] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        running.clear()
        self.tap.halt.set()
        self.tap.join()
        self.http.close()
        self.redis.close()
        self.raw.close()
        return codes

    def launch(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        proc = self.procs.start(name, extra_env)
        wait_until(lambda: self._handles_sigterm(name, proc.pid), 60, f"{name} to be up")

    def kill_tree(self, name: str) -> None:
        """`kill -9` of a process and everything it forked, as a crash of its machine would. (RQ's
        work horse runs in a process group of its own: killing the worker's group spares it.)"""
        proc = self.procs.running.pop(name)
        for pid in descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def _handles_sigterm(self, name: str, pid: int) -> bool:
        if name.startswith("worker"):  # RQ installs its own handlers once registered
            queue = Queue(self.keys.rq_queue("sweeps"), connection=self.raw)
            return any(w.pid == pid for w in Worker.all(queue=queue))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))


MakeSystem = Callable[..., Supervised]


@pytest.fixture
def make_system(tmp_path: Path, pg_database_url: str, pg_participant_url: str,
                redis_url: str) -> Iterator[MakeSystem]:
    made: list[Supervised] = []

    def make(**extra_env: str) -> Supervised:
        system = Supervised(tmp_path, pg_database_url, redis_url, pg_participant_url, extra_env)
        made.append(system)
        return system

    yield make
    for system in made:
        system.close_cleanly()


# -- helpers -------------------------------------------------------------------------------------


def crashed(system: System, name: str, timeout: float = 30.0) -> None:
    """Wait for a process started with a crash point to die of SIGKILL; forget it."""
    proc = system.procs.running[name]
    wait_until(lambda: proc.poll() is not None, timeout, f"{name} to hit its crash point")
    assert proc.returncode == -9, f"{name} exited {proc.returncode}: {system.logs(name)[-3000:]}"
    system.procs.running.pop(name)


def horse_crashed(system: System) -> bool:
    """An RQ work horse (the process running the sweep job) died of SIGKILL."""
    return "Work-horse terminated unexpectedly" in system.logs("worker")


def wait_all(system: System, cids: list[str], *statuses: str, timeout: float = 60.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = {cid: system.workflow(cid) for cid in cids}
        return found if all(wf["status"] in statuses for wf in found.values()) else None
    try:
        done: dict[str, Any] = wait_until(reached, timeout, f"{len(cids)} workflows to be {statuses}")
    except AssertionError:
        late = {c: w["status"] for c in cids if (w := system.workflow(c))["status"] not in statuses}
        raise AssertionError(f"not {statuses}: {late}") from None
    return done


def steps_done(system: System, cid: str, *names: str) -> bool:
    steps = system.steps(system.workflow(cid))
    return all(steps[n] == "done" for n in names)


def stock(system: System, sku: str) -> int:
    rows = system.query("inventory", "SELECT available FROM inventory_stock WHERE product_id = :p", p=sku)
    level: int = rows[0][0]
    return level


def refunds(system: System, order_id: str) -> int:
    rows = system.query("payment", "SELECT count(*) FROM payment_ledger WHERE order_id = :o "
                        "AND kind = 'refund'", o=order_id)
    count: int = rows[0][0]
    return count


def released(system: System, order_id: str) -> list[str]:
    rows = system.query("inventory", "SELECT status FROM inventory_reservations WHERE order_id = :o",
                        o=order_id)
    return [r[0] for r in rows]


def shipments(system: System, cid: str) -> list[str]:
    rows = system.query("shipping", "SELECT status FROM shipping_shipments WHERE correlation_id = :c",
                        c=cid)
    return [r[0] for r in rows]


def deliveries(system: System, participant: str) -> Counter[tuple[str, str]]:
    """How many entries each (command id, attempt) has on the participant's command stream."""
    return Counter((c["id"], c["attempt"]) for c in system.commands(participant))


def sent_twice(system: Supervised) -> list[tuple[str, str]]:
    """(id, attempt) of the messages added more than once to a stream: what was published again."""
    seen = Counter((f["id"], f.get("attempt", "")) for f in system.tap.all_entries())
    return [k for k, n in seen.items() if n > 1]


def assert_compensated(wf: dict[str, Any], reason: str, steps: set[str]) -> None:
    assert wf["status"] == "compensated" and wf["reason"] == reason, wf
    assert {c["step"] for c in wf["compensations"]} == steps, wf["compensations"]
    assert all(c["status"] == "done" for c in wf["compensations"]), wf["compensations"]
    by_step = {s["name"]: s["status"] for s in wf["steps"]}
    assert all(by_step[s] == "compensated" for s in steps), by_step


def assert_late_orders_compensated_once(system: System, late: list[str]) -> None:
    """Orders `ord-late-<i>` breached their SLA: compensated, released once, refunded once."""
    for wf in wait_all(system, late, "compensated").values():
        assert_compensated(wf, "sla_breached", {"reserve_inventory", "charge_payment"})
    for i in range(len(late)):
        assert released(system, f"ord-late-{i}") == ["released"]
        assert refunds(system, f"ord-late-{i}") == 1
    assert stock(system, "SKU-001") == SEED


def order(order_id: str, customer: str = "cust-gold", sku: str = "SKU-001", quantity: int = 2,
          price: float = 10.0) -> dict[str, Any]:
    return order_input(order_id=order_id, customer=customer,
                       items=[{"product_id": sku, "quantity": quantity, "unit_price": price}])


# -- kill -9 in the middle of a compensation -----------------------------------------------------


def test_kill_9_of_the_tracker_mid_compensation(make_system: MakeSystem) -> None:
    """The tracker dies right after XADDing a compensation command, before marking its outbox row
    sent and before acknowledging the event that caused it: the relay sends the command again, the
    restarted tracker gets the event again, and each compensation is still applied once."""
    system = make_system()
    system.start("web", "relay", "clock", "worker", "alerts", "inventory", "payment", "notification")
    system.procs.start("tracker", {"BATON_CRASH_POINTS": "outbox.after_xadd"})
    # SLA breaches (shipping is stopped): their steps are recorded before anything is published.
    late = [system.start_order(sla_seconds=4, input=order(f"ord-late-{i}")) for i in range(3)]
    wait_until(lambda: all(steps_done(system, c, "reserve_inventory", "charge_payment") for c in late),
               30, "the steps of the late orders")
    # Declined cards: the tracker's first publication is a compensation (or the breach's second one).
    declined = [system.start_order(input=order(f"ord-declined-{i}", customer="cust-broke"))
                for i in range(3)]
    crashed(system, "tracker")
    # While it is down the sweeper breaches the late orders and their first compensation is
    # applied; its answer waits for a tracker.
    wait_all(system, late, "compensating", timeout=30)
    wait_until(lambda: all(refunds(system, f"ord-late-{i}") or released(system, f"ord-late-{i}") ==
                           ["released"] for i in range(3)), 30, "the first compensations")
    system.launch("tracker")

    for wf in wait_all(system, declined, "compensated").values():
        assert_compensated(wf, "step_failed", {"reserve_inventory"})
    for wf in wait_all(system, late, "compensated").values():
        assert_compensated(wf, "sla_breached", {"reserve_inventory", "charge_payment"})
    for i in range(3):
        assert released(system, f"ord-declined-{i}") == ["released"]
        assert released(system, f"ord-late-{i}") == ["released"]
        assert refunds(system, f"ord-late-{i}") == 1
        assert refunds(system, f"ord-declined-{i}") == 0
    assert stock(system, "SKU-001") == SEED  # every unit given back exactly once
    wait_until(lambda: sent_twice(system), 30, "the relay to send the crashed tracker's rows again")


@pytest.mark.parametrize("point", ["sweeper.before_commit", "sweeper.after_commit"])
def test_kill_9_of_the_sweeping_worker_mid_sweep(make_system: MakeSystem, point: str) -> None:
    """The RQ job that sweeps dies holding its transaction open (nothing happened: the restarted
    worker does it all), or just after committing the breach (the relay sends what it decided)."""
    system = make_system()
    system.start("web", "tracker", "relay", "clock", "alerts", "inventory", "payment", "notification")
    system.procs.start("worker", {"BATON_CRASH_POINTS": point})
    late = [system.start_order(sla_seconds=2, input=order(f"ord-late-{i}")) for i in range(4)]
    wait_until(lambda: horse_crashed(system), 30, "the sweep job to hit its crash point")
    if point == "sweeper.before_commit":
        # rolled back: the breach is not recorded, and no sweep gets further while the point is set
        assert all(system.workflow(c)["status"] == "running" for c in late)
        assert system.commands("inventory") == system.commands("payment") == []
    else:
        wait_until(lambda: any(system.workflow(c)["status"] == "compensating" for c in late), 10,
                   "the committed breach")
    system.procs.kill("worker")  # kill -9 of the whole worker, then a clean restart
    system.launch("worker")

    assert_late_orders_compensated_once(system, late)
    for participant in ("inventory", "payment"):
        assert set(deliveries(system, participant).values()) == {1}  # one entry per attempt


def test_kill_9_of_the_relay_mid_compensation(make_system: MakeSystem) -> None:
    """The sweep job dies after its commit, so the relay must send the breach's first compensation;
    the relay dies after XADD, before marking the rows sent: restarted, it sends them again."""
    system = make_system()
    system.start("web", "tracker", "clock", "alerts", "inventory", "payment", "notification")
    system.procs.start("worker", {"BATON_CRASH_POINTS": "sweeper.after_commit"})
    system.procs.start("relay", {"BATON_CRASH_POINTS": "relay.after_xadd"})
    late = [system.start_order(sla_seconds=2, input=order(f"ord-late-{i}")) for i in range(3)]
    crashed(system, "relay")
    # the relayed commands are applied while the relay is down
    wait_until(lambda: any(refunds(system, f"ord-late-{i}") or "released" in released(
        system, f"ord-late-{i}") for i in range(3)), 30, "a compensation to be applied")
    system.launch("relay")
    system.procs.kill("worker")
    system.launch("worker")

    assert_late_orders_compensated_once(system, late)
    wait_until(lambda: sent_twice(system), 30, "the restarted relay to send its rows again")


class _SlowHook(BaseHTTPRequestHandler):
    """Records every POST; holds the first one until `release` is set (the worker dies meanwhile)."""

    arrived: list[dict[str, Any]] = []
    release = threading.Event()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _SlowHook.arrived.append(body)
        if len(_SlowHook.arrived) == 1:
            _SlowHook.release.wait(30)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_kill_9_of_an_rq_worker_mid_alert_job(tmp_path: Path, make_system: MakeSystem) -> None:
    """Shipping fails; the release is applied, then the refund goes unanswered (payment is
    stopped): needs_attention. The RQ worker is killed while its job is posting the alert webhook.
    The job is not lost: RQ finds it abandoned and retries it, and the restarted worker delivers
    it. The release applied once, no refund."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flows = tmp_path / "flows"
    flows.mkdir()
    hook = f"http://127.0.0.1:{server.server_port}/alerts"
    (flows / "order_fulfillment_v3.yaml").write_text(
        FLOW_FILE.read_text().replace("version: 1", "version: 3")
        + f"alert_webhook: {hook}\ncommand_timeout_seconds: 0.3\ncommand_max_attempts: 3\n")
    system = make_system(BATON_FLOWS_DIRS=str(flows))
    try:
        system.start("web", "tracker", "relay", "clock", "worker", "alerts", "payment")
        cid = system.start_order(input=order("ord-attention", sku="SKU-002", quantity=150, price=1.0))
        wait_until(lambda: steps_done(system, cid, "charge_payment"), 30, "the charge")
        system.procs.stop("payment")  # the refund will go unanswered
        system.procs.start("inventory")  # completes last, so it is compensated first
        system.procs.start("shipping")  # 150 units: over the parcel limit
        try:
            wait_until(lambda: _SlowHook.arrived, 60, "the alert webhook to be called")
        except AssertionError:
            queued = {q: system.raw.llen(f"rq:queue:{system.keys.rq_queue(q)}") for q in ("sweeps", "alerts")}
            raise AssertionError(f"no webhook call; RQ queue lengths: {queued}") from None
        queue = Queue(system.keys.rq_queue("alerts"), connection=system.raw,
                      serializer=JSONSerializer)
        [job_id] = wait_until(lambda: queue.started_job_registry.get_job_ids(), 10, "the job")
        job = Job.fetch(job_id, connection=system.raw, serializer=JSONSerializer)
        left = job.retries_left  # of the attempt about to be killed
        system.kill_tree("worker")  # mid-job: its work horse is waiting for the webhook's answer
        _SlowHook.release.set()
        # The dead worker's scheduler held the lock on the alerts queue's scheduled jobs, for 61 s
        # after its last refresh; the test stands in for that expiry, so that the restarted worker
        # schedules the retry at once.
        system.raw.delete(RQScheduler.get_locking_key(system.keys.rq_queue("alerts")))
        system.launch("worker")

        wf = system.workflow(cid)
        assert wf["status"] == "needs_attention" and wf["reason"] == "step_failed"
        assert [(c["step"], c["status"], c["attempts"]) for c in wf["compensations"]] == [
            ("reserve_inventory", "done", 1), ("charge_payment", "failed", 3)]
        assert released(system, "ord-attention") == ["released"]
        assert stock(system, "SKU-002") == SEED
        assert refunds(system, "ord-attention") == 0
        assert [c["attempt"] for c in system.commands("payment")] == ["1", "2", "3"]

        # The killed job is still STARTED in RQ's registry of jobs in progress. RQ's maintenance
        # retries it once its heartbeat expires (about 90 s); the test moves the clock forward.
        # (Once in a while the restarted worker has found it abandoned and retried it already.)
        job.refresh()
        assert left is not None
        if job.retries_left == left:
            queue.started_job_registry.cleanup(timestamp=time.time() + 600)
            job.refresh()
        assert job.retries_left == left - 1, "the killed attempt retried, once"
        # The restarted worker runs it again, and this time the webhook gets the alert and answers.
        wait_until(lambda: job.get_status(refresh=True) == "finished", 30, "the re-run to deliver")
        assert len(_SlowHook.arrived) == 2
        assert [a["workflow"]["correlation_id"] for a in _SlowHook.arrived] == [cid, cid]
        assert _SlowHook.arrived[1]["workflow"]["status"] == "needs_attention"
        assert job.return_value() == 204
    finally:
        _SlowHook.release.set()
        server.shutdown()
        server.server_close()


# -- two of everything -----------------------------------------------------------------------


def test_two_trackers_and_two_sweepers_issue_nothing_twice(make_system: MakeSystem) -> None:
    system = make_system()
    for name in ("tracker", "clock", "worker"):
        system.procs.lines[f"{name}2"] = system.procs.lines[name]
    system.start("web", "tracker", "tracker2", "relay", "clock", "clock2", "worker", "worker2",
                 "alerts", "inventory", "payment", "notification")  # shipping starts later
    kinds: dict[str, list[str]] = {k: [] for k in ("ok", "declined", "rare", "parcel", "late")}
    for i in range(4):
        kinds["late"].append(system.start_order(sla_seconds=2, input=order(f"ord-late-{i}", sku="SKU-003",
                                                                            quantity=1)))
    for i in range(6):
        kinds["ok"].append(system.start_order(input=order(f"ord-ok-{i}", sku="SKU-010", quantity=1)))
        if i < 4:
            kinds["declined"].append(system.start_order(
                input=order(f"ord-declined-{i}", customer="cust-broke")))
        if i < 3:
            kinds["rare"].append(system.start_order(input=order(f"ord-rare-{i}", sku="SKU-RARE-2",
                                                                quantity=1)))
            kinds["parcel"].append(system.start_order(input=order(f"ord-parcel-{i}", sku="SKU-002",
                                                                  quantity=150, price=1.0)))
    order_of = {cid: f"ord-{kind}-{i}" for kind, cids in kinds.items() for i, cid in enumerate(cids)}
    assert len(order_of) == 20
    wait_all(system, kinds["late"], "compensated", timeout=40)  # breached while shipping is down
    system.start("shipping")

    outcome = {**wait_all(system, kinds["ok"], "completed"),
               **wait_all(system, kinds["declined"] + kinds["rare"] + kinds["parcel"], "compensated")}
    wait_until(lambda: all(system.steps(system.workflow(c))["schedule_shipment"] == "compensated"
                           for c in kinds["late"]), 60, "the late shipments to be cancelled")
    outcome.update(wait_all(system, kinds["late"], "compensated"))

    for cid in kinds["ok"]:
        assert outcome[cid]["reason"] is None and outcome[cid]["compensations"] == []
    for cid in kinds["declined"]:
        assert_compensated(outcome[cid], "step_failed", {"reserve_inventory"})
    for cid in kinds["rare"]:
        assert_compensated(outcome[cid], "step_failed", {"charge_payment"})
    for cid in kinds["parcel"]:
        assert_compensated(outcome[cid], "step_failed", {"reserve_inventory", "charge_payment"})
    for cid in kinds["late"]:
        assert_compensated(outcome[cid], "sla_breached",
                           {"reserve_inventory", "charge_payment", "schedule_shipment"})
        assert shipments(system, cid) == ["cancelled"]

    # The participants' ledgers: each compensation applied once.
    for cid, order_id in order_of.items():
        want = 1 if any(c["command"] == "payment.refund" for c in outcome[cid]["compensations"]) else 0
        assert refunds(system, order_id) == want, order_id
    assert stock(system, "SKU-001") == stock(system, "SKU-002") == stock(system, "SKU-003") == SEED
    assert stock(system, "SKU-010") == SEED - 6

    # No command issued twice: per command id as many entries as the API counts attempts, one each.
    attempts = {(cid, c["command"]): c["attempts"] for cid, wf in outcome.items()
                for c in wf["compensations"]}
    for participant in ("inventory", "payment", "shipping"):
        entries = system.commands(participant)
        per_attempt = Counter((e["id"], e["attempt"]) for e in entries)
        assert set(per_attempt.values()) <= {1}, [k for k, n in per_attempt.items() if n > 1]
        per_id: dict[str, list[dict[str, str]]] = {}
        for e in entries:
            per_id.setdefault(e["id"], []).append(e)
        for sent in per_id.values():
            key = (sent[0]["correlation_id"], sent[0]["type"])
            assert len(sent) == attempts[key], (key, sent)
            assert sorted(int(e["attempt"]) for e in sent) == list(range(1, len(sent) + 1))
        issued = {key for key in attempts if key[1].startswith(PREFIX[participant])}
        seen = {(sent[0]["correlation_id"], sent[0]["type"]) for sent in per_id.values()}
        assert seen == issued, {"issued, not on the stream": issued - seen, "passes": system.tap.passes}

    # No status lost: every event a participant emitted is on its workflow's timeline, once.
    for cid in order_of:
        timeline = system.timeline(cid)
        ids = [m["id"] for m in timeline]
        assert len(ids) == len(set(ids)), cid
        types = Counter(m["type"] for m in timeline if m["kind"] == "event")
        answers = {"inventory.release": "inventory.released", "payment.refund": "payment.refunded",
                   "shipment.cancel": "shipment.cancelled"}
        for c in outcome[cid]["compensations"]:
            assert types[answers[c["command"]]] >= 1, (cid, types)


PREFIX = {"inventory": "inventory.", "payment": "payment.", "shipping": "shipment."}


# -- a sweep slower than the relay's grace ----------------------------------------------------------


def test_a_sweep_slower_than_the_relays_grace_is_not_published_twice(
        pg_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay takes unsent outbox rows older than its grace (5 s by default), meant for rows a
    crashed writer left. A sweep stamps its rows with the time it started, so when sweeping takes
    longer than the grace (500 due workflows take 5 to 6 s on PostgreSQL in bench/README.md), a
    relay pass between the sweep's commit and its own XADD publishes the same rows: every such
    command is on its stream twice. The pass is placed in that window here, as the relay (polling
    every second) lands in it by chance."""
    from bench.sweep import fill  # the benchmark's fill: in-flight and overdue order_fulfillment rows

    engine = make_engine(pg_database_url)
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"g{uuid.uuid4().hex[:8]}")
    registry = default_registry()
    services = Services(Settings(database_url=pg_database_url, redis_url=redis_url,
                                 stream_prefix=keys.prefix), engine, client,
                        load_catalog(registry, ()), registry, keys)
    grace = timedelta(seconds=5.0)  # controller.relay.run_relay's, at the default interval
    real_publish = outbox.publish

    def slow_writer_meets_the_relay(engine_: Any, client_: Any, pending: Any, *args: Any) -> None:
        time.sleep(grace.total_seconds() + 0.1)  # the sweep took longer than the grace
        outbox.relay_once(engine_, client_, grace=grace)  # the relay's next pass
        real_publish(engine_, client_, pending, *args)

    try:
        migrate.upgrade(engine)
        fill(engine, 200, 20, datetime.now(UTC).replace(microsecond=0))
        monkeypatch.setattr(outbox, "publish", slow_writer_meets_the_relay)
        assert sweeper.sweep_once(services, datetime.now(UTC)) == 20
        entries: Any = client.xrange(keys.command_stream("payment"))
        sent = Counter((f[b"id"], f[b"attempt"]) for _, f in entries)
        assert len(sent) == 20
        assert {k: n for k, n in sent.items() if n > 1} == {}, "commands published twice"
    finally:
        for key in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        engine.dispose()
