"""Load generation and completion watching, the same for every scenario, on one asyncio loop.

A scenario gives an async `kick(cids)` (start these workflows under correlation IDs the harness
chose: one for a `POST /v1/workflows`, a hundred for a batch) and the Redis streams on which a
finished workflow is announced with its `correlation_id` field. The watcher reads those streams
with plain XREAD (no consumer group: it takes nothing from anyone) and stamps each completion with
the time it saw it.

Everything runs on one event loop in a thread of its own (`Loop`): the kickers, the HTTP
connections and the watcher share no lock and no GIL convoy of threads blocked on sockets, so the
client costs tens of microseconds per workflow and is not what limits a scenario (its CPU is
measured and shown apart).

- Closed loop: at most `window` workflows in flight; `concurrency` kickers start new ones as soon
  as slots free. This measures throughput.
- Open loop: kickoffs on a fixed schedule (`rate` per second) whatever happens; a workflow's latency
  is measured from its scheduled time, so a stalled client or server cannot hide its own queueing
  (no coordinated omission). A kickoff still waiting for a free connection when the window closes
  is "not sent": the rate was not sustained. This measures latency.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aredis

T = TypeVar("T")


@dataclass
class Sent:
    """What one kickoff request did: an error text per cid ("" when accepted), and how long the
    request itself took (ms, from its first byte written to its answer read), if the kick knows."""

    errors: list[str]
    ms: float | None = None


Kick = Callable[[list[str], float], Awaitable[Sent]]  # (cids, send_by: perf_counter deadline)


class NotSent(Exception):
    """The kickoff could not be sent before the open loop's window closed (no free connection)."""


class Loop:
    """An asyncio event loop in a daemon thread; `run(coro)` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="load")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class Watcher:
    def __init__(self, url: str, done_streams: list[str], fail_streams: list[str]) -> None:
        self.url = url
        self.done_streams = set(done_streams)
        self.streams: dict[str, Any] = {s: "0" for s in [*done_streams, *fail_streams]}
        self.kicked: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.on_finish: Callable[[], None] | None = None
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._halt = False

    def start(self, loop: Loop) -> None:
        async def _start() -> None:
            self._task = asyncio.create_task(self._run())
        loop.run(_start())

    def stop(self, loop: Loop) -> None:
        """Ask the reader to stop after its current XREAD (it blocks 100 ms at most) and wait."""
        async def _stop() -> None:
            self._halt = True
            if self._task and not (await asyncio.wait([self._task], timeout=5))[0]:
                self._task.cancel()
        loop.run(_stop(), timeout=10)

    async def _run(self) -> None:
        client = aredis.Redis.from_url(self.url)
        try:
            while not self._halt:
                reply: Any = await client.xread(self.streams, count=5000, block=100)  # type: ignore[arg-type]
                now = time.perf_counter()
                for stream_b, entries in reply or []:
                    stream = stream_b.decode()
                    self.streams[stream] = entries[-1][0]
                    for _, fields in entries:
                        self._seen(fields.get(b"correlation_id", b"").decode(), stream, now)
        except Exception as exc:  # surfaced by the harness
            self.error = exc
        finally:
            await client.aclose()

    def _seen(self, cid: str, stream: str, now: float) -> None:
        if cid in self.done or cid in self.failed:
            return
        if stream in self.done_streams:
            self.done[cid] = now
        else:
            self.failed[cid] = stream
        if self.on_finish and cid in self.kicked:
            self.on_finish()

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
    kick_ms: list[tuple[float, float]] = field(default_factory=list)  # (sent at, request ms)
    requests: int = 0
    warmup_s: float = 0.0
    rejected: int = 0
    not_sent: int = 0
    errors: list[str] = field(default_factory=list)


async def _kick(kick: Kick, phase: Phase, cids: list[str], send_by: float) -> list[str]:
    """Send one request for cids; record it; the cids that were not accepted."""
    sent = time.perf_counter()
    try:
        result = await kick(cids, send_by)
    except NotSent:
        phase.not_sent += len(cids)
        return cids
    except Exception as exc:
        result = Sent([repr(exc)[:300]] * len(cids))
    ms = result.ms if result.ms is not None else (time.perf_counter() - sent) * 1000
    phase.requests += 1
    phase.kick_ms.append((sent, ms))
    failed = []
    for cid, error in zip(cids, result.errors, strict=True):
        if error:
            failed.append(cid)
            phase.rejected += 1
            if len(phase.errors) < 5:
                phase.errors.append(error)
        else:
            phase.kicked.append(cid)
    return failed


class _Slots:
    """The closed loop's window: `take(n)` waits until n slots are free and takes them at once (a
    batch of 100 waits for 100, rather than holding a few while others hold the rest)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.changed = asyncio.Event()
        self.closed = False

    def give(self, n: int = 1) -> None:
        self.free += n
        self.changed.set()

    async def take(self, n: int) -> bool:
        """Take n slots; False once closed."""
        while self.free < n and not self.closed:
            self.changed.clear()
            await self.changed.wait()
        if self.closed:
            return False
        self.free -= n
        return True

    def close(self) -> None:
        self.closed = True
        self.changed.set()


