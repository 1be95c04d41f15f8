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
from participants.runtime.db import raw_rows, upsert
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


def arrive_many(conn: Connection, consumer: str, join_name: str, types: tuple[str, ...],
                batch: list[Envelope]) -> list[dict[str, Envelope] | None]:
    """`arrive` for each message of `batch` in turn, in a few statements for them all: the
    state rows created or locked in one (in correlation ID order), their arrivals read in one,
    the set decided in memory message by message, then the arrivals forgotten (a retry), recorded
    and the joins fired, one statement each (the last two in one on PostgreSQL). What each
    message completes, or None."""
    cids = sorted({m.correlation_id for m in batch})
    if not cids:
        return []
    keys = [{"consumer": consumer, "join_name": join_name, "correlation_id": c} for c in cids]
    fired, arrived = _load(conn, consumer, join_name, cids)
    forget: set[str] = set()
    new: dict[tuple[str, str], Envelope] = {}
    fire: dict[str, Any] = {}
    out: list[dict[str, Envelope] | None] = []
    for message in batch:
        cid, got = message.correlation_id, arrived[message.correlation_id]
        if fired[cid] is not None and _retried(message, got.get(message.type)):
            forget.add(cid)
            new = {k: m for k, m in new.items() if k[0] != cid}
            fired[cid] = fire[cid] = None
            got.clear()
        if message.type not in got:
            got[message.type] = new[(cid, message.type)] = message
        if fired[cid] is not None or any(t not in got for t in types):
            out.append(None)
            continue
        fired[cid] = fire[cid] = utcnow()
        out.append({t: got[t] for t in types})
    _write(conn, keys[0], forget, new, fire)
    return out


def _load(conn: Connection, consumer: str, join_name: str,
          cids: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Envelope]]]:
    """Lock the state rows of `cids` (in that order), then read their arrivals: when each fired,
    and what arrived for each. Two statements: the read must see what a concurrent consumer
    committed while this one waited on a lock."""
    arrived: dict[str, dict[str, Envelope]] = {c: {} for c in cids}
    if conn.dialect.name == "postgresql":
        params = {"consumer": consumer, "join_name": join_name, "cids": cids}
        fired = {cid: at for cid, at in raw_rows(conn, _LOCK_STATES_PG, params)}
        for cid, message_type, envelope in raw_rows(conn, _ARRIVED_OF_PG, params):
            arrived[cid][message_type] = decode_fields(_loads(envelope))
        return fired, arrived
    keys = [{"consumer": consumer, "join_name": join_name, "correlation_id": c} for c in cids]
    fired = {r.correlation_id: r.fired_at for r in conn.execute(_lock_states(conn.dialect.name), keys)}
    for r in conn.execute(_ARRIVED_OF, {"w_consumer": consumer, "w_join_name": join_name, "cids": cids}):
        arrived[r.correlation_id][r.message_type] = decode_fields(_loads(r.envelope))
    return fired, arrived


def _write(conn: Connection, key: dict[str, str], forget: set[str], new: dict[tuple[str, str], Envelope],
           fire: dict[str, Any]) -> None:
    where = {"w_consumer": key["consumer"], "w_join_name": key["join_name"]}
    if not forget and conn.dialect.name == "postgresql":
        _write_pg(conn, key, new, fire)
        return
    if forget:
        conn.execute(_FORGET_OF, {**where, "cids": sorted(forget)})
    if new:
        conn.execute(_INSERT_ARRIVAL, [
            {"consumer": key["consumer"], "join_name": key["join_name"], "correlation_id": cid,
             "message_type": t, "envelope": orjson.dumps(m.to_fields()).decode()}
            for (cid, t), m in new.items()])
    if fire:
        conn.execute(_FIRE, [{**where, "w_correlation_id": cid, "fired_at": at}
                             for cid, at in sorted(fire.items())])


