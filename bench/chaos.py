"""A chaos run (issue 7): the whole system under load while processes are killed with SIGKILL, Redis is
restarted on its AOF and PostgreSQL is stopped with `pg_ctl stop -m immediate`; then a reconciliation
against the participants' own ledgers (bench/reconcile.py).

    python -m bench.chaos                                  # 2,000 workflows, 30 kills (the issue's size)
    python -m bench.chaos --workflows 200 --kills 8 --seed 7

It starts a private PostgreSQL and Redis (bench/servers.py), runs every Procfile line the
`order_fulfillment` flow needs, with two trackers and two processes of each participant, and acts
as their supervisor: whatever exits is started again. Exit status 0 only if nothing was lost or done
twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import requests
import sqlalchemy as sa

from bench import reconcile
from bench.servers import Servers, free_port, make_servers
from contracts.streams import Keys
from controller.cli.procfile import Processes, descendants
from participants.runtime import redis_server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t-chaos-operator"
PARTICIPANTS = reconcile.PARTICIPANTS
# Every process of the run: the Procfile's lines, two trackers, two of each participant.
LINES = ("web", "tracker", "tracker2", "relay", "clock", "worker", "alerts",
         *PARTICIPANTS, *(f"{p}2" for p in PARTICIPANTS))
MIX = {"ok": 60, "declined": 10, "out_of_stock": 8, "parcel": 7, "sla": 15}


@dataclass
class Config:
    workflows: int = 2000
    kills: int = 30
    seed: int = 1
    window: int = 40  # workflows in flight at most (running or compensating)
    clients: int = 4
    garbage: int = 6  # deliberately malformed stream entries
    converge_timeout: float = 600.0
    durable: bool = True  # PostgreSQL fsync on (synchronous_commit is on either way)
    visibility_timeout: float = 5.0
    redis_kill: bool = False  # restart Redis after SIGKILL rather than SIGTERM
    keep: bool = False
    quiet: bool = False
    env: dict[str, str] = field(default_factory=dict)  # more settings for every process


@dataclass
class Figures:
    accepted: dict[str, str] = field(default_factory=dict)  # correlation id -> kind of order
    refused: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    crashes: list[str] = field(default_factory=list)  # exits nobody caused
    resent: int = 0  # outbox rows a participant's runtime published after its writer could not
    redis_restarts: int = 0
    pg_restarts: int = 0
    exposed: set[str] = field(default_factory=set)  # in flight when a fault struck
    garbage: dict[str, str] = field(default_factory=dict)  # token -> stream
    load_seconds: float = 0.0
    converge_seconds: float = 0.0
    total_seconds: float = 0.0


class Chaos:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.servers: Servers = make_servers()
        self.figures = Figures()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.killed: set[str] = set()
        self.keys = Keys(f"chaos{config.seed}")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.logs = self.servers.tmp / "logs"
        self.logs.mkdir()

    def log(self, text: str) -> None:
        if not self.config.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- servers -------------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.servers.start_redis()
        # Never synchronous_commit = off: `pg_ctl stop -m immediate` would lose acknowledged commits.
        self.servers.start_postgres(durable=self.config.durable, stat_statements=False, crash_safe=True)
        self.db_url = self.servers.create_db("chaos")
        self.engine = sa.create_engine(self.db_url, pool_pre_ping=True,
                                       connect_args={"connect_timeout": 3})
        with self.engine.begin() as conn:
            for p in PARTICIPANTS:
                conn.execute(sa.text(f"CREATE SCHEMA p_{p}"))
        self.redis = redis.Redis.from_url(self.servers.redis_url, socket_timeout=5)

    def restart_redis(self) -> None:
        """SIGTERM (Redis writes its AOF out; with `redis_kill`, SIGKILL: up to the last second of
        writes is lost, `appendfsync everysec`), then the same data directory on the same port."""
        assert self.servers.redis_dir is not None
        self.mark_exposed()
        port = int(self.servers.redis_url.rsplit(":", 1)[1].split("/")[0])
        pid = self.servers.redis_pid()
        if self.config.redis_kill and pid:
            os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
                time.sleep(0.05)
        redis_server.stop_server(self.servers.redis_dir)
        time.sleep(1.0)
        redis_server.start_server(self.servers.redis_dir, port=port, appendonly=True)
        self.figures.redis_restarts += 1
        self.log(f"Redis restarted on its AOF after {'SIGKILL' if self.config.redis_kill else 'SIGTERM'}")

    def restart_postgres(self) -> None:
        self.mark_exposed()
        self.servers.stop_postgres("immediate")
        time.sleep(1.0)
        self.servers.restart_postgres()
        self.figures.pg_restarts += 1
        self.log("PostgreSQL stopped with -m immediate and started again")

    # -- processes -----------------------------------------------------------------------------

    def start_processes(self) -> None:
        participant_url = self.db_url + "?options=-csearch_path%3Dp_{name}"
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(self.servers.tmp),
            "PYTHONPATH": str(ROOT),  # this checkout's code, whichever checkout the venv installed
            "PORT": str(self.port), "DATABASE_URL": self.db_url, "REDIS_URL": self.servers.redis_url,
            "BATON_PARTICIPANT_DATABASE_URL": participant_url,
            "BATON_STREAM_PREFIX": self.keys.prefix, "BATON_TOKENS": f"chaos:operator:{TOKEN}",
            "BATON_DATA_DIR": str(self.servers.tmp / "data"),
            "BATON_VISIBILITY_TIMEOUT": str(self.config.visibility_timeout),
            "BATON_BLOCK_MS": "500", "BATON_SWEEP_INTERVAL": "0.5", "BATON_RELAY_INTERVAL": "0.5",
            "BATON_LOG_LEVEL": "WARNING", **self.config.env,
        }
        self.procs = self.processes(env)
        release = subprocess.run(["/bin/sh", "-c", f"exec {self.procs.lines['release']}"],
                                 cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=False)
        if release.returncode:
            raise RuntimeError(f"release failed: {release.stdout}{release.stderr}")
        for name in self.procs.lines:
            if name != "release":
                self.procs.start(name)
        self.wait_ready(120)
        self.supervisor = threading.Thread(target=self.supervise, daemon=True, name="supervisor")
        self.supervisor.start()

    def processes(self, env: dict[str, str]) -> Processes:
        """The run's processes: LINES, each `<line>2` running its line's command."""
        procs = Processes(env, self.logs)
        procs.lines = {n: procs.lines[n[:-1] if n[-1] == "2" else n] for n in ("release", *LINES)}
        return procs

    def base_for(self, i: int, attempt: int) -> str:
        """The API a kickoff goes to (one web here; a run with several spreads them)."""
        return self.base

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base}/readyz", timeout=2).ok:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API was not ready after {timeout}s:\n" + self.tail("web"))

    def supervise(self) -> None:
        """What a supervisor does: start again whatever exited, killed by us or not."""
        while not self.stopping.is_set():
            with self.lock:
                for name, proc in list(self.procs.running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    if name in self.killed:
                        self.killed.discard(name)
                    else:
                        self.figures.crashes.append(f"{name} exited {code}")
                        self.log(f"{name} exited {code} on its own:\n{self.tail(name, 1500)}")
                    self.procs.start(name)
                    self.figures.restarts += 1
            self.stopping.wait(0.5)

    def kill(self, name: str) -> None:
        """`kill -9` of the process and everything it forked (gunicorn's workers, RQ's work horse)."""
        self.mark_exposed()
        with self.lock:
            proc = self.procs.running[name]
            family = _frozen(proc.pid)
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            _wait_dead(family)  # a dying gunicorn worker still holds the port
            self.killed.add(name)
        self.figures.kills[name] += 1
        self.log(f"kill -9 {name} ({len(family)} processes)")

    def count_logged(self, event: str, field_name: str) -> int:
        """The sum of `field_name` over every log line of `event`, in every process's log."""
        total = 0
        for path in self.logs.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if event in line:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        total += int(json.loads(line).get(field_name, 0))
        return total

    def tail(self, name: str, size: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    # -- load ----------------------------------------------------------------------------------

    def order(self, i: int, kind: str) -> dict[str, Any]:
        rng = random.Random(self.config.seed * 1_000_003 + i)
        lines = rng.randint(1, 3)
        items: list[dict[str, Any]] = [{"product_id": f"SKU-{n:03d}", "quantity": rng.randint(1, 3),
                  "unit_price": round(rng.uniform(5, 50), 2)} for n in rng.sample(range(1, 21), lines)]
        customer = f"cust-c{rng.randrange(200):03d}"
        if kind == "declined":
            customer = "cust-broke"
        elif kind == "out_of_stock":
            items[-1] = {"product_id": "SKU-RARE-2", "quantity": 1, "unit_price": 9.99}
        elif kind == "parcel":
            items = [{"product_id": items[0]["product_id"], "quantity": rng.randint(101, 150),
                      "unit_price": 0.1}]
        total = round(sum(it["quantity"] * it["unit_price"] for it in items), 2)
        body: dict[str, Any] = {
            "flow": "order_fulfillment", "correlation_id": self.cid(i),
            "input": {"order_id": f"ord-{self.config.seed}-{i}", "customer_id": customer,
                      "items": items, "total_amount": total, "currency": "EUR"}}
        if kind == "sla":
            body["sla_seconds"] = 1  # breached unless all of it happens within a second
        return body

    def cid(self, i: int) -> str:
        return f"chaos-{self.config.seed}-{i:05d}"

    def kick(self, session: requests.Session, i: int, kind: str) -> None:
        """POST until answered 201 or 200, always with the same Idempotency-Key."""
        body = self.order(i, kind)
        deadline = time.monotonic() + 180
        last, attempt = "", 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                r = session.post(f"{self.base_for(i, attempt)}/v1/workflows", json=body, timeout=15,
                                 headers={"Idempotency-Key": body["correlation_id"]})
            except requests.RequestException as exc:
                last = type(exc).__name__
            else:
                if r.status_code in (200, 201):
                    with self.lock:
                        self.figures.accepted[body["correlation_id"]] = kind
                    return
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code < 500 and r.status_code != 429:  # 429, 503: later, same key
                    break
            time.sleep(0.3)
        self.figures.refused.append(f"{body['correlation_id']}: {last}")
        self.log(f"kickoff {body['correlation_id']} not accepted: {last}")

    def in_flight(self) -> int | None:
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.connect() as conn:
            found: int = conn.execute(sa.text(
                "SELECT count(*) FROM workflows WHERE status IN ('running', 'compensating')")).scalar_one()
            return found
        return None

    def mark_exposed(self) -> None:
        """Remember the workflows in flight when a fault strikes: each must still end well."""
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.connect() as conn:
            found = conn.execute(sa.text(
                "SELECT correlation_id FROM workflows WHERE status IN ('running', 'compensating')"))
            self.figures.exposed.update(found.scalars())

    def drive(self) -> None:
        """Kick every workflow through the API, at most `window` in flight, and strike meanwhile."""
        n, cfg = self.config.workflows, self.config
        kinds = self.rng.choices(list(MIX), weights=list(MIX.values()), k=n)
        faults = self.schedule()
        next_i, started = 0, 0
        gate = threading.Lock()
        flight = {"n": 0, "at": 0.0}

        def room() -> bool:
            if time.monotonic() - flight["at"] > 0.5:
                counted = self.in_flight()
                if counted is not None:
                    flight["n"], flight["at"] = counted, time.monotonic()
            return flight["n"] < cfg.window

        def client() -> None:
            nonlocal next_i, started
            with requests.Session() as session:
                session.headers["Authorization"] = f"Bearer {TOKEN}"
                while True:
                    with gate:
                        while not room():
                            time.sleep(0.1)
                        if next_i >= n:
                            return
                        i, next_i = next_i, next_i + 1
                        flight["n"] += 1
                    self.kick(session, i, kinds[i])
                    with gate:
                        started += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(cfg.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while faults:
            at, action = faults[0]
            if started >= at:
                faults.pop(0)
                action()
            elif not any(t.is_alive() for t in threads):
                faults.pop(0)
                action()  # the load ended first: strike anyway
            else:
                time.sleep(0.1)
        for t in threads:
            t.join()
        self.figures.load_seconds = time.monotonic() - t0
        self.log(f"load done: {len(self.figures.accepted)} accepted in {self.figures.load_seconds:.0f} s")

    def schedule(self) -> list[tuple[int, Any]]:
        """The faults, each at a share of the workflows started: kills spread evenly, Redis's
        restart at a third, PostgreSQL's at two thirds, the bad entries in between."""
        n, cfg = self.config.workflows, self.config
        faults: list[tuple[int, Any]] = []
        for k in range(cfg.kills):
            faults.append((int(n * (k + 0.5) / (cfg.kills + 1)), self.kill_random))
        faults.append((n // 3, self.restart_redis))
        faults.append((2 * n // 3, self.restart_postgres))
        for g in range(cfg.garbage):
            faults.append((int(n * (g + 0.7) / (cfg.garbage + 1)), self.add_garbage))
        return sorted(faults, key=lambda f: f[0])

    def kill_random(self) -> None:
        """A random victim among the processes killed least so far: 30 kills strike each line twice."""
        with self.lock:
            alive = sorted(n for n, p in self.procs.running.items()
                           if p.poll() is None and n not in self.killed)
        fewest = min(self.figures.kills[n] for n in alive)
        self.kill(self.rng.choice([n for n in alive if self.figures.kills[n] == fewest]))

    def add_garbage(self) -> None:
        """A deliberately malformed entry on a stream participants and the tracker read."""
        token = uuid.uuid4().hex[:12]
        choices: list[tuple[str, dict[str, Any]]] = [
            (self.keys.command_stream("payment"), {"type": "payment.refund", "data": "{not json"}),
            (self.keys.event_stream("order.placed"), {"id": "x", "kind": "event", "type": "order.placed"}),
            (self.keys.event_stream("payment.charged"), {"blob": b"\xff\xfe\x00garbage"}),
            (self.keys.command_stream("inventory"), {"kind": "command", "type": "inventory.release",
                                                     "version": "1", "data": "[]"}),
        ]
        stream, fields = self.rng.choice(choices)
        for _ in range(60):
            with contextlib.suppress(redis.RedisError):
                self.redis.xadd(stream, {reconcile.GARBAGE_FIELD: token, **fields})  # type: ignore[dict-item]
                self.figures.garbage[token] = stream
                return
            time.sleep(0.5)

    # -- the end -------------------------------------------------------------------------------

    def converge(self) -> reconcile.Reconciliation:
        """Wait until nothing is in flight, pending or unsent; then the whole reconciliation."""
        t0 = time.monotonic()
        deadline = t0 + self.config.converge_timeout
        result = self.check()
        while not result.converged and time.monotonic() < deadline:
            time.sleep(1.0)
            with contextlib.suppress(sa.exc.SQLAlchemyError, redis.RedisError):
                result = self.check()
        self.figures.converge_seconds = time.monotonic() - t0
        return result

    def check(self) -> reconcile.Reconciliation:
        return reconcile.reconcile(self.engine, self.redis, self.keys, self.figures.accepted,
                                   self.figures.garbage, datetime.now(UTC))

    def run(self) -> reconcile.Reconciliation:
        t0 = time.monotonic()
        try:
            self.start_servers()
            self.start_processes()
            self.log(f"{len(self.procs.running)} processes up after {time.monotonic() - t0:.0f} s")
            self.drive()
            result = self.converge()
            self.figures.resent = self.count_logged("published outbox rows left unsent", "messages")
            if result.violations or not result.converged:
                self.config.keep = True  # the logs are the evidence
        finally:
            self.stop()
        self.figures.total_seconds = time.monotonic() - t0
        return result

    def stop(self) -> None:
        self.stopping.set()
        if hasattr(self, "supervisor"):
            self.supervisor.join()
        if hasattr(self, "procs"):
            self.procs.stop_all(timeout=20)
        with contextlib.suppress(Exception):
            self.redis.close()
        if hasattr(self, "engine"):
            self.engine.dispose()
        self.servers.close(keep=self.config.keep)


def _frozen(root: int) -> set[int]:
    """`root` and everything it forked, each stopped (SIGSTOP) before the next look, so that none
    forks a process the kill would miss: a gunicorn master that sees its worker killed first boots
    another, which inherits the port and holds it after the master is gone."""
    frozen: set[int] = set()
    while new := descendants(root) - frozen:
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= new
    return frozen


def _wait_dead(pids: set[int], timeout: float = 10.0) -> None:
    """Until every one of `pids` is gone or a zombie (whose sockets are closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_state(pid) not in ("X", "Z") for pid in pids):
        time.sleep(0.02)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "X"


def report(figures: Figures, result: reconcile.Reconciliation) -> str:
    accepted = set(figures.accepted)
    recovered = len({c for c in figures.exposed & accepted
                     if result.rows.get(c, {}).get("status") in reconcile.TERMINAL})
    duplicated = len(result.duplicated)
    lines = [
        f"workflows accepted          {len(accepted)} (not accepted: {len(figures.refused)})",
        "outcomes                    " + ", ".join(f"{s} {n}" for s, n in sorted(result.statuses.items())),
        f"kills (kill -9)             {sum(figures.kills.values())}: "
        + ", ".join(f"{n} {c}" for n, c in sorted(figures.kills.items())),
        f"restarts                    {figures.restarts} processes, {figures.redis_restarts} Redis, "
        f"{figures.pg_restarts} PostgreSQL",
        f"exits nobody caused         {len(figures.crashes)}",
        f"recovered                   {recovered} of {len(figures.exposed & accepted)} workflows in flight "
        "when a fault struck",
        f"left unsent, then re-sent   {figures.resent} outbox rows (a kill or an outage between "
        "commit and XADD)",
        f"lost                        {len(result.lost)}",
        f"duplicated effects          {duplicated}",
        f"still in flight             {len(result.in_flight)}",
        f"dead letters                {result.dead_letters} (bad entries added: {len(figures.garbage)})",
        f"pending entries, unsent     {result.pending_entries}, {result.unsent_outbox}",
        f"load                        {figures.load_seconds:.0f} s",
        f"time to converge            {figures.converge_seconds:.1f} s",
        f"total                       {figures.total_seconds:.0f} s",
        "by kind: " + "; ".join(f"{k} {o}: {n}" for (k, o), n in sorted(result.outcomes.items())),
    ]
    if result.violations:
        lines.append(f"VIOLATIONS ({len(result.violations)}):")
        lines += [f"  {v}" for v in result.violations[:50]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    parser.add_argument("--workflows", type=int, default=d.workflows)
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--window", type=int, default=d.window, help="workflows in flight at most")
    parser.add_argument("--clients", type=int, default=d.clients, help="concurrent API clients")
    parser.add_argument("--garbage", type=int, default=d.garbage, help="malformed entries to add")
    parser.add_argument("--converge-timeout", type=float, default=d.converge_timeout)
    parser.add_argument("--visibility-timeout", type=float, default=d.visibility_timeout)
    parser.add_argument("--pg-fast", action="store_true",
                        help="PostgreSQL with fsync off (commits still survive its restart)")
    parser.add_argument("--redis-kill", action="store_true",
                        help="kill -9 Redis before its restart (AOF everysec: the last second may be lost)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directory and logs")
    args = parser.parse_args(argv)
    config = Config(workflows=args.workflows, kills=args.kills, seed=args.seed, window=args.window,
                    clients=args.clients, garbage=args.garbage, converge_timeout=args.converge_timeout,
                    visibility_timeout=args.visibility_timeout, durable=not args.pg_fast,
                    redis_kill=args.redis_kill, keep=args.keep)
    chaos = Chaos(config)
    result = chaos.run()
    print(report(chaos.figures, result))
    return 1 if result.violations or not result.converged else 0


if __name__ == "__main__":
    sys.exit(main())
