"""One participant process with the default options (block 2 s, linger 20 ms), fed `order.placed`
at a steady rate from this process: its batches, its transactions, and its CPU and PostgreSQL's
per message. What `bench.inproc` cannot show: the loop's waits (linger, the blocking read, the
marking of published rows) at a given rate, in a process of its own.

    python -m bench.participant_rate --rate 80 --seconds 5           # payment
    python -m bench.participant_rate --rate 40 --participant inventory
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import threading
import time
import uuid
from typing import Any

import psutil
import redis
import structlog

from bench.servers import make_servers
from bench.throughput import order
from contracts.envelope import new_event
from contracts.streams import Keys


def _serve(name: str, url: str, redis_url: str, ready: Any, done: Any, counts: Any) -> None:
    """The participant's runtime until `done`; its batches, messages and lone markings in `counts`."""
    from participants.reference import build
    from participants.runtime.db import make_engine
    from participants.runtime.loop import Runtime

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    class Counted(Runtime):
        def _process(self, entries: Any) -> int:
            if entries:
                counts["batches"] += 1
                counts["messages"] += len(entries)
            return super()._process(entries)

        def _mark_sent(self) -> None:
            counts["marks alone"] += bool(self._unmarked)
            super()._mark_sent()

    rt = Counted(build(name), make_engine(url), redis.Redis.from_url(redis_url), Keys("rate"))
    rt.setup()
    ready.set()
    stop = threading.Event()
    threading.Thread(target=_set_when, args=(done, stop), daemon=True).start()
    rt.run(stop)


def _set_when(done: Any, stop: threading.Event) -> None:
    done.wait()
    stop.set()


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    root, total = psutil.Process(pid), 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=80.0, help="messages per second (default 80)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--participant", choices=("inventory", "payment"), default="payment")
    args = ap.parse_args(argv)
    answer = {"inventory": "inventory.reserved", "payment": "payment.charged"}[args.participant]
    servers = make_servers()
    try:
        redis_url = servers.start_redis()
        servers.start_postgres(stat_statements=False)
        url = servers.create_db("participant")
        with mp.Manager() as manager:
            counts = manager.dict({"batches": 0, "messages": 0, "marks alone": 0})
            ready, done = mp.Event(), mp.Event()
            child = mp.Process(target=_serve, args=(args.participant, url, redis_url, ready, done, counts))
            child.start()
            ready.wait(60)
            time.sleep(1.0)  # its start-up's CPU is not counted
            client, keys = redis.Redis.from_url(redis_url), Keys("rate")
            pg0, own0 = _cpu(servers.postgres_pid()), _cpu(child.pid)
            n, t0 = int(args.rate * args.seconds), time.monotonic()
            for i in range(n):
                cid = f"b-{uuid.uuid4().hex[:20]}"
                placed = new_event("order.placed", order(cid), correlation_id=cid, source="bench")
                client.xadd(keys.event_stream("order.placed"), placed.to_fields())  # type: ignore[arg-type]
                time.sleep(max(0.0, t0 + (i + 1) / args.rate - time.monotonic()))
            while client.xlen(keys.event_stream(answer)) < n:
                time.sleep(0.02)
            time.sleep(0.3)
            own, pg = _cpu(child.pid) - own0, _cpu(servers.postgres_pid()) - pg0
            done.set()
            child.join(10)
            got = dict(counts)
        print(f"{args.participant} at {args.rate:.0f}/s, {n} messages: {got['batches']} batches, "
              f"{got['marks alone']} markings alone, "
              f"{(got['batches'] + got['marks alone']) / n:.2f} transactions per message; CPU ms per "
              f"message: participant {own * 1000 / n:.2f}, PostgreSQL {pg * 1000 / n:.2f}")
        return 0
    finally:
        servers.close()


if __name__ == "__main__":
    sys.exit(main())