def _write_pg(conn: Connection, key: dict[str, str], new: dict[tuple[str, str], Envelope],
              fire: dict[str, Any]) -> None:
    """`_write` with nothing to forget, in one statement through the driver (`raw_rows`)."""
    if not new and not fire:
        return
    fired = sorted(fire.items())
    raw_rows(conn, _WRITE_PG, {
        "consumer": key["consumer"], "join_name": key["join_name"],
        "cids": [cid for cid, _ in new], "types": [t for _, t in new],
        "envelopes": [orjson.dumps(m.to_fields()).decode() for m in new.values()],
        "fire_cids": [cid for cid, _ in fired], "fire_at": [at for _, at in fired]})


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


@cache
def _lock_states(dialect: str) -> Any:
    """`_lock_state` for many rows, each returned with its correlation ID."""
    stmt = upsert(dialect, join_state)
    return stmt.on_conflict_do_update(
        index_elements=[join_state.c.consumer, join_state.c.join_name, join_state.c.correlation_id],
        set_={"fired_at": join_state.c.fired_at},
    ).returning(join_state.c.correlation_id, join_state.c.fired_at)


def _where(key: dict[str, str]) -> dict[str, str]:
    return {f"w_{k}": v for k, v in key.items()}


def _matches(table: Table) -> list[Any]:
    return [table.c[k] == bindparam(f"w_{k}") for k in ("consumer", "join_name", "correlation_id")]


_ARRIVED = select(join_arrival.c.message_type, join_arrival.c.envelope).where(*_matches(join_arrival))
_OF_MANY = [join_arrival.c.consumer == bindparam("w_consumer"),
            join_arrival.c.join_name == bindparam("w_join_name"),
            join_arrival.c.correlation_id.in_(bindparam("cids", expanding=True))]
_ARRIVED_OF = select(join_arrival.c.correlation_id, join_arrival.c.message_type,
                     join_arrival.c.envelope).where(*_OF_MANY)
_FORGET_OF = delete(join_arrival).where(*_OF_MANY)
_INSERT_ARRIVAL = insert(join_arrival)
_FIRE = update(join_state).where(*_matches(join_state))
_FORGET = delete(join_arrival).where(*_matches(join_arrival))


# `_lock_states` and `_ARRIVED_OF` through the driver (`raw_rows`).
_LOCK_STATES_PG = (
    "INSERT INTO baton_join_state (consumer, join_name, correlation_id) SELECT %(consumer)b,"
    " %(join_name)b, c FROM unnest(%(cids)b::text[]) WITH ORDINALITY AS t(c, n) ORDER BY n"
    " ON CONFLICT (consumer, join_name, correlation_id) DO UPDATE SET fired_at = baton_join_state.fired_at"
    " RETURNING correlation_id, fired_at")
_ARRIVED_OF_PG = (
    "SELECT correlation_id, message_type, envelope FROM baton_join_arrival WHERE consumer = %(consumer)b"
    " AND join_name = %(join_name)b AND correlation_id = ANY(%(cids)b::text[])")
# The arrivals recorded and the joins fired (or reopened: NULL) of a batch, in one statement.
_WRITE_PG = (
    "WITH new AS (INSERT INTO baton_join_arrival (consumer, join_name, correlation_id, message_type,"
    " envelope) SELECT %(consumer)b, %(join_name)b, c, t, e FROM unnest(%(cids)b::text[],"
    " %(types)b::text[], %(envelopes)b::text[]) AS a(c, t, e))"
    " UPDATE baton_join_state SET fired_at = v.at FROM unnest(%(fire_cids)b::text[],"
    " %(fire_at)b::timestamptz[]) AS v(cid, at) WHERE consumer = %(consumer)b"
    " AND join_name = %(join_name)b AND correlation_id = v.cid")


def _loads(text: str) -> dict[str, str]:
    loaded: dict[str, str] = orjson.loads(text)
    return loaded
