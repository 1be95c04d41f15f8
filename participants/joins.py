"""Durable joins: act once when every event of a set has arrived for a correlation ID, in any order."""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from contracts.envelope import Envelope, decode_fields
from contracts.timefmt import utcnow
from participants.tables import join_arrival, join_state


def arrive(conn: Connection, consumer: str, join_name: str, types: tuple[str, ...],
           message: Envelope) -> dict[str, Envelope] | None:
    """Record `message`; return the complete set the first time it is complete, else None.

    The state row is locked first (FOR UPDATE on PostgreSQL; SQLite's write lock is database-wide),
    so two consumers receiving the two halves at once cannot both miss, or both see, the whole.
    """
    key = {"consumer": consumer, "join_name": join_name, "correlation_id": message.correlation_id}
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(upsert(join_state).values(**key).on_conflict_do_nothing())
    where = [join_state.c[k] == v for k, v in key.items()]
    fired = conn.execute(select(join_state.c.fired_at).where(*where).with_for_update()).scalar_one()
    arrived = _arrivals(conn, key)
    if message.type not in arrived:
        encoded = orjson.dumps(message.to_fields()).decode()
        conn.execute(insert(join_arrival).values(**key, message_type=message.type, envelope=encoded))
        arrived[message.type] = message
    if fired is not None or any(t not in arrived for t in types):
        return None
    conn.execute(update(join_state).where(*where).values(fired_at=utcnow()))
    return {t: arrived[t] for t in types}


def _arrivals(conn: Connection, key: dict[str, str]) -> dict[str, Envelope]:
    rows = conn.execute(
        select(join_arrival.c.message_type, join_arrival.c.envelope).where(
            *[join_arrival.c[k] == v for k, v in key.items()]
        )
    )
    return {r.message_type: decode_fields(_loads(r.envelope)) for r in rows}


def _loads(text: str) -> dict[str, str]:
    loaded: dict[str, str] = orjson.loads(text)
    return loaded
