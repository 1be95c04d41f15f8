"""Overload (issue 7): a bounded flood of kickoffs on loopback against the whole system.

    python -m bench.flood                                   # 20,000 kickoffs in 120 s
    python -m bench.flood --kickoffs 3000 --seconds 30 --max-backlog 500

It starts what the chaos run starts (bench/chaos.py: private PostgreSQL and Redis with AOF, every
process of `order_fulfillment`, two trackers and two of each participant), then fires kickoffs at
a fixed rate from many clients, each answered once: no retry, so every answer counts. Meanwhile it
samples Redis memory, the entries held in streams, the consumers' backlog (what admission control
reads) and the processes' memory. Afterwards it waits for every accepted workflow to converge and
runs the chaos run's reconciliation against the participants' ledgers.

Exit status 0 only if every answer was 201, 200, 429 or 503, and nothing accepted was lost or done
twice.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis
import requests

from bench.chaos import MIX, TOKEN, Chaos, Config
from controller.api.admission import measure

ALLOWED = {200, 201, 429, 503}


@dataclass
class Peaks:
    redis_bytes: int = 0
    stream_entries: int = 0
    backlog: int = 0
    rss_bytes: dict[str, int] = field(default_factory=dict)  # process -> its largest RSS
    samples: int = 0


def stream_entries(client: redis.Redis, chaos: Chaos) -> int:
    total = 0
    for pattern in (chaos.keys.event_pattern(), chaos.keys.command_pattern()):
        for key in client.scan_iter(match=pattern, _type="STREAM"):
            total += int(client.xlen(key))
    return total


def sample(chaos: Chaos, peaks: Peaks, stop: threading.Event) -> None:
    client = redis.Redis.from_url(chaos.servers.redis_url, socket_timeout=5)
    while not stop.wait(1.0):
        with contextlib.suppress(redis.RedisError):
            info: Any = client.info("memory")
            peaks.redis_bytes = max(peaks.redis_bytes, int(info["used_memory"]))
            peaks.stream_entries = max(peaks.stream_entries, stream_entries(client, chaos))
            peaks.backlog = max(peaks.backlog, measure(client, chaos.keys))
        for name, proc in list(chaos.procs.running.items()):
            with contextlib.suppress(psutil.Error):
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree)
                peaks.rss_bytes[name] = max(peaks.rss_bytes.get(name, 0), rss)
        peaks.samples += 1
    client.close()


def flood(chaos: Chaos, kickoffs: int, seconds: float, clients: int) -> Counter[str]:
    """Kickoff i is sent at t0 + i * seconds / kickoffs (or as soon after as a client is free)."""
    answers: Counter[str] = Counter()
    kinds = random.Random(chaos.config.seed).choices(list(MIX), weights=list(MIX.values()), k=kickoffs)
    lock, t0 = threading.Lock(), time.monotonic()
    position = iter(range(kickoffs))

    def client() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                return
            time.sleep(max(0.0, t0 + i * seconds / kickoffs - time.monotonic()))
            body = chaos.order(i, kinds[i])
            try:
                r = session.post(f"{chaos.base}/v1/workflows", json=body, timeout=30,
                                 headers={"Idempotency-Key": body["correlation_id"]})
                answer = str(r.status_code)
            except requests.RequestException as exc:
                answer = type(exc).__name__
            with lock:
                answers[answer] += 1
                if answer in ("200", "201"):
                    chaos.figures.accepted[body["correlation_id"]] = kinds[i]

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    chaos.figures.load_seconds = time.monotonic() - t0
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kickoffs", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=120.0, help="the flood's planned length")
    parser.add_argument("--clients", type=int, default=32, help="concurrent API clients")
    parser.add_argument("--max-backlog", type=int, default=2000, help="BATON_MAX_BACKLOG")
    parser.add_argument("--converge-timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    config = Config(workflows=args.kickoffs, kills=0, garbage=0, seed=args.seed,
                    converge_timeout=args.converge_timeout,
                    env={"BATON_MAX_BACKLOG": str(args.max_backlog)})
    chaos, peaks, stop = Chaos(config), Peaks(), threading.Event()
    left = -1  # stream entries once converged (-1: Redis did not answer)
    try:
        chaos.start_servers()
        chaos.start_processes()
        sampler = threading.Thread(target=sample, args=(chaos, peaks, stop), daemon=True)
        sampler.start()
        answers = flood(chaos, args.kickoffs, args.seconds, args.clients)
        result = chaos.converge()
        with contextlib.suppress(redis.RedisError):
            left = stream_entries(chaos.redis, chaos)
        stop.set()
        sampler.join()
    finally:
        stop.set()
        chaos.stop()
    bad = {a: n for a, n in answers.items() if not a.isdigit() or int(a) not in ALLOWED}
    mib = 1024 * 1024
    print("\n".join([
        f"kickoffs                {args.kickoffs} planned over {args.seconds:.0f} s, sent in "
        f"{chaos.figures.load_seconds:.0f} s by {args.clients} clients "
        f"({args.kickoffs / chaos.figures.load_seconds:.0f}/s)",
        "answers                 " + ", ".join(f"{a}: {n}" for a, n in sorted(answers.items())),
        f"accepted                {len(chaos.figures.accepted)}",
        f"BATON_MAX_BACKLOG       {args.max_backlog}; largest backlog seen {peaks.backlog}",
        f"Redis used_memory       peak {peaks.redis_bytes / mib:.1f} MiB",
        f"stream entries          peak {peaks.stream_entries}, at the end {left}",
        "peak RSS (MiB)          " + ", ".join(
            f"{n} {b / mib:.0f}" for n, b in sorted(peaks.rss_bytes.items())),
        "outcomes                " + ", ".join(f"{s} {n}" for s, n in sorted(result.statuses.items())),
        f"lost                    {len(result.lost)}",
        f"duplicated effects      {len(result.duplicated)}",
        f"time to converge        {chaos.figures.converge_seconds:.0f} s",
        f"answers outside {sorted(ALLOWED)}: {bad or 'none'}",
    ]))
    for v in result.violations[:50]:
        print(f"VIOLATION {v}")
    return 1 if bad or result.violations or not result.converged else 0


if __name__ == "__main__":
    sys.exit(main())