async def closed_loop(kick: Kick, watcher: Watcher, new_cid: Callable[[], str], *, window: int,
                      concurrency: int, batch: int, warmup: float, duration: float,
                      on_window: Callable[[str], None], workflows: int = 0,
                      max_warmup: float = 60.0) -> Phase:
    """Keep `window` workflows in flight for warmup + duration seconds, or until `workflows` have
    finished in the measured part when it is given (a soak); on_window("start"/"end") brackets
    the measured part (CPU sampling). Each request carries `batch` workflows.

    The warm-up lasts `warmup` seconds and at least until a window's worth of workflows has
    finished (at most `max_warmup`): a queue that serves in arrival order (Celery's) finishes
    nothing until the first window has gone through every step, and that transient is not its
    throughput."""
    phase = Phase("closed")
    slots = _Slots(window)
    watcher.on_finish = slots.give

    async def kicker() -> None:
        while await slots.take(batch):
            cids = [new_cid() for _ in range(batch)]
            now = time.perf_counter()
            for cid in cids:
                watcher.kicked[cid] = now
            failed = await _kick(kick, phase, cids, float("inf"))
            slots.give(len(failed))
            if failed:
                await asyncio.sleep(0.01)

    began, done_before = time.perf_counter(), len(watcher.done)
    tasks = [asyncio.create_task(kicker()) for _ in range(max(1, min(concurrency, window // batch)))]
    await asyncio.sleep(warmup)
    while len(watcher.done) - done_before < window and time.perf_counter() - began < max_warmup:
        await asyncio.sleep(0.1)
    phase.t0 = time.perf_counter()
    phase.warmup_s = phase.t0 - began
    on_window("start")
    done_at_start = len(watcher.done)
    deadline = phase.t0 + duration
    while (left := deadline - time.perf_counter()) > 0:
        if workflows and len(watcher.done) - done_at_start >= workflows:
            break
        await asyncio.sleep(min(0.5, left))
    phase.t1 = time.perf_counter()
    on_window("end")
    slots.close()
    await asyncio.wait(tasks, timeout=60)
    watcher.on_finish = None
    return phase


async def open_loop(kick: Kick, watcher: Watcher, new_cid: Callable[[], str], *, rate: float,
                    warmup: float, duration: float, on_window: Callable[[str], None]) -> Phase:
    phase = Phase("open")
    start = time.perf_counter() + 0.05
    phase.t0, phase.t1 = start + warmup, start + warmup + duration
    started_window = False
    tasks: set[asyncio.Task[list[str]]] = set()
    i = 0
    while (at := start + i / rate) < phase.t1:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not started_window and at >= phase.t0:
            on_window("start")
            started_window = True
        # Every kickoff due by now (the sleep may have overslept a few schedule slots).
        while (at := start + i / rate) <= time.perf_counter() and at < phase.t1:
            cid = new_cid()
            watcher.kicked[cid] = at  # latency counts from the schedule, not from when we got to it
            phase.scheduled[cid] = at
            task = asyncio.create_task(_kick(kick, phase, [cid], phase.t1))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
    if (delay := phase.t1 - time.perf_counter()) > 0:
        await asyncio.sleep(delay)
    on_window("end")
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    return phase


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
