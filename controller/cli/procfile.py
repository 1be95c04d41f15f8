"""Runs the Procfile's lines as child processes (what honcho does), so the demo and the end-to-end
tests run exactly what a deployment runs, and can stop or kill one process at a time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from honcho.environ import parse_procfile

ROOT = Path(__file__).resolve().parents[2]


def procfile_lines(path: Path = ROOT / "Procfile") -> dict[str, str]:
    return dict(parse_procfile(path.read_text(encoding="utf-8")).processes)


@dataclass
class Processes:
    """Each line in its own session; its output in `<log_dir>/<name>.log`."""

    env: dict[str, str]
    log_dir: Path
    lines: dict[str, str] = field(default_factory=procfile_lines)
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {self.lines[name]}"], cwd=ROOT,
            env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.running[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        proc = self.running.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)
        return _wait(proc, timeout)

    def kill(self, name: str) -> None:
        """`kill -9`, as a crash would."""
        proc = self.running.pop(name)
        _signal(proc, signal.SIGKILL)
        proc.wait()

    def stop_all(self, timeout: float = 20.0) -> dict[str, int | None]:
        """One SIGTERM to each, all at once (a second could cut a clean shutdown short)."""
        procs, self.running = self.running, {}
        for proc in procs.values():
            if proc.poll() is None:
                _signal(proc, signal.SIGTERM)
        return {name: _wait(proc, timeout) for name, proc in procs.items()}


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        return proc.wait()


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def descendants(root: int) -> set[int]:
    """`root` and every process it forked, however deep (from /proc): what a `kill -9` of a
    machine would take down with it. RQ's work horse runs in a process group of its own, so
    killing the group is not enough."""
    family, found = {root}, True
    while found:
        found = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
                if ppid in family and pid not in family:
                    family.add(pid)
                    found = True
    return family
