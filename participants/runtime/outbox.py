"""The transactional outbox: messages recorded with the effect that caused them, published after commit.

The writer publishes its own rows right after its commit, so no one waits for a poll; the relay
publishes what a crash left behind. A row may be published twice (at least once); consumers dedupe by `id`.

Two ways to publish: `publish` claims the rows (marks them sent, which locks them) and XADDs them
in a transaction of its own (the API's kickoff, the sweeper, interventions); `send` only XADDs,
and the writer marks the rows sent later with `mark_sent`, in the transaction of its next batch
(the consumers' runtime: one commit per batch instead of two).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis
import structlog
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from contracts.envelope import COMMAND, Envelope
from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.runtime import connect
from participants.runtime.db import raw_rows
from participants.runtime.faults import crash_point
from participants.runtime.tables import outbox

log = structlog.get_logger("baton.outbox")
LEFT_TO_THE_RELAY: tuple[type[Exception], ...] = (redis.RedisError, *connect.UNAVAILABLE, SQLAlchemyError)


@dataclass(frozen=True)
class Pending:
    seq: int
    stream: str
    fields: dict[str, str]


def stream_for(keys: Keys, envelope: Envelope) -> str:
    if envelope.kind == COMMAND:
        return keys.command_stream(envelope.target or "")
    return keys.stream_of(envelope.type, envelope.data)


def enqueue(conn: Connection, keys: Keys, envelopes: Iterable[Envelope], now: datetime) -> list[Pending]:
    rows: list[dict[str, Any]] = [
        {"message_id": e.id, "stream": stream_for(keys, e), "fields": e.to_fields(), "created_at": now}
        for e in envelopes
    ]
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        seqs = sorted(r[0] for r in raw_rows(conn, _ENQUEUE_PG, {
            "ids": [r["message_id"] for r in rows], "streams": [r["stream"] for r in rows],
            "fields": [_json(r["fields"]) for r in rows], "now": now}))
    else:
        seqs = list(conn.execute(_ENQUEUE, rows).scalars())
    return [Pending(seq, r["stream"], r["fields"]) for seq, r in zip(seqs, rows, strict=True)]


def publish(engine: Engine, client: redis.Redis, pending: Sequence[Pending],
            crash_points: Collection[str] = ()) -> None:
    """Claim the rows still unsent (one UPDATE … RETURNING, whose row locks the relay skips) and
    XADD them in one round trip before the commit: a slow writer's rows are never published
    twice, and a crash before the commit leaves them unsent for the relay. A row the relay holds
    is waited for, then found sent."""
    if not pending:
        return
    with engine.begin() as conn:
        mine = set(conn.execute(_CLAIM, {"seqs": [p.seq for p in pending], "now": utcnow()}).scalars())
        rows = [p for p in pending if p.seq in mine]
        if rows:  # else the relay got there first
            _xadd(client, rows, "outbox", crash_points)


def publish_or_leave(engine: Engine, client: redis.Redis, pending: Sequence[Pending],
                     crash_points: Collection[str] = ()) -> None:
    """`publish` for a caller whose change is committed and must answer now (the API): when Redis
    or the database fails, the rows stay unsent for the relay and the caller is not failed."""
    try:
        publish(engine, client, pending, crash_points)
    except LEFT_TO_THE_RELAY as exc:
        log.warning("publish after commit failed; the relay will send it", error=repr(exc)[:200],
                    messages=len(pending))


def send(pipe: Any, pending: Sequence[Pending], crash_points: Collection[str] = ()) -> None:
    """Queue the rows' XADDs on `pipe` (a pipeline without MULTI), without marking them: Redis
    runs them before whatever the caller queues next (the consumer's XACKs), in the caller's one
    round trip. The caller marks them with `mark_sent` before the relay's grace is out (else the
    relay sends them again). With crash points set (tests only) the XADDs go at once, between
    `outbox.before_xadd` and `outbox.after_xadd`, so a kill can fall between publish and ack."""
    if not pending:
        return
    if crash_points:
        crash_point("outbox.before_xadd", crash_points)
    for row in pending:
        pipe.xadd(row.stream, row.fields)
    if crash_points:
        pipe.execute()
        crash_point("outbox.after_xadd", crash_points)


def _json(fields: dict[str, str]) -> str:
    return orjson.dumps(fields).decode()


def mark_sent(conn: Connection, seqs: Sequence[int]) -> None:
    """Mark the rows sent, in `conn`'s transaction. On PostgreSQL through the driver
    (`raw_rows`): an expanding IN list through SQLAlchemy was 7 % of the web's CPU."""
    if not seqs:
        return
    if conn.dialect.name == "postgresql":
        raw_rows(conn, _MARK_SENT_PG, {"seqs": list(seqs), "now": utcnow()})
    else:
        conn.execute(_MARK_SENT, {"seqs": list(seqs), "sent_at": utcnow()})


