"""The unit tier is pure code: a test here that opens a socket, starts a process or opens a database
fails, even if the code under test swallows the refusal. Such a test belongs in tests/integration
(real Redis and databases, in-process) or tests/e2e (real processes)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine.default import DefaultDialect


class TierViolation(Exception):
    """Not an OSError: the network code under test must not take it for a refused connection."""


class Guard:
    def __init__(self) -> None:
        self.attempts: list[str] = []

    def refusing(self, what: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.attempts.append(what)
            if args and isinstance(args[0], socket.socket):
                args[0].close()  # as a refused connect would be: no socket left to leak
            raise TierViolation(f"a unit test may not {what}: move it to tests/integration "
                                "(servers, databases) or tests/e2e (processes)")
        return refuse


@pytest.fixture(autouse=True)
def unit_tier_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    guard = Guard()
    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, guard.refusing(f"open a socket (socket.{name})"))
    monkeypatch.setattr(socket, "create_connection", guard.refusing("open a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", guard.refusing("start a process"))
    monkeypatch.setattr(sqlite3, "connect", guard.refusing("open a SQLite database"))
    # every SQLAlchemy dialect connects through this; psycopg's libpq opens its socket in C
    monkeypatch.setattr(DefaultDialect, "connect", guard.refusing("connect to a database"))
    yield guard
    if guard.attempts:
        pytest.fail(f"a unit test tried to {'; '.join(dict.fromkeys(guard.attempts))}",
                    pytrace=False)
