"""Does any Python object accumulate per workflow? The tracker and the four participants in one
process (as `bench.inproc` runs them), `tracemalloc` snapshots after a warm-up and after each
round, and the allocation sites that grew most.

    python -m bench.tracemem                       # 1,000 warm-up workflows, then 2 rounds of 1,500
    python -m bench.tracemem --warm 2000 --round 3000 --rounds 3 --frames 8

Traced memory that stops growing after the warm-up (the statement caches fill) means what a long
soak shows in RSS is the allocator's high-water mark, not a leak. One frame per site keeps the
overhead to about 2x; `--frames 8` says who called, and is far slower.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import sys
import tracemalloc
import uuid

import structlog

from bench.inproc import PARTICIPANTS, InProcess
from bench.servers import make_servers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", type=int, default=1000, help="workflows before the first snapshot")
    ap.add_argument("--round", type=int, default=1500, help="workflows per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    servers = make_servers()
    try:
        redis_url = servers.start_redis()
        servers.start_postgres(stat_statements=False)
        system = InProcess.start(redis_url, servers.create_db("baton"),
                                 {p: servers.create_db(f"p_{p}") for p in PARTICIPANTS})

        def run(n: int) -> None:
            for begun in range(0, n, 100):
                for _ in range(min(100, n - begun)):
                    system.kick(f"m-{uuid.uuid4().hex[:20]}")
                for _ in range(6):  # enough polls for each stage to take the batch in turn
                    for rt in system.runtimes.values():
                        rt.poll()

        run(args.warm)
        tracemalloc.start(args.frames)
        gc.collect()
        first = last = tracemalloc.take_snapshot()
        print(f"after {args.warm:,} warm-up workflows: the first snapshot", flush=True)
        for r in range(1, args.rounds + 1):
            run(args.round)
            gc.collect()
            last = tracemalloc.take_snapshot()
            grown = sum(s.size_diff for s in last.compare_to(first, "lineno"))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"round {r} (+{r * args.round:,} workflows): traced memory {grown / 1e6:+.2f} MB "
                  f"since the first snapshot; peak RSS {rss:.1f} MB", flush=True)
        print(f"\nthe {args.top} sites that grew most since the first snapshot:")
        for stat in last.compare_to(first, "traceback" if args.frames > 1 else "lineno")[:args.top]:
            print(f"{stat.size_diff / 1024:+8.1f} KiB {stat.count_diff:+6d} blocks  {stat.traceback[-1]}")
            for frame in reversed(stat.traceback[:-1]):  # its callers, with --frames above 1
                print(f"{'':29}called from {frame}")
        return 0
    finally:
        servers.close()


if __name__ == "__main__":
    sys.exit(main())
