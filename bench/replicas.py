"""Several replicas of every process against one PostgreSQL and one Redis, under `kill -9`.

    python -m bench.replicas                       # 600 workflows, 16 kills
    python -m bench.replicas --workflows 120 --kills 8

The chaos run's machinery (bench/chaos.py: load through the API, a supervisor that starts again
whatever exits, the reconciliation against the participants' ledgers), with 3 trackers, 2 webs
(two gunicorns on two ports, kickoffs spread over both), 2 clocks, 2 relays, 2 workers, 2 alerters
and 2 of each participant, each replica with a consumer name of its own (BATON_CONSUMER, stable
across its restarts). Faults are `kill -9`s only, among them the active clock's: the other clock
must take the lease within its TTL; and every shipping replica is stalled (SIGSTOP) for a few
seconds, so that the orders with a one-second SLA placed meanwhile breach it. Beyond the
reconciliation, every action the controller takes is checked to have been taken once: one outbox
row per command attempt of a workflow and one id per command (two sweeps or trackers deciding the
same thing would make two), one `workflow.completed` per workflow, no intervention audited twice.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
import sqlalchemy as sa

from bench.chaos import TOKEN, Chaos, Config
from bench.reconcile import PARTICIPANTS, Reconciliation
from bench.servers import free_port
from controller.cli.procfile import Processes

REPLICAS = {"web": 2, "tracker": 3, "relay": 2, "clock": 2, "worker": 2, "alerts": 2,
            **dict.fromkeys(PARTICIPANTS, 2)}
BREACHES = 3  # orders with a one-second SLA kicked off while shipping is stalled, beyond the load
CLOCK_TTL = 3.0  # the lease's TTL at the run's sweep interval (clock.lease_ttl(0.5))

# What the controller decided, each of which must have been decided once: a command keeps its id
# across its attempts, and each attempt is one outbox row; a workflow completes once.
TWICE_SQL = """
SELECT fields->>'correlation_id', fields->>'type', 'attempt ' || (fields->>'attempt'), count(*)
FROM public.baton_outbox WHERE fields->>'kind' = 'command' GROUP BY 1, 2, 3 HAVING count(*) > 1
UNION ALL
SELECT fields->>'correlation_id', fields->>'type', 'distinct ids', count(DISTINCT message_id)
FROM public.baton_outbox WHERE fields->>'kind' = 'command' GROUP BY 1, 2
HAVING count(DISTINCT message_id) > 1
UNION ALL
SELECT fields->>'correlation_id', fields->>'type', 'rows', count(*)
FROM public.baton_outbox WHERE fields->>'type' = 'workflow.completed' GROUP BY 1, 2 HAVING count(*) > 1
"""
AUDITED_TWICE_SQL = """
SELECT correlation_id, action, count(*) FROM workflow_audit
GROUP BY correlation_id, action HAVING count(*) > 1
"""


@dataclass
class ReplicaProcesses(Processes):
    """Each replica with its own variables (its PORT, its consumer name), after a restart too."""

    per_name: dict[str, dict[str, str]] = field(default_factory=dict)

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> Any:
        return super().start(name, {**self.per_name.get(name, {}), **(extra_env or {})})


class Replicas(Chaos):
    def __init__(self, config: Config, replicas: dict[str, int] | None = None) -> None:
        super().__init__(config)
        self.replicas = replicas or REPLICAS
        self.ports = [self.port] + [free_port() for _ in range(self.replicas["web"] - 1)]
        self.bases = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.takeovers: list[float] = []  # seconds for the clock's lease to move after a kill
        self.twice: list[str] = []

    def processes(self, env: dict[str, str]) -> Processes:
        procs = ReplicaProcesses(env, self.logs)
        lines = {"release": procs.lines["release"]}
        for line, count in self.replicas.items():
            for n in range(1, count + 1):
                name = line if n == 1 else f"{line}.{n}"
                lines[name] = procs.lines[line]
                procs.per_name[name] = {"BATON_CONSUMER": name.replace(".", "-")}
                if line == "web":
                    procs.per_name[name]["PORT"] = str(self.ports[n - 1])
        procs.lines = lines
        return procs

    def base_for(self, i: int, attempt: int) -> str:
        """Kickoffs alternate between the webs; a retry goes to the other one."""
        return self.bases[(i + attempt) % len(self.bases)]

    def wait_ready(self, timeout: float) -> None:
        for base in self.bases:
            self.base = base
            super().wait_ready(timeout)
        self.base = self.bases[0]

    def schedule(self) -> list[tuple[int, Any]]:
        """Kills spread over the load; the active clock's at the middle."""
        n, kills = self.config.workflows, self.config.kills
        faults: list[tuple[int, Any]] = [(int(n * (k + 0.5) / (kills + 1)), self.kill_random)
                                         for k in range(kills - 1)]
        faults.append((n // 2, self.kill_active_clock))
        faults.append((n // 4, self.pause_shipping))
        return sorted(faults, key=lambda f: f[0])

    def kill_random(self) -> None:
        """A copy of a line struck least so far (the clock aside: its active copy has a kill of
        its own), of its copies the one struck least, at random among equals: with one kill per
        line, every line but the clock's loses a copy."""
        with self.lock:
            alive = sorted(n for n, p in self.procs.running.items()
                           if p.poll() is None and n not in self.killed and line_of(n) != "clock")
        struck = Counter(line_of(n) for n in self.figures.kills.elements())
        fewest = min(struck[line_of(n)] for n in alive)
        lines = [n for n in alive if struck[line_of(n)] == fewest]
        least = min(self.figures.kills[n] for n in lines)
        self.kill(self.rng.choice([n for n in lines if self.figures.kills[n] == least]))

    def pause_shipping(self, seconds: float = 4.0) -> None:
        """SIGSTOP every shipping replica for a while (a stall, not a crash: no one restarts
        them): the orders with a one-second SLA placed meanwhile breach it and are compensated,
        and the shipments scheduled late, once they go on, are cancelled."""
        self.mark_exposed()
        with self.lock:
            pids = [p.pid for n, p in self.procs.running.items() if line_of(n) == "shipping"]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.log(f"shipping paused ({len(pids)} replicas) for {seconds:.0f} s")
        began = time.monotonic()
        with requests.Session() as session:  # a few breaches whatever the load's mix brings now
            session.headers["Authorization"] = f"Bearer {TOKEN}"
            for k in range(BREACHES):
                self.kick(session, self.config.workflows + k, "sla")
        time.sleep(max(0.0, seconds - (time.monotonic() - began)))
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    def kill_active_clock(self) -> None:
        """`kill -9` the clock that holds the lease; time until the other one holds it."""
        key = self.keys.lease("clock")
        token: Any = self.redis.get(key)
        if token is None:
            self.log("no clock held the lease")
            return
        holder_pid = int(token.decode().split("-")[-2])
        name = next(n for n, p in self.procs.running.items() if p.pid == holder_pid)
        began = time.monotonic()
        self.kill(name)
        while time.monotonic() - began < 30:
            now = self.redis.get(key)
            if now is not None and now != token:
                self.takeovers.append(time.monotonic() - began)
                self.log(f"the clock's lease moved in {self.takeovers[-1]:.1f} s")
                return
            time.sleep(0.05)
        self.takeovers.append(float("inf"))

    def converge(self) -> Reconciliation:
        result = super().converge()
        self.measure()
        return result

    def measure(self) -> None:
        """What the replicas cost, once the run is quiet: RSS per line (the mean of its replicas,
        gunicorn's workers and RQ's work horse included), PostgreSQL and Redis connections."""
        from controller.cli.procfile import descendants

        by_line: dict[str, list[tuple[float, int, int]]] = {}
        redis_port = int(self.servers.redis_url.rsplit(":", 1)[1].split("/")[0])
        for name, proc in self.procs.running.items():
            family = descendants(proc.pid)
            cost = (sum(rss_mb(pid) for pid in family), connections(family, self.servers.pg_port),
                    connections(family, redis_port))
            by_line.setdefault(name.split(".")[0], []).append(cost)
        self.rss = {line: sum(c[0] for c in v) / len(v) for line, v in by_line.items()}
        self.per_copy = {line: tuple(sum(c[i] for c in v) / len(v) for i in range(3))
                         for line, v in by_line.items()}
        with self.engine.connect() as conn:
            self.pg_connections = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")).scalar_one()
        clients: Any = self.redis.client_list()
        self.redis_connections = len(clients)

    def check(self) -> Reconciliation:
        result = super().check()
        with self.engine.connect() as conn:
            twice = [f"{r[0]}: {r[1]} {r[2]}: {r[3]}" for r in conn.execute(sa.text(TWICE_SQL))]
            audited = conn.execute(sa.text(AUDITED_TWICE_SQL))
            twice += [f"{r[0]}: {r[1]} audited {r[2]} times" for r in audited]
        for line in twice:
            result.add("duplicated", "", line)
        self.twice = twice
        return result


def line_of(name: str) -> str:
    """The Procfile line of a copy's name (`tracker.2` -> `tracker`)."""
    return name.split(".")[0]


def connections(pids: set[int], port: int) -> int:
    """TCP connections of these processes to a local server's port."""
    import psutil

    found = 0
    for pid in pids:
        try:
            found += sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
                         if c.raddr and c.raddr.port == port)
        except psutil.Error:
            continue
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (from /proc)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # gone meanwhile
        pass
    return 0.0


def per_copy_table(per_copy: dict[str, tuple[float, ...]]) -> str:
    """RSS (MB, its forks included), PostgreSQL and Redis connections, per copy of each line."""
    lines = ["line            RSS MB   PostgreSQL   Redis"]
    lines += [f"{k:14} {v[0]:7.0f}   {v[1]:10.1f}   {v[2]:5.1f}" for k, v in sorted(per_copy.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.chaos import report

    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=600)
    parser.add_argument("--kills", type=int, default=16)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    run = Replicas(Config(workflows=args.workflows, kills=args.kills, seed=args.seed, garbage=0,
                          converge_timeout=120, durable=False, visibility_timeout=2.0,
                          keep=args.keep))
    result = run.run()
    print(report(run.figures, result))
    print(f"clock lease moved in        {', '.join(f'{t:.1f} s' for t in run.takeovers)}")
    if hasattr(run, "rss"):
        print(f"processes                   {len(run.procs.lines) - 1}; PostgreSQL connections "
              f"{run.pg_connections}, Redis connections {run.redis_connections}")
        print(per_copy_table(run.per_copy))
    return 1 if result.violations or not result.converged else 0


if __name__ == "__main__":
    sys.exit(main())
