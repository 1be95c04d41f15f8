"""Durable joins: act once when every event of a set has arrived for a correlation ID, in any order,
and once more for each `retry` that re-emits the set."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from contracts.envelope import Envelope, decode_fields
from contracts.streams import CONTROLLER
from contracts.timefmt import utcnow
from participants.runtime.db import upsert
from participants.runtime.tables import join_arrival, join_state


def arrive(conn: Connection, consumer: str, join_name: str, types: tuple[str, ...],
           message: Envelope) -> dict[str, Envelope] | None:
    """Record `message`; return the complete set the first time it is complete, else None.

    The state row is created or locked first, in one statement (an upsert that rewrites nothing
    locks the row on PostgreSQL; SQLite's write lock is database-wide), so two consumers receiving
    the two halves at once cannot both miss, or both see, the whole.
    """
    key = {"consumer": consumer, "join_name": join_name, "correlation_id": message.correlation_id}
    fired = conn.execute(_lock_state(conn.dialect.name), key).scalar_one()
    arrived = {r.message_type: decode_fields(_loads(r.envelope)) for r in conn.execute(_ARRIVED, _where(key))}
    if fired is not None and _retried(message, arrived.get(message.type)):
        # An operator's retry: the join opens again and fires once more when the whole set has
        # been re-emitted, whatever the order (the halves of one retry do not fire it twice).
        conn.execute(_FIRE, {**_where(key), "fired_at": None})
        conn.execute(_FORGET, _where(key))
        fired, arrived = None, {}
    if message.type not in arrived:
        encoded = orjson.dumps(message.to_fields()).decode()
        conn.execute(_INSERT_ARRIVAL, {**key, "message_type": message.type, "envelope": encoded})
        arrived[message.type] = message
    if fired is not None or any(t not in arrived for t in types):
        return None
    conn.execute(_FIRE, {**_where(key), "fired_at": utcnow()})
    return {t: arrived[t] for t in types}


def _retried(message: Envelope, recorded: Envelope | None) -> bool:
    """Whether `message` is the controller re-emitting the recorded arrival of its type (the
    `retry` intervention): a new id caused by the original, or by what the original caused when
    the recorded one is itself a re-emission (the controller re-emits the first it saw)."""
    return (recorded is not None and message.source == CONTROLLER and message.id != recorded.id
            and message.causation_id in (recorded.id, recorded.causation_id))


# Built once: every arrival runs them.
@cache
def _lock_state(dialect: str) -> Any:
    """Insert the state row, or touch the one there (keeping its `fired_at`): either way it is
    locked, and its `fired_at` returned."""
    stmt = upsert(dialect, join_state)
    return stmt.on_conflict_do_update(
        index_elements=[join_state.c.consumer, join_state.c.join_name, join_state.c.correlation_id],
        set_={"fired_at": join_state.c.fired_at},
    ).returning(join_state.c.fired_at)


def _where(key: dict[str, str]) -> dict[str, str]:
    return {f"w_{k}": v for k, v in key.items()}


def _matches(table: Table) -> list[Any]:
    return [table.c[k] == bindparam(f"w_{k}") for k in ("consumer", "join_name", "correlation_id")]


_ARRIVED = select(join_arrival.c.message_type, join_arrival.c.envelope).where(*_matches(join_arrival))
_INSERT_ARRIVAL = insert(join_arrival)
_FIRE = update(join_state).where(*_matches(join_state))
_FORGET = delete(join_arrival).where(*_matches(join_arrival))


def _loads(text: str) -> dict[str, str]:
    loaded: dict[str, str] = orjson.loads(text)
    return loaded
