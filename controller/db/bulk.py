"""Many rows in one PostgreSQL statement of fixed text, for the tracker's and the kickoff's hot writes.

SQLAlchemy renders an executemany INSERT as one long VALUES list with a parameter per cell,
which psycopg then parses anew each time (too long for its query cache): about a third of the
tracker's CPU per batch. Here the rows travel as one JSON document (orjson writes it, in C) that
`json_populate_recordset` turns back into rows of the table's own type, so a statement's text is
the same whatever the number of rows: psycopg parses it once and prepares it after a few runs.
(Arrays per column through `unnest` were measured too: psycopg dumps a list in Python, element by
element, twice as slow as the JSON.) Each statement goes through the runtime's `raw_rows`, in the
connection's transaction: no compile, no type processing, but SQLAlchemy's error handling (a lost
connection invalidates the pool and raises `OperationalError`, which the runtime waits out; a
lost race raises `IntegrityError`). PostgreSQL only: SQLite keeps the SQLAlchemy path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Connection, Table

from participants.runtime.db import raw_rows


def query(conn: Connection, sql: str, params: Sequence[Any]) -> Sequence[Any]:
    """A statement of fixed text (arrays as `= ANY(%s::varchar[])`, not expanded lists) with
    psycopg's placeholders: parsed once, prepared after a few runs. Its rows, as tuples."""
    return raw_rows(conn, sql, tuple(params))


def insert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]],
           suffix: str = "") -> Sequence[Any]:
    """INSERT the rows (each by column name, all with the same columns) in one statement, in
    their order; `suffix` (ON CONFLICT, RETURNING) is appended as is. What RETURNING gives."""
    if not rows:
        return []
    return query(conn, _insert_sql(table, tuple(rows[0]), suffix), (_document(rows),))


def update(conn: Connection, table: Table, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """UPDATE one row per given row in one statement: the row whose `keys` columns hold the given
    row's values gets its other columns."""
    if rows:
        query(conn, _update_sql(table, tuple(keys), tuple(rows[0])), (_document(rows),))


def _document(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a JSON array of objects: times as RFC 3339 (aware: Baton stores UTC times)."""
    return orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS).decode()


def _rows(table: Table) -> str:
    return f"json_populate_recordset(NULL::{table.name}, %s::json) WITH ORDINALITY AS u"


@cache
def _insert_sql(table: Table, columns: tuple[str, ...], suffix: str) -> str:
    names = ", ".join(columns)
    # In the given order: a serial key (the timeline's `seq`) numbers them as they came.
    return (f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {_rows(table)}"
            f" ORDER BY u.ordinality {suffix}")


@cache
def _update_sql(table: Table, keys: tuple[str, ...], columns: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = u.{c}" for c in columns if c not in keys)
    where = " AND ".join(f"t.{k} = u.{k}" for k in keys)
    return f"UPDATE {table.name} AS t SET {sets} FROM {_rows(table)} WHERE {where}"
