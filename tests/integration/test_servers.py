"""The test servers and fixtures work: Redis, SQLite and PostgreSQL (a schema of its own per test)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa


def test_redis_client_pings_and_roundtrips_a_stream(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    stream = f"t{uuid.uuid4().hex[:8]}:event:test.happened"
    try:
        entry_id = redis_client.xadd(stream, {"id": "m1", "kind": "event"})
        redis_client.xgroup_create(stream, "controller", id="0")
        got = redis_client.xreadgroup("controller", "c1", {stream: ">"}, count=10, block=100)
        # RESP2 answers a list of [stream, entries]; RESP3 a dict {stream: [entries]}
        entries = got[stream][0] if isinstance(got, dict) else got[0][1]
        assert entries == [(entry_id, {"id": "m1", "kind": "event"})] or entries == [
            [entry_id, {"id": "m1", "kind": "event"}]
        ]
        assert redis_client.xack(stream, "controller", entry_id) == 1
    finally:
        redis_client.delete(stream)


def _current_schema(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT current_schema()")).scalar_one())
    finally:
        engine.dispose()


def test_database_url_is_usable(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (n integer)"))
            conn.execute(sa.text("INSERT INTO probe VALUES (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT n FROM probe")).scalar_one() == 1
    finally:
        engine.dispose()
    if database_url.startswith("sqlite"):
        assert Path(database_url.removeprefix("sqlite:///")).is_file()
    else:
        assert _current_schema(database_url).startswith("t_")


def test_pg_schemas_are_isolated(pg_database_url: str) -> None:
    schema = _current_schema(pg_database_url)
    assert schema.startswith("t_")
    engine = sa.create_engine(pg_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (n integer)"))
    finally:
        engine.dispose()
    base = sa.create_engine(os.environ["BATON_TEST_DATABASE_URL"])
    try:
        with base.connect() as conn:
            assert conn.execute(sa.text("SELECT current_schema()")).scalar_one() == "public"
            assert not sa.inspect(conn).has_table("only_here")
            assert sa.inspect(conn).has_table("only_here", schema=schema)
    finally:
        base.dispose()
