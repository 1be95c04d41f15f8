"""Load generation and completion watching, the same for every scenario.

A scenario gives a `kick(cid)` (start one workflow under a correlation ID the harness chose) and
the Redis streams on which a finished workflow is announced with its `correlation_id` field. The
watcher reads those streams with plain XREAD (no consumer group: it takes nothing from anyone) and
stamps each completion with the time it saw it.

- Closed loop: at most `window` workflows in flight; kicker threads start a new one as soon as a
  slot frees. This measures throughput.
- Open loop: kickoffs on a fixed schedule (`rate` per second) whatever happens; a workflow's latency
  is measured from its scheduled time, so a stalled client or server cannot hide its own queueing
  (no coordinated omission). This measures latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

Kick = Callable[[str], None]


class Watcher(threading.Thread):
    def __init__(self, url: str, done_streams: list[str], fail_streams: list[str]) -> None:
        super().__init__(daemon=True, name="watcher")
        self.url = url
        self.done_streams = set(done_streams)
        self.streams = {s: "0" for s in [*done_streams, *fail_streams]}
        self.kicked: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.on_finish: Callable[[], None] | None = None
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            while not self.halt.is_set():
                reply: Any = client.xread(self.streams, count=2000, block=100)  # type: ignore[arg-type]
                now = time.perf_counter()
                for stream_b, entries in reply or []:
                    stream = stream_b.decode()
                    self.streams[stream] = entries[-1][0]
                    for _, fields in entries:
                        cid = fields.get(b"correlation_id", b"").decode()
                        if cid in self.done or cid in self.failed:
                            continue
                        if stream in self.done_streams:
                            self.done[cid] = now
                        else:
                            self.failed[cid] = stream
                        if self.on_finish and cid in self.kicked:
                            self.on_finish()
        except BaseException as exc:  # surfaced by the harness
            self.error = exc
        finally:
            client.close()

    def finished(self, cid: str) -> bool:
        return cid in self.done or cid in self.failed

    def wait_for(self, cids: list[str], timeout: float) -> list[str]:
        """Wait until every cid finished or the timeout passed; the ones still open."""
        deadline = time.monotonic() + timeout
        while True:
            open_ = [c for c in cids if not self.finished(c)]
            if not open_ or time.monotonic() > deadline:
                return open_
            time.sleep(0.05)


@dataclass
class Phase:
    """What one closed- or open-loop run kicked, and when its measured window was."""

    mode: str
    t0: float = 0.0
    t1: float = 0.0
    kicked: list[str] = field(default_factory=list)  # accepted kickoffs, in order
    scheduled: dict[str, float] = field(default_factory=dict)
    kick_ms: list[tuple[float, float]] = field(default_factory=list)  # (sent at, duration ms)
    rejected: int = 0
    not_sent: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_kick(self, cid: str, sent: float, ok: bool, error: str = "") -> None:
        with self.lock:
            if ok:
                self.kicked.append(cid)
                self.kick_ms.append((sent, (time.perf_counter() - sent) * 1000))
            else:
                self.rejected += 1
                if len(self.errors) < 5:
                    self.errors.append(error)


def _kick_one(kick: Kick, phase: Phase, cid: str) -> bool:
    sent = time.perf_counter()
    try:
        kick(cid)
    except Exception as exc:
        phase.record_kick(cid, sent, False, repr(exc)[:300])
        return False
    phase.record_kick(cid, sent, True)
    return True


def closed_loop(kick: Kick, watcher: Watcher, new_cid: Callable[[], str], *, window: int, threads: int,
                warmup: float, duration: float, on_window: Callable[[str], None],
                workflows: int = 0) -> Phase:
    """Keep `window` workflows in flight for warmup + duration seconds, or until `workflows` have
    finished in the measured part when it is given (a soak); on_window("start"/"end") brackets
    the measured part (CPU sampling)."""
    phase = Phase("closed")
    slots = threading.Semaphore(window)
    watcher.on_finish = slots.release
    stop = threading.Event()

    def kicker() -> None:
        while not stop.is_set():
            if not slots.acquire(timeout=0.2):
                continue
            cid = new_cid()
            watcher.kicked[cid] = time.perf_counter()
            if not _kick_one(kick, phase, cid):
                slots.release()
                time.sleep(0.01)

    workers = [threading.Thread(target=kicker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(warmup)
    phase.t0 = time.perf_counter()
    on_window("start")
    done_at_start = len(watcher.done)
    deadline = phase.t0 + duration
    while time.perf_counter() < deadline:
        if workflows and len(watcher.done) - done_at_start >= workflows:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.perf_counter())))
    phase.t1 = time.perf_counter()
    on_window("end")
    stop.set()
    for w in workers:
        w.join(timeout=30)
    watcher.on_finish = None
    return phase


def open_loop(kick: Kick, watcher: Watcher, new_cid: Callable[[], str], *, rate: float, threads: int,
              warmup: float, duration: float, on_window: Callable[[str], None]) -> Phase:
    phase = Phase("open")
    pool = ThreadPoolExecutor(threads, thread_name_prefix="kick")
    start = time.perf_counter() + 0.05
    phase.t0, phase.t1 = start + warmup, start + warmup + duration
    started_window = False
    i = 0
    while True:
        at = start + i / rate
        if at >= phase.t1:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not started_window and at >= phase.t0:
            on_window("start")
            started_window = True
        cid = new_cid()
        watcher.kicked[cid] = at  # latency counts from the schedule, not from when we got to it
        phase.scheduled[cid] = at
        pool.submit(_kick_one, kick, phase, cid)
        i += 1
    delay = phase.t1 - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    on_window("end")
    # A system that cannot keep up leaves kickoffs queued in the client: those not sent by the end of
    # the window are cancelled and counted, not sent late.
    pool.shutdown(wait=True, cancel_futures=True)
    phase.not_sent = len(phase.scheduled) - len(phase.kicked) - phase.rejected
    return phase


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
