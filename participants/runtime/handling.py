"""Handling a batch of entries in one database transaction: the processed-id rows (one statement),
the handlers' effects and their outbox rows commit together. If a handler fails, that transaction
is rolled back and the batch handled again with each message in its own savepoint, so that only
the failing one is left for a retry. Both ways take the runtime's locks (processed ids, then the
participant's `lock` hook: the tracker's workflows) in the same sorted orders, and a transaction
chosen as a deadlock's victim is run again at once."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, delete
from sqlalchemy.exc import OperationalError

from contracts.envelope import COMMAND, EVENT, Envelope
from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.runtime import deadletter, joins, outbox
from participants.runtime.db import raw_rows, retry_lost_races, upsert
from participants.runtime.faults import crash_point
from participants.runtime.participant import Context, Participant
from participants.runtime.reading import Entry
from participants.runtime.tables import processed

log = structlog.get_logger("baton.runtime")
Handled = tuple[list[Entry], list[outbox.Pending]]  # the entries done, and the outbox rows to send


class _HandlerFailed(Exception):
    def __init__(self, message: Envelope) -> None:
        super().__init__(message.id)
        self.message = message


@dataclass(frozen=True)
class BatchHandler:
    participant: Participant
    engine: Engine
    keys: Keys
    crash_points: Collection[str]

    @property
    def group(self) -> str:
        return self.participant.name

    def handle(self, entries: list[Entry], unmarked: list[int]) -> Handled:
        """The whole batch in one transaction, which also marks the outbox rows `unmarked` sent;
        if a handler fails, the batch again, one savepoint per message, so that only the failing
        message is left for a retry. A transaction that lost a race (a deadlock) is run again at
        once: the database is fine."""
        return retry_lost_races(self._handle)(entries, unmarked)

    def _handle(self, entries: list[Entry], unmarked: list[int]) -> Handled:
        now = utcnow()
        for entry in entries:
            entry.error = None  # of an earlier attempt, lost to a race
        try:
            return self._handle_batch(entries, unmarked, now)
        except OperationalError:
            raise
        except _HandlerFailed as failed:  # that one is not run again before its retry
            msg = failed.message
            log.warning("handler failed", outcome="failed", error=repr(failed.__cause__)[:500],
                        correlation_id=msg.correlation_id, message_id=msg.id, type=msg.type)
            for entry in entries:
                if entry.message is not None and _key(entry.message) == _key(msg):
                    entry.error = deadletter.describe(failed.__cause__)
            return self._handle_each(entries, unmarked, now, skip=_key(msg))
        except Exception as exc:  # a batch handler's: which message is unknown
            log.info("a batch failed: again, message by message", error=repr(exc)[:300])
            return self._handle_each(entries, unmarked, now)

    def _handle_batch(self, entries: list[Entry], unmarked: list[int], now: Any) -> Handled:
        with self.engine.begin() as conn:
            # The previous batch's outbox rows are marked sent in this batch's commit.
            fresh = self._claim_all(conn, [_key(e.message) for e in entries if e.message], unmarked, now)
            todo: list[Envelope] = []
            for entry in entries:
                assert entry.message is not None
                key = _key(entry.message)
                if key in fresh:
                    fresh.discard(key)  # a second copy in the batch is a duplicate
                    todo.append(entry.message)
                else:
                    log.info("duplicate ignored", outcome="duplicate", message_id=entry.message.id,
                             correlation_id=entry.message.correlation_id, type=entry.message.type)
            emitted = self._dispatch_all(conn, todo, now)
            pending = outbox.enqueue(conn, self.keys, emitted, now)
        return entries, pending

    def _dispatch_all(self, conn: Connection, todo: list[Envelope], now: Any) -> list[Envelope]:
        outs: list[list[Envelope]] | None = None
        if self.participant.batch is not None and todo:
            crash_point("runtime.in_handler", self.crash_points)
            outs = self.participant.batch(conn, todo, now)
        emitted: list[Envelope] = []
        for i, msg in enumerate(todo):
            with structlog.contextvars.bound_contextvars(correlation_id=msg.correlation_id,
                                                         message_id=msg.id, type=msg.type):
                try:
                    out = self._checked(outs[i]) if outs is not None else self._dispatch(conn, msg, now)
                except OperationalError:
                    raise
                except Exception as exc:
                    raise _HandlerFailed(msg) from exc
                log.debug("handled", outcome="done", emitted=[e.type for e in out])
            emitted += out
        return emitted

    def _claim_all(self, conn: Connection, keys: list[str], unmarked: list[int], now: Any) -> set[str]:
        """Claim each message once for this consumer and mark the outbox rows `unmarked` sent: one
        statement on PostgreSQL (through the driver), two on SQLite. The keys claimed now."""
        # Sorted: two consumers inserting the same ids wait for each other in one order, not in two.
        claims = sorted(set(keys))
        if conn.dialect.name == "postgresql":
            if not claims and not unmarked:
                return set()
            params = {"consumer": self.group, "keys": claims, "seqs": unmarked, "now": now}
            return {r[0] for r in raw_rows(conn, _CLAIM_PG, params)}
        outbox.mark_sent(conn, unmarked)
        if not claims:
            return set()
        rows = [{"consumer": self.group, "message_id": k, "processed_at": now} for k in claims]
        return set(conn.execute(_claim_statement(conn.dialect.name), rows).scalars())

    def _handle_each(self, entries: list[Entry], unmarked: list[int], now: Any,
                     skip: str | None = None) -> Handled:
        """Every lock first, each kind in one sorted order and in the order of the batch path (the
        processed-id rows in one statement, then the participant's `lock`, the workflows' for the
        tracker): two consumers' fallbacks, or a fallback and a batch, never wait for each other
        in crossing orders. Then each message in a savepoint; a failed one gives its claim back."""
        done: list[Entry] = []
        emitted: list[Envelope] = []
        todo = [e.message for e in entries if e.message is not None and _key(e.message) != skip]
        with self.engine.begin() as conn:
            fresh = self._claim_all(conn, [_key(m) for m in todo], unmarked, now)
            if self.participant.lock is not None:
                self.participant.lock(conn, [m for m in todo if _key(m) in fresh])
            for entry in entries:
                msg = entry.message
                if msg is None or _key(msg) == skip:
                    continue
                if _key(msg) not in fresh:
                    log.info("duplicate ignored", outcome="duplicate", message_id=msg.id,
                             correlation_id=msg.correlation_id, type=msg.type)
                    done.append(entry)
                    continue
                fresh.discard(_key(msg))  # a second copy in the batch is a duplicate
                result = self._handle_one(conn, entry, now)
                if result is None:
                    conn.execute(_unclaim(self.group, _key(msg)))
                    continue
                done.append(entry)
                emitted += result
            pending = outbox.enqueue(conn, self.keys, emitted, now)
        return done, pending

    def _handle_one(self, conn: Connection, entry: Entry, now: Any) -> list[Envelope] | None:
        """What the claimed message emits, its effects in a savepoint; None when its handler failed."""
        msg = entry.message
        assert msg is not None
        with structlog.contextvars.bound_contextvars(correlation_id=msg.correlation_id,
                                                     message_id=msg.id, type=msg.type):
            try:
                with conn.begin_nested():
                    out = self._dispatch(conn, msg, now)
            except OperationalError:
                raise
            except Exception as exc:  # the handler's failure: retried after the visibility timeout
                log.warning("handler failed", outcome="failed", error=repr(exc)[:500])
                entry.error = deadletter.describe(exc)
                return None
            log.debug("handled", outcome="done", emitted=[e.type for e in out])
            return out

    def _dispatch(self, conn: Connection, msg: Envelope, now: Any) -> list[Envelope]:
        crash_point("runtime.in_handler", self.crash_points)
        if self.participant.batch is not None:
            return self._checked(self.participant.batch(conn, [msg], now)[0])
        ctx = Context(conn, msg, now, self.group, self.participant.registry)
        out: list[Envelope] = []
        table = self.participant.commands if msg.kind == COMMAND else self.participant.events
        handler = table.get(msg.type)
        if handler:
            out += handler(msg, ctx) or []
        for join in self.participant.joins:
            if msg.type in join.types:
                complete = joins.arrive(conn, self.group, join.name, join.types, msg)
                if complete:
                    out += join.handler(complete, ctx) or []
        return self._checked(out)

    def _checked(self, out: list[Envelope]) -> list[Envelope]:
        registry = self.participant.registry
        for emitted in out:  # nothing leaves unchecked, and nothing is checked twice
            if not registry.vouched(emitted):  # not built by ctx.event, nor by the tracker's effects
                registry.check(emitted.type, emitted.version, emitted.data)
        return out


def _key(msg: Envelope) -> str:
    """What is processed once. A retried command keeps its id but must be answered again (its
    answer may be lost): each attempt is processed once, and handlers keep their effects idempotent."""
    return msg.id if msg.kind == EVENT else f"{msg.id}#{msg.attempt}"


def _unclaim(consumer: str, key: str) -> Any:
    """A claim given back: its handler failed, and the message is to be retried."""
    return delete(processed).where(processed.c.consumer == consumer, processed.c.message_id == key)


# A data-modifying WITH runs whatever the main statement reads of it: the marking goes along.
# The keys are inserted in the order given (sorted in Python, as on SQLite).
_CLAIM_PG = ("WITH sent AS (UPDATE baton_outbox SET sent_at = %(now)b WHERE seq = ANY(%(seqs)b::bigint[]))"
             " INSERT INTO baton_processed (consumer, message_id, processed_at)"
             " SELECT %(consumer)b, k, %(now)b FROM unnest(%(keys)b::text[]) WITH ORDINALITY AS t(k, n)"
             " ORDER BY n"
             " ON CONFLICT DO NOTHING RETURNING message_id")


@cache
def _claim_statement(dialect: str) -> Any:
    return upsert(dialect, processed).on_conflict_do_nothing().returning(processed.c.message_id)
