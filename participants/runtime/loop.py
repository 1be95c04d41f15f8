"""The one consume-dedupe-dispatch-ack loop over Redis Streams, for participants and the controller alike.

A batch read with XREADGROUP is handled in one database transaction: the processed-id rows (one
statement), the handlers' effects and their outbox rows commit together; then the outbox is published
and only then are the entries acknowledged. The published rows are marked sent in the next batch's
transaction (or in one of their own before the consumer blocks on an empty stream): one commit per
batch. If a handler fails, that transaction is rolled back and
the batch handled again with each message in its own savepoint, so only the failing one is retried.
Entries left pending by a dead or failing consumer are reclaimed after a visibility timeout that
doubles with each delivery; after the last allowed delivery they go to the dead-letter stream, as do
malformed entries, at once; the last handler error of an entry is kept in Redis until it is
acknowledged, so that its dead letter says why, whichever consumer gives up on it. Outbox rows that
a crash or an outage left unpublished after their commit are published on the same schedule: when
the entry is redelivered it is a duplicate and emits nothing again, so the runtime itself must send
them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import redis
import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from config.settings import Settings
from contracts.envelope import COMMAND, EVENT, Envelope, decode_fields
from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.runtime import deadletter, epoch, joins, outbox
from participants.runtime.db import create_tables, upsert
from participants.runtime.faults import crash_point
from participants.runtime.participant import Context, Participant
from participants.runtime.startup import until_reachable
from participants.runtime.tables import metadata as runtime_metadata
from participants.runtime.tables import processed

log = structlog.get_logger("baton.runtime")


class Malformed(Exception):
    """An entry that can never be processed: it goes to the dead-letter stream at once."""


class _HandlerFailed(Exception):
    def __init__(self, message: Envelope) -> None:
        super().__init__(message.id)
        self.message = message


_DEFAULTS = Settings()  # the documented defaults (config/settings.py): the one table of them
MAX_ENTRY_BYTES = 1_048_576  # a larger entry is dead-lettered unread


@dataclass(frozen=True)
class Options:
    """How a runtime reads, retries and dead-letters; each field is the setting of that name
    (`from_settings`), and one not given takes the setting's default."""

    visibility_timeout: float = _DEFAULTS.visibility_timeout
    max_deliveries: int = _DEFAULTS.max_deliveries
    read_count: int = _DEFAULTS.read_count
    block_ms: int = _DEFAULTS.block_ms
    # A batch that is not full is handled no sooner than this after its read began (time blocked
    # waiting counts): under load, fewer and larger batches, each costing one transaction.
    linger_ms: int = _DEFAULTS.linger_ms
    crash_points: Collection[str] = _DEFAULTS.crash_points
    redrive_window: float = _DEFAULTS.redrive_window  # seconds re-published after Redis lost its data
    # Publish this database's outbox rows left unsent. The controller's processes leave that to
    # the relay process; a participant's database has no other reader. Not a setting: a role.
    relay_outbox: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, relay_outbox: bool = True) -> Options:
        """`relay_outbox=False` for the controller's processes: the relay process publishes what
        they left unsent; a participant publishes its own."""
        configured = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name != "relay_outbox"}
        return cls(relay_outbox=relay_outbox, **configured)


@dataclass
class _Entry:
    stream: str
    entry_id: str
    raw: dict[bytes, bytes] | None
    deliveries: int = 1
    message: Envelope | None = None
    error: str | None = None  # the handler's, when this delivery failed