def republish_since(engine: Engine, client: redis.Redis, since: datetime, batch: int = 1000) -> int:
    """After Redis lost its data: publish again every row sent since `since`, with the same ids."""
    published, after = 0, 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.seq, outbox.c.stream, outbox.c.fields)
                .where(outbox.c.seq > after, outbox.c.created_at >= since)
                .order_by(outbox.c.seq).limit(batch)
            ).all()
        if not rows:
            return published
        pipe = client.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(row.stream, row.fields)
        pipe.execute()
        published += len(rows)
        after = rows[-1].seq


def delete_sent_before(engine: Engine, cutoff: datetime) -> int:
    """The outbox is a queue, not an archive: sent rows older than the re-drive window go."""
    with engine.begin() as conn:
        result = conn.execute(
            outbox.delete().where(outbox.c.sent_at.is_not(None), outbox.c.created_at < cutoff)
        )
    return result.rowcount or 0


def relay_once(engine: Engine, client: redis.Redis, *, grace: timedelta, limit: int = 500,
               crash_points: Collection[str] = ()) -> int:
    """Publish unsent rows older than `grace`; several relays may run at once."""
    cutoff = utcnow() - grace
    query = (
        select(outbox.c.seq, outbox.c.stream, outbox.c.fields)
        .where(outbox.c.sent_at.is_(None), outbox.c.created_at < cutoff)
        .order_by(outbox.c.seq)
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    with engine.begin() as conn:
        rows = [Pending(r.seq, r.stream, r.fields) for r in conn.execute(query)]
        if rows:
            _send(conn, client, rows, "relay", crash_points)
    return len(rows)


def _send(conn: Connection, client: redis.Redis, rows: Sequence[Pending], who: str,
          crash_points: Collection[str]) -> None:
    """XADD the rows in one round trip, then mark them sent in the caller's transaction; the
    crash points `<who>.before_xadd` and `<who>.after_xadd` bracket the XADD."""
    _xadd(client, rows, who, crash_points)
    mark_sent(conn, [p.seq for p in rows])


def _xadd(client: redis.Redis, rows: Sequence[Pending], who: str, crash_points: Collection[str]) -> None:
    crash_point(f"{who}.before_xadd", crash_points)
    pipe = client.pipeline(transaction=False)
    for row in rows:
        pipe.xadd(row.stream, row.fields)  # type: ignore[arg-type]
    pipe.execute()
    crash_point(f"{who}.after_xadd", crash_points)


# Built once: every batch runs them.
_ENQUEUE = insert(outbox).returning(outbox.c.seq, sort_by_parameter_order=True)
_CLAIM = (update(outbox)
          .where(outbox.c.seq.in_(bindparam("seqs", expanding=True)), outbox.c.sent_at.is_(None))
          .values(sent_at=bindparam("now")).returning(outbox.c.seq))
# PostgreSQL's, through the driver (`raw_rows`): the rows inserted in the order given, so their
# `seq`s (drawn in insertion order) sorted are theirs in that order.
_ENQUEUE_PG = ("INSERT INTO baton_outbox (message_id, stream, fields, created_at)"
               " SELECT m, s, f::json, %(now)b FROM unnest(%(ids)b::text[], %(streams)b::text[],"
               " %(fields)b::text[]) WITH ORDINALITY AS t(m, s, f, n) ORDER BY n RETURNING seq")
_MARK_SENT = update(outbox).where(outbox.c.seq.in_(bindparam("seqs", expanding=True)))
_MARK_SENT_PG = "UPDATE baton_outbox SET sent_at = %(now)b WHERE seq = ANY(%(seqs)b::bigint[])"
