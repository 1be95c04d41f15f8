"""CPU and memory of the processes a scenario runs, grouped by kind (`web`, `tracker`, `postgres`, ...).

A kind is a root pid and all its descendants (gunicorn's workers, PostgreSQL's backends). CPU is
user + system time from /proc (psutil), taken at the start and the end of the measured window; a
process born inside the window counts from zero. A process's figure includes its children that
have exited and been reaped (RQ's work horse of each job, a backend of a closed connection), whose
own entries are gone by the window's end; one born before the window and reaped inside counts
whole. Peak RSS is the kernel's high-water mark (VmHWM) of
each process, and a kind's figure is its largest process's.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0.0


def _status_mb(pid: int, key: str) -> float:
    """A memory figure of /proc/<pid>/status in MB: VmHWM (peak resident), VmRSS (resident now)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _machine_busy() -> float:
    """CPU seconds the whole machine spent not idle, since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass
class Kinds:
    """Named process trees; `self` may be included to measure the load generator itself."""

    roots: dict[str, list[int]] = field(default_factory=dict)
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine0: tuple[float, float] = (0.0, 0.0)
    machine_busy_s: float = 0.0  # every process on the machine, ours or not, during the window
    window_wall_s: float = 0.0
    peak_mb: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, pid: int | None) -> None:
        if pid:
            self.roots.setdefault(kind, []).append(pid)

    def _procs(self, kind: str) -> list[psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        for pid in self.roots.get(kind, []):
            for p in _tree(pid):
                procs[p.pid] = p
        return list(procs.values())

    def pids(self, kind: str) -> list[int]:
        return [p.pid for p in self._procs(kind)]

    def window_start(self) -> None:
        self._start = {k: {p.pid: _cpu(p) for p in self._procs(k)} for k in self.roots}
        self._machine0 = (_machine_busy(), time.monotonic())

    def window_end(self) -> dict[str, float]:
        """CPU seconds per kind spent since window_start()."""
        spent: dict[str, float] = {}
        for kind in self.roots:
            before = self._start.get(kind, {})
            spent[kind] = sum(max(0.0, _cpu(p) - before.get(p.pid, 0.0)) for p in self._procs(kind))
        self.machine_busy_s = _machine_busy() - self._machine0[0]
        self.window_wall_s = time.monotonic() - self._machine0[1]
        self.sample_rss()
        return spent

    def sample_rss(self) -> None:
        for kind in self.roots:
            for p in self._procs(kind):
                self.peak_mb[kind] = max(self.peak_mb.get(kind, 0.0), _status_mb(p.pid, "VmHWM"))

    def rss_now(self) -> dict[str, float]:
        """Each kind's largest resident set now, in MB (a soak compares these over time)."""
        return {k: round(max((_status_mb(p.pid, "VmRSS") for p in self._procs(k)), default=0.0), 1)
                for k in self.roots}

    def counts(self) -> dict[str, int]:
        return {k: len(self._procs(k)) for k in self.roots}
