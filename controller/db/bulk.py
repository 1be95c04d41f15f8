"""Many rows in one PostgreSQL statement through psycopg itself, for the tracker's hot writes.

SQLAlchemy renders an executemany INSERT as one long VALUES list with a parameter per cell,
which psycopg then parses anew each time (too long for its query cache): about a third of the
tracker's CPU per batch. Here each column travels as one array and `unnest` turns them back
into rows, so a statement's text is the same whatever the number of rows: psycopg parses it once
and prepares it after a few runs. The statement runs on the SQLAlchemy connection's own psycopg
connection, in its transaction. PostgreSQL only: SQLite keeps the SQLAlchemy path.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Table
from sqlalchemy.dialects import postgresql

_PG = postgresql.dialect()


def cursor(conn: Connection) -> Any:
    """A psycopg cursor on the connection's transaction (its first statement begins it)."""
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


def insert(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]],
           suffix: str = "") -> list[tuple[Any, ...]]:
    """INSERT the rows (values in the order of `columns`) in one statement; `suffix` (ON CONFLICT,
    RETURNING) is appended as is. The rows RETURNING gives, if any."""
    if not rows:
        return []
    sql, json_at = _insert_sql(table, tuple(columns), suffix)
    with cursor(conn) as cur:
        cur.execute(sql, arrays(rows, len(columns), json_at))
        return cur.fetchall() if cur.description else []


def arrays(rows: Sequence[Sequence[Any]], width: int,
           json_at: frozenset[int] = frozenset()) -> list[list[Any]]:
    """The rows as one list per column; a JSON column's values as their JSON text."""
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
    for i in json_at:
        cols[i] = [None if v is None else _json(v) for v in cols[i]]
    return cols


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def array_types(table: Table, columns: Sequence[str]) -> tuple[list[str], frozenset[int]]:
    """Each column's PostgreSQL type as an array cast (`::varchar(128)[]`), and which are JSON."""
    types = [table.c[c].type for c in columns]
    return ([f"::{t.compile(dialect=_PG)}[]" for t in types],
            frozenset(i for i, t in enumerate(types) if isinstance(t, JSON)))


def update(conn: Connection, table: Table, keys: Sequence[str], columns: Sequence[str],
           rows: Sequence[Sequence[Any]]) -> None:
    """UPDATE one row per given row in one statement: each row holds the values of `keys` (which
    find it), then those of `columns` (which it gets)."""
    if rows:
        sql, json_at = _update_sql(table, tuple(keys), tuple(columns))
        with cursor(conn) as cur:
            cur.execute(sql, arrays(rows, len(keys) + len(columns), json_at))


def _unnest(table: Table, columns: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, frozenset[int]]:
    """`unnest(...) WITH ORDINALITY AS u(names..., _n)`: the arrays' rows in their given order."""
    casts, json_at = array_types(table, columns)
    params = ", ".join(f"%s{cast}" for cast in casts)
    return f"unnest({params}) WITH ORDINALITY AS u({', '.join(names)}, _n)", json_at


@cache
def _insert_sql(table: Table, columns: tuple[str, ...], suffix: str) -> tuple[str, frozenset[int]]:
    rows, json_at = _unnest(table, columns, columns)
    names = ", ".join(columns)
    # In the given order: a serial key (the timeline's `seq`) numbers them as they came.
    sql = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {rows} ORDER BY _n {suffix}"
    return sql.rstrip(), json_at


@cache
def _update_sql(table: Table, keys: tuple[str, ...], columns: tuple[str, ...]) -> tuple[str, frozenset[int]]:
    names = tuple(f"_k{i}" for i in range(len(keys))) + columns
    rows, json_at = _unnest(table, keys + columns, names)
    sets = ", ".join(f"{c} = u.{c}" for c in columns)
    where = " AND ".join(f"t.{k} = u._k{i}" for i, k in enumerate(keys))
    return f"UPDATE {table.name} AS t SET {sets} FROM {rows} WHERE {where}", json_at
