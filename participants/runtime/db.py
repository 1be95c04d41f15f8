"""SQLAlchemy engines for PostgreSQL (psycopg 3) and SQLite, set up the same way for every process."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
import structlog
from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError

log = structlog.get_logger("baton.db")
P = ParamSpec("P")
T = TypeVar("T")
# SQLSTATEs of a transaction that lost a race with another: deadlock_detected (its victim), and
# serialization_failure. The database is fine: the transaction may be run again at once.
_LOST_RACE = frozenset({"40P01", "40001"})
RACE_ATTEMPTS = 5
# A pooled connection idle longer than this is pinged before use (a dead one replaced); one in
# steady use is not: a ping per transaction was one more round trip on every batch and request.
PING_AFTER_IDLE = 1.0


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns through orjson: the standard library's json was 2 % of a kickoff's CPU.
_JSON: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": orjson.loads}


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine whose transactions lock early on SQLite, so concurrent writers wait, not fail."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Bounded waits: with the database down, callers fail fast (503) instead of hanging.
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=10,
                               connect_args={"connect_timeout": 5}, **_JSON)
        _ping_after_idle(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30}, **_JSON)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


# Pools of forked processes' parents, kept referenced (own_pool_in_fork).
_INHERITED: list[Any] = []


def own_pool_in_fork(engine: Engine) -> None:
    """In a fork: a new pool for `engine`, the parent's connections left alone (SQLAlchemy's advice
    for a forked child; redis-py's pools see the new pid themselves). The old pool is kept
    referenced, never collected: an inherited SQLite connection closed in the fork could checkpoint
    the parent's WAL."""
    _INHERITED.append(engine.pool)
    engine.dispose(close=False)


def _ping_after_idle(engine: Engine) -> None:
    """Ping a connection before use only if it sat idle in the pool past PING_AFTER_IDLE: a
    server restarted meanwhile left it dead, and the pool replaces it (DisconnectionError) instead
    of failing the caller. A connection that dies while in steady use fails its transaction: the
    pool then drops every connection older than the failure, and the caller's retry reconnects
    (the runtime waits for the database and handles the batch again; the API answers 503)."""
    @event.listens_for(engine, "checkin")
    def idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since <= PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("a pooled connection left idle is dead") from exc


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: no deadlock when a reader later wants to write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def upsert(dialect: str | Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of `table` that takes `on_conflict_do_nothing` / `on_conflict_do_update`, for the
    dialect named (or the connection's): PostgreSQL's and SQLite's share that API."""
    name = dialect if isinstance(dialect, str) else dialect.dialect.name
    return postgresql.insert(table) if name == "postgresql" else sqlite.insert(table)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def raw_rows(conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    """Run `sql` (psycopg's placeholders) on PostgreSQL through the driver's own connection, in
    `conn`'s transaction, and return its rows (none for a statement without RETURNING). For the
    few statements every batch runs: SQLAlchemy's execute path costs about 0.1 ms of CPU more per
    statement than psycopg's. A driver error goes through SQLAlchemy's handling as if it ran the
    statement (wrapped, `OperationalError` for an outage, the pool invalidated on a disconnect).
    Placeholders are binary (`%(name)b`): psycopg escapes each string of a text-format array with
    a regular expression, which cost 0.2 ms for a batch's two outbox rows."""
    cursor = _execute(conn, sql, params)
    return cursor.fetchall() if cursor.description else []


def raw_dicts(conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """`raw_rows`, each row a dict by column name."""
    cursor = _execute(conn, sql, params)
    names = [c.name for c in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()] if names else []


def dict_rows(conn: Connection, statement: Any, pg_sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A read of the reference participants: `pg_sql` through the driver on PostgreSQL
    (`raw_dicts`), the SQLAlchemy `statement` elsewhere; rows as dicts by column name."""
    if conn.dialect.name == "postgresql":
        return raw_dicts(conn, pg_sql, params)
    return [dict(r._mapping) for r in conn.execute(statement, params)]


def _execute(conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Any:
    """The driver connection's own cursor, its results fetched (psycopg's client-side cursor),
    for the caller to read before the next statement. One cursor per connection, not one per
    statement: a cursor keeps the dumpers it chose for each parameter, and a new cursor chose
    them again (a statement of 11 array parameters: 160-240 µs of client CPU on a new cursor,
    110-150 on the kept one)."""
    pooled = conn.connection  # its `info` is cleared when the pool connects it again
    driver = pooled.driver_connection
    assert driver is not None
    try:
        cursor = pooled.info.get(_CURSOR)
        if cursor is None:
            cursor = pooled.info[_CURSOR] = driver.cursor()
        return cursor.execute(sql, params)
    except Exception as exc:  # psycopg's; anything else SQLAlchemy re-raises as it is
        conn._handle_dbapi_exception(exc, sql, params, None, None)  # raises


_CURSOR = "baton.cursor"


def create_tables(engine: Engine, *metadatas: MetaData) -> None:
    """Idempotent, and safe when several processes start at once on one database."""
    with engine.begin() as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(72617)"))
        for metadata in metadatas:
            metadata.create_all(conn, checkfirst=True)


def lost_race(exc: BaseException) -> bool:
    """A deadlock's victim or a serialization failure, not an outage: run it again at once."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _LOST_RACE


def retry_lost_races(action: Callable[P, T]) -> Callable[P, T]:
    """`action`, whose transactions roll back when they fail, run again at once when one of them
    lost a race (`lost_race`), up to RACE_ATTEMPTS times in all; the last failure is raised."""
    @functools.wraps(action)
    def retried(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, RACE_ATTEMPTS):
            try:
                return action(*args, **kwargs)
            except DBAPIError as exc:
                if not lost_race(exc):
                    raise
                log.info("a transaction lost a race: again at once", attempt=attempt,
                         error=str(exc.orig).splitlines()[0][:200])
        return action(*args, **kwargs)
    return retried
