"""Private servers for the benchmark: a Redis with AOF (everysec) and a durable PostgreSQL.

Both live in one temp directory and are stopped by `Servers.close()` whatever happens. PostgreSQL
refuses to run as root, so as root it runs as `postgres` (or a `baton-pg` system user made for it),
the way scripts/test.sh does. Unlike the test cluster, this one keeps fsync and synchronous_commit
on: the benchmark measures what a deployment would pay for durable commits.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from participants.runtime import redis_server

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def pg_bin() -> Path:
    """The newest PostgreSQL server binaries on the machine."""
    found = shutil.which("pg_ctl")
    if found:
        real = Path(found).resolve().parent
        if (real / "initdb").exists():
            return real
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for c in reversed(candidates):
        if (Path(c) / "initdb").exists():
            return Path(c)
    raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")


def _pg_user() -> str | None:
    """The OS user to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "baton-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "baton-pg"], check=True)
    return "baton-pg"


@dataclass
class Servers:
    tmp: Path
    redis_url: str = ""
    redis_dir: Path | None = None
    pg_port: int = 0
    pg_data: Path | None = None
    pg_user: str | None = None
    pg_bin: Path | None = None
    created_dbs: list[str] = field(default_factory=list)

    # -- Redis ---------------------------------------------------------------------------

    def start_redis(self) -> str:
        self.redis_dir = self.tmp / "redis"
        # appendonly=True: AOF with appendfsync everysec, as Baton's private server runs it.
        self.redis_url = redis_server.start_server(self.redis_dir, appendonly=True)
        return self.redis_url

    def redis_pid(self) -> int | None:
        assert self.redis_dir is not None
        with contextlib.suppress(OSError, ValueError):
            return int((self.redis_dir / redis_server.PID_FILE).read_text().strip())
        return None

    # -- PostgreSQL ------------------------------------------------------------------------

    def _as_pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.pg_user:
            cmd = ["runuser", "-u", self.pg_user, "--", *cmd]
        return subprocess.run(cmd, cwd=self.tmp, capture_output=True, text=True, check=check)

    def start_postgres(self, *, durable: bool = True, stat_statements: bool = True,
                       crash_safe: bool = False) -> None:
        """`durable=False` turns fsync off. It also turns synchronous_commit off, so a commit does
        not wait for its WAL to be written, unless `crash_safe`: then a server stopped with
        `-m immediate` keeps every commit it acknowledged (only a crash of the machine loses any)."""
        self.pg_bin = pg_bin()
        self.pg_user = _pg_user()
        self.pg_data = self.tmp / "pg"
        run = self.tmp / "pg-run"
        for d in (self.pg_data, run):
            d.mkdir(mode=0o700)
            if self.pg_user:
                shutil.chown(d, self.pg_user)
        self.pg_port = free_port()
        init = self._as_pg(str(self.pg_bin / "initdb"), "-D", str(self.pg_data), "-U", "baton",
                           "-A", "trust", "-E", "UTF8", "--locale=C", check=False)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
        durability = "" if durable else "fsync = off\nfull_page_writes = off\n"
        if not durable and not crash_safe:
            durability += "synchronous_commit = off\n"
        preload = "shared_preload_libraries = 'pg_stat_statements'\n" if stat_statements else ""
        with (self.pg_data / "postgresql.conf").open("a") as conf:
            conf.write(
                "# bench/servers.py\n"
                f"listen_addresses = '{HOST}'\nport = {self.pg_port}\n"
                f"unix_socket_directories = '{run}'\n"
                "max_connections = 300\nshared_buffers = 256MB\n"
                f"{durability}{preload}"
            )
        started = self._as_pg(str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data),
                              "-l", str(run / "postgres.log"), "-w", "-t", "60", "start", check=False)
        if started.returncode != 0:
            log = (run / "postgres.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}{log}")

    def stop_postgres(self, mode: str = "immediate") -> None:
        """`pg_ctl stop -m immediate` by default: the server goes as if the machine lost power."""
        assert self.pg_bin is not None and self.pg_data is not None
        self._as_pg(str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), "-m", mode, "-w", "stop")

    def restart_postgres(self) -> None:
        """Start the stopped server again on the same data directory (recovering from its WAL)."""
        assert self.pg_bin is not None and self.pg_data is not None
        log = self.tmp / "pg-run" / "postgres.log"
        self._as_pg(str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), "-l", str(log),
                    "-w", "-t", "60", "start")

    def pg_url(self, db: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://baton@{HOST}:{self.pg_port}/{db}"

    def create_db(self, name: str) -> str:
        assert self.pg_bin is not None
        subprocess.run([str(self.pg_bin / "createdb"), "-h", HOST, "-p", str(self.pg_port),
                        "-U", "baton", name], check=True, capture_output=True)
        self.created_dbs.append(name)
        return self.pg_url(name)

    def psql_command(self, db: str, sql: str) -> list[str]:
        assert self.pg_bin is not None
        return [str(self.pg_bin / "psql"), "-h", HOST, "-p", str(self.pg_port), "-U", "baton",
                "-d", db, "-At", "-F", "\t", "-c", sql]

    def psql(self, db: str, sql: str) -> str:
        out = subprocess.run(self.psql_command(db, sql), check=True, capture_output=True, text=True)
        return out.stdout

    def postgres_pid(self) -> int | None:
        if self.pg_data is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return int((self.pg_data / "postmaster.pid").read_text().splitlines()[0])
        return None

    # -- teardown --------------------------------------------------------------------------

    def close(self, keep: bool = False) -> None:
        if self.pg_data is not None and (self.pg_data / "postmaster.pid").exists():
            assert self.pg_bin is not None
            stopped = self._as_pg(str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), "-m", "fast",
                                  "-w", "-t", "20", "stop", check=False)
            if stopped.returncode != 0:
                pid = self.postgres_pid()
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if self.redis_dir is not None:
            with contextlib.suppress(Exception):
                redis_server.stop_server(self.redis_dir)
        if keep:
            print(f"bench: kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def make_servers() -> Servers:
    tmp = Path(tempfile.mkdtemp(prefix="baton-bench."))
    tmp.chmod(0o755)  # the PostgreSQL user must reach its data directory
    return Servers(tmp)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout}s")