@dataclass
class Runtime:
    participant: Participant
    engine: Engine
    client: redis.Redis  # decode_responses=False: garbage bytes must not break a read
    keys: Keys
    options: Options = field(default_factory=Options)
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    _last_reclaim: float = 0.0
    _last_cleanup: float = 0.0
    _epoch: epoch.Watch = field(default_factory=epoch.Watch)
    _unmarked: list[int] = field(default_factory=list)  # outbox rows published, not yet marked sent

    @property
    def group(self) -> str:
        return self.participant.name

    def setup(self) -> None:
        """Create the runtime's tables, the participant's own, and the consumer groups."""
        extra = [self.participant.metadata] if self.participant.metadata else []
        create_tables(self.engine, runtime_metadata, *extra)
        if self.participant.on_setup:
            with self.engine.begin() as conn:
                self.participant.on_setup(conn)
        for stream in self.participant.streams(self.keys):
            try:
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, stop: threading.Event) -> None:
        if not until_reachable(self._start, stop, "the database and Redis"):
            return
        log.info("participant started", participant=self.group, consumer=self.consumer)
        resume = False
        while not stop.is_set():
            try:
                if resume:  # what it read while the database was down, without waiting to reclaim
                    resume = False
                    self._process(self._read("0"))
                self.poll()
            except OperationalError as exc:
                # Read and claim nothing while the database is down: each claim would count as a
                # delivery and, over a long outage, send good entries to the dead letters.
                log.warning("database unavailable: not reading until it is back", error=str(exc)[:200])
                resume = self._wait_for_database(stop)
            except redis.ConnectionError as exc:
                log.warning("backing off: Redis is unavailable", error=str(exc)[:200])
                stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self.setup()  # a group vanished: Redis restarted empty, or someone deleted it
                self._recover_lost_redis()
        try:
            self._mark_sent()
        except OperationalError as exc:  # the relay sends them again: consumers dedupe
            log.warning("published rows left unmarked", rows=len(self._unmarked), error=str(exc)[:200])
        log.info("participant stopped", participant=self.group)

    def _start(self) -> None:
        self.setup()
        self._epoch.changed(self.client, self.keys)  # remember the epoch this process starts in
        self._process(self._read("0"))  # what this consumer name left pending, if anything

    def _wait_for_database(self, stop: threading.Event) -> bool:
        """Block until a trivial query succeeds (True) or `stop` is set (False)."""
        while not stop.wait(1.0):
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except OperationalError:
                continue
            log.info("database is back: resuming")
            return True
        return False

    def poll(self) -> int:
        """One cycle: reclaim what is due, read a batch, handle it; returns entries handled."""
        handled = 0
        if time.monotonic() - self._last_reclaim >= self.options.visibility_timeout / 2:
            self._recover_lost_redis()
            if self.options.relay_outbox:
                self._relay_outbox()
            handled += self.reclaim()
            self._last_reclaim = time.monotonic()
        began = time.monotonic()
        entries = self._read(">") if self._unmarked else []
        if not entries:
            self._mark_sent()  # never block with rows published but not marked
            entries = self._read(">", block=self.options.block_ms)
        if entries and len(entries) < self.options.read_count and self.options.linger_ms:
            # Time spent blocked counts: an idle consumer handles a lone message at once, a busy
            # one lets a batch fill for up to linger_ms.
            rest = self.options.linger_ms / 1000 - (time.monotonic() - began)
            if rest > 0:
                time.sleep(rest)
                entries += self._read(">", count=self.options.read_count - len(entries))
        return handled + self._process(entries)

    def _recover_lost_redis(self) -> None:
        if time.monotonic() - self._last_cleanup > 300:
            cutoff = utcnow() - timedelta(seconds=self.options.redrive_window)
            outbox.delete_sent_before(self.engine, cutoff)
            self._last_cleanup = time.monotonic()
        change = self._epoch.changed(self.client, self.keys)
        if change == epoch.RESTARTED:  # from its AOF: the last writes before it stopped may be gone
            since = datetime.fromtimestamp(self._epoch.at_risk_since, UTC)
            count = outbox.republish_since(self.engine, self.client, since)
            log.warning("Redis restarted: outbox rows of the last moments re-published", messages=count)
        elif change == epoch.LOST:
            self.setup()
            since = utcnow() - timedelta(seconds=self.options.redrive_window)
            count = outbox.republish_since(self.engine, self.client, since)
            log.warning("Redis lost its data: groups re-created, outbox re-published", messages=count)

    def _relay_outbox(self) -> None:
        """Publish what this participant committed but never sent (killed, or Redis went away,
        between its commit and its XADD). Rows younger than a visibility timeout are left to
        their writer; a row being published by its writer is locked and skipped."""
        grace = timedelta(seconds=self.options.visibility_timeout)
        self._mark_sent()  # not its own rows again
        sent = outbox.relay_once(self.engine, self.client, grace=grace,
                                 crash_points=self.options.crash_points)
        if sent:
            log.warning("published outbox rows left unsent", participant=self.group, messages=sent)

    def _read(self, start: str, block: int | None = None, count: int | None = None) -> list[_Entry]:
        streams = {s: start for s in self.participant.streams(self.keys)}
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, streams,  # type: ignore[arg-type]
            count=count or self.options.read_count, block=block,
        )
        return [
            _Entry(_text(stream), _text(entry_id), fields or None)
            for stream, entries in reply or []
            for entry_id, fields in entries
        ]

    def reclaim(self) -> int:
        """Claim entries idle past their backoff; dead-letter those delivered too often."""
        claimed: list[_Entry] = []
        base_ms = int(self.options.visibility_timeout * 1000)
        for stream in self.participant.streams(self.keys):
            pending: Any = self.client.xpending_range(stream, self.group, "-", "+", 100, idle=base_ms)
            for p in pending:
                entry_id, count = _text(p["message_id"]), int(p["times_delivered"])
                if p["time_since_delivered"] < base_ms * min(2 ** (count - 1), 32):
                    continue
                if count >= self.options.max_deliveries:
                    self._dead_letter_by_id(stream, entry_id, count)
                    continue
                got: Any = self.client.xclaim(stream, self.group, self.consumer, base_ms, [entry_id])
                claimed += [_Entry(stream, _text(i), f or None, count + 1) for i, f in got]
        return self._process(claimed)

    def _process(self, entries: list[_Entry]) -> int:
        if not entries:
            return 0
        good = [e for e in entries if self._decode(e)]
        done, pending = self._handle(good)
        self._remember_failures(good)
        crash_point("runtime.before_publish", self.options.crash_points)
        outbox.send(self.client, pending, self.options.crash_points)
        self._unmarked += [p.seq for p in pending]
        crash_point("runtime.before_ack", self.options.crash_points)
        self._ack(done)
        return len(entries)

    def _mark_sent(self) -> None:
        if self._unmarked:
            with self.engine.begin() as conn:
                outbox.mark_sent(conn, self._unmarked)
            self._unmarked = []

    def _remember_failures(self, entries: list[_Entry]) -> None:
        failures = [(e.stream, e.entry_id, e.error) for e in entries if e.error]
        if failures:  # nothing to write, and no round trip, when every handler succeeded
            # Outlives the longest backoff (each wait at most 32 visibility timeouts) with room to spare.
            ttl = max(86400, int(32 * self.options.visibility_timeout * self.options.max_deliveries))
            deadletter.remember(self.client, self.keys, self.group, failures, ttl)

    def _decode(self, entry: _Entry) -> bool:
        try:
            if entry.raw is None:
                raise Malformed("entry was deleted from the stream before it was processed")
            size = sum(len(k) + len(v) for k, v in entry.raw.items())
            if size > MAX_ENTRY_BYTES:
                raise Malformed(f"entry of {size} bytes exceeds {MAX_ENTRY_BYTES}")
            entry.message = decode_fields(entry.raw)
            self._check_route(entry)
            self.participant.registry.validate(
                entry.message.type, entry.message.version, entry.message.data
            )
        except Exception as exc:  # never let one entry stop the consumer or block those behind it
            deadletter.send(self.client, self.keys, self.group, self.consumer, entry.stream,
                            entry.entry_id, entry.raw, str(exc), entry.deliveries)
            self._ack([entry])
            log.warning("dead-lettered", stream=entry.stream, entry=entry.entry_id, reason=str(exc))
            return False
        return True

    def _check_route(self, entry: _Entry) -> None:
        msg = entry.message
        assert msg is not None
        if entry.stream == self.keys.command_stream(self.group):
            if msg.kind != COMMAND or msg.target != self.group:
                raise Malformed(f"a {msg.kind} for {msg.target!r} on the command stream of {self.group}")
            if msg.type not in self.participant.commands:
                raise Malformed(f"{self.group} has no handler for command {msg.type}")
        elif msg.kind != EVENT or entry.stream != self.keys.event_stream(msg.type):
            raise Malformed(f"a {msg.kind} of type {msg.type} does not belong on {entry.stream}")

    def _handle(self, entries: list[_Entry]) -> tuple[list[_Entry], list[outbox.Pending]]:
        """The whole batch in one transaction; if a handler fails, the batch again, one savepoint
        per message, so that only the failing message is left for a retry."""
        now = utcnow()
        try:
            return self._handle_batch(entries, now)
        except OperationalError:
            raise
        except _HandlerFailed as failed:  # that one is not run again before its retry
            msg = failed.message
            log.warning("handler failed", outcome="failed", error=repr(failed.__cause__)[:500],
                        correlation_id=msg.correlation_id, message_id=msg.id, type=msg.type)
            for entry in entries:
                if entry.message is not None and _key(entry.message) == _key(msg):
                    entry.error = deadletter.describe(failed.__cause__)
            return self._handle_each(entries, now, skip=_key(msg))
        except Exception as exc:  # a batch handler's: which message is unknown
            log.info("a batch failed: again, message by message", error=repr(exc)[:300])
            return self._handle_each(entries, now)

    def _handle_batch(self, entries: list[_Entry], now: Any) -> tuple[list[_Entry], list[outbox.Pending]]:
        with self.engine.begin() as conn:
            outbox.mark_sent(conn, self._unmarked)  # the previous batch's, in this batch's commit
            fresh = self._claim_all(conn, [_key(e.message) for e in entries if e.message], now)
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
        self._unmarked = []
        return entries, pending

    def _dispatch_all(self, conn: Connection, todo: list[Envelope], now: Any) -> list[Envelope]:
        outs: list[list[Envelope]] | None = None
        if self.participant.batch is not None and todo:
            crash_point("runtime.in_handler", self.options.crash_points)
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

    def _claim_all(self, conn: Connection, keys: list[str], now: Any) -> set[str]:
        """Claim each message once for this consumer, in one statement; the keys claimed now."""
        if not keys:
            return set()
        rows = [{"consumer": self.group, "message_id": k, "processed_at": now} for k in dict.fromkeys(keys)]
        return set(conn.execute(_claim_statement(conn.dialect.name), rows).scalars())

    def _handle_each(self, entries: list[_Entry], now: Any,
                     skip: str | None = None) -> tuple[list[_Entry], list[outbox.Pending]]:
        done: list[_Entry] = []
        emitted: list[Envelope] = []
        with self.engine.begin() as conn:
            outbox.mark_sent(conn, self._unmarked)
            for entry in entries:
                if entry.message is not None and _key(entry.message) == skip:
                    continue
                result = self._handle_one(conn, entry, now)
                if result is not None:
                    done.append(entry)
                    emitted += result
            pending = outbox.enqueue(conn, self.keys, emitted, now)
        self._unmarked = []
        return done, pending

    def _handle_one(self, conn: Connection, entry: _Entry, now: Any) -> list[Envelope] | None:
        msg = entry.message
        assert msg is not None
        with structlog.contextvars.bound_contextvars(correlation_id=msg.correlation_id,
                                                     message_id=msg.id, type=msg.type):
            try:
                with conn.begin_nested():  # the processed row and the effects stand or fall together
                    if not self._claim(conn, msg, now):
                        log.info("duplicate ignored", outcome="duplicate")
                        return []
                    out = self._dispatch(conn, msg, now)
            except OperationalError:
                raise
            except Exception as exc:  # the handler's failure: retried after the visibility timeout
                log.warning("handler failed", outcome="failed", error=repr(exc)[:500])
                entry.error = deadletter.describe(exc)
                return None
            log.debug("handled", outcome="done", emitted=[e.type for e in out])
            return out

    def _claim(self, conn: Connection, msg: Envelope, now: Any) -> bool:
        return bool(self._claim_all(conn, [_key(msg)], now))

    def _dispatch(self, conn: Connection, msg: Envelope, now: Any) -> list[Envelope]:
        crash_point("runtime.in_handler", self.options.crash_points)
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
        for emitted in out:  # however it was built, nothing leaves unchecked
            self.participant.registry.validate(emitted.type, emitted.version, emitted.data)
        return out

    def _ack(self, entries: list[_Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        if not by_stream:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
            deadletter.forget(pipe, self.keys, self.group, stream, ids)  # same round trip
        pipe.execute()

    def _dead_letter_by_id(self, stream: str, entry_id: str, count: int) -> None:
        found: Any = self.client.xrange(stream, entry_id, entry_id)
        raw = found[0][1] if found else None
        reason = f"not acknowledged after {count} deliveries"
        error = deadletter.last_error(self.client, self.keys, self.group, stream, entry_id)
        if error:
            reason += f"; last error: {error}"
        deadletter.send(self.client, self.keys, self.group, self.consumer, stream, entry_id, raw,
                        reason, count)
        self._ack([_Entry(stream, entry_id, raw)])
        log.warning("dead-lettered", stream=stream, entry=entry_id, reason=reason)


def _key(msg: Envelope) -> str:
    """What is processed once. A retried command keeps its id but must be answered again (its
    answer may be lost): each attempt is processed once, and handlers keep their effects idempotent."""
    return msg.id if msg.kind == EVENT else f"{msg.id}#{msg.attempt}"


@cache
def _claim_statement(dialect: str) -> Any:
    return upsert(dialect, processed).on_conflict_do_nothing().returning(processed.c.message_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

