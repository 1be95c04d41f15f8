"""The one consume-dedupe-dispatch-ack loop over Redis Streams, for participants and the controller alike.

A batch read with XREADGROUP is handled in one database transaction: the processed-id rows (one
statement), the handlers' effects and their outbox rows commit together; then the outbox is published
and only then are the entries acknowledged (one pipeline, XADDs before XACKs, which Redis runs in
that order). The published rows are marked sent in the next batch's transaction, with its claims
in one statement (or, when no batch comes within MARK_WAIT_MS, in one of their own before the
consumer blocks on an empty stream): one commit per batch. If a handler fails, that transaction is
rolled back and the batch handled again with each message in its own savepoint, so only the
failing one is retried.
Entries left pending by a dead or failing consumer are reclaimed after a visibility timeout that
doubles with each delivery; after the last allowed delivery they go to the dead-letter stream, as do
malformed entries, at once; the last handler error of an entry is kept in Redis until it is
acknowledged, so that its dead letter says why, whichever consumer gives up on it. Outbox rows that
a crash or an outage left unpublished after their commit are published on the same schedule: when
the entry is redelivered it is a duplicate and emits nothing again, so the runtime itself must send
them.

Here the loop and its recovery (outages, Redis restarts, outbox rows left unsent); reading,
reclaiming, acks and dead letters in `reading`; a batch's transaction in `handling`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import redis
import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.runtime import connect, consumers, epoch, outbox, ticks
from participants.runtime.db import create_tables, lost_race
from participants.runtime.faults import crash_point
from participants.runtime.handling import BatchHandler
from participants.runtime.options import Options
from participants.runtime.participant import Participant
from participants.runtime.reading import Entry, Reader
from participants.runtime.startup import until_reachable
from participants.runtime.tables import metadata as runtime_metadata

__all__ = ["Options", "Runtime"]

log = structlog.get_logger("baton.runtime")
# How long a consumer with published rows not yet marked sent waits for the next batch to mark
# them in its commit, before it marks them in a transaction of their own and blocks (ms).
MARK_WAIT_MS = 100


@dataclass
class Runtime:
    participant: Participant
    engine: Engine
    client: redis.Redis  # decode_responses=False: garbage bytes must not break a read
    keys: Keys
    options: Options = field(default_factory=Options)
    consumer: str = ""  # its name in the groups: BATON_CONSUMER (Options), else `<host>-<pid>`
    _last_reclaim: float = 0.0
    _last_cleanup: float = 0.0
    _last_tick: float = 0.0
    _seen: epoch.Seen | None = None  # Redis at the last check; from the database at start
    _unmarked: list[int] = field(default_factory=list)  # outbox rows published, not yet marked sent
    _reader: Reader = field(init=False, repr=False)
    _handler: BatchHandler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.consumer = self.consumer or self.options.consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self._reader = Reader(self.participant, self.client, self.keys, self.options, self.consumer)
        self._handler = BatchHandler(self.participant, self.engine, self.keys, self.options.crash_points)

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
                    self._process(self._reader.read("0"))
                self.poll()
            except OperationalError as exc:
                if lost_race(exc):  # every retry lost too: not an outage; what it read, again
                    log.warning("a batch kept losing races (deadlocks): again", error=str(exc)[:200])
                    resume = True
                    continue
                # Read and claim nothing while the database is down: each claim would count as a
                # delivery and, over a long outage, send good entries to the dead letters.
                log.warning("database unavailable: not reading until it is back", error=str(exc)[:200])
                resume = self._wait_for_database(stop)
            except connect.UNAVAILABLE as exc:  # on a cluster, a failover under way too
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
        try:
            self._reader.leases.release()  # its partitions move now, not after the lease's TTL
        except redis.RedisError as exc:
            log.warning("leases left to expire", error=str(exc)[:200])
        log.info("participant stopped", participant=self.group)

    def _start(self) -> None:
        self.setup()
        self._recover_lost_redis()  # lost while no process of this consumer ran, too
        self._process(self._reader.read("0"))  # what this consumer name left pending, if anything

    def _wait_for_database(self, stop: threading.Event) -> bool:
        """Block until a trivial query succeeds (True, at most a second after the database is
        back) or `stop` is set (False)."""
        if not until_reachable(self._query_database, stop, "the database", longest_pause=1.0, quiet=True):
            return False
        log.info("database is back: resuming")
        return True

    def _query_database(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def poll(self) -> int:
        """One cycle: reclaim what is due, read a batch, handle it; returns entries handled."""
        handled = self._rebalance() + self._tick()
        if time.monotonic() - self._last_reclaim >= self.options.visibility_timeout / 2:
            self._recover_lost_redis()
            if self.options.relay_outbox:
                self._relay_outbox()
            handled += self.reclaim()
            self._last_reclaim = time.monotonic()
        began = time.monotonic()
        # With rows published but not marked, wait a little for the next batch, whose commit
        # marks them: under load one comes within milliseconds, and a commit of their own per
        # batch would double the commits. Only then mark them alone and block for long.
        wait = min(MARK_WAIT_MS, self.options.block_ms)
        entries = self._reader.read(">", block=wait) if self._unmarked else []
        if not entries:
            self._mark_sent()  # never block for long with rows published but not marked
            entries = self._reader.read(">", block=self.options.block_ms)
        if entries and len(entries) < self.options.read_count and self.options.linger_ms:
            # Time spent blocked counts: an idle consumer handles a lone message at once, a busy
            # one lets a batch fill for up to linger_ms.
            rest = self.options.linger_ms / 1000 - (time.monotonic() - began)
            if rest > 0:
                time.sleep(rest)
                entries += self._reader.read(">", count=self.options.read_count - len(entries))
        return handled + self._process(entries)

    def _rebalance(self) -> int:
        """Keep this consumer's share of the partitions it reads (`leases`); what was left pending
        on a partition it takes over is handled before anything new is read from it."""
        if not self._reader.leases.due():
            return 0
        return self._process(self._reader.take_over(self._reader.leases.refresh()))

    def _tick(self) -> int:
        """The participant's timer (`Participant.tick`), about every `tick_seconds`."""
        tick = self.participant.tick
        if tick is None or time.monotonic() - self._last_tick < self.participant.tick_seconds:
            return 0
        self._last_tick = time.monotonic()
        return ticks.run(self.participant, self.engine, self.client, self.keys,
                         self.options.crash_points)

    def _recover_lost_redis(self) -> None:
        """Compare what Redis shows with what this consumer saw last (in memory, or at start in
        its database), re-drive the outbox if data may be gone, then record what it saw."""
        if time.monotonic() - self._last_cleanup > 300:
            cutoff = utcnow() - timedelta(seconds=self.options.redrive_window)
            outbox.delete_sent_before(self.engine, cutoff)
            self._forget_dead_consumers()
            self._last_cleanup = time.monotonic()
        now = epoch.look(self.client, self.keys)
        if self._seen is None:
            with self.engine.connect() as conn:
                self._seen = epoch.load(conn, self.group, self.keys)
        change = epoch.change(self._seen, now)
        if change == epoch.RESTARTED:  # from its AOF: the last writes before it stopped may be gone
            assert self._seen is not None
            count = outbox.republish_since(self.engine, self.client, self._seen.at_risk_since)
            log.warning("Redis restarted: outbox rows of the last moments re-published", messages=count)
        elif change == epoch.LOST:
            self.setup()
            since = utcnow() - timedelta(seconds=self.options.redrive_window)
            count = outbox.republish_since(self.engine, self.client, since)
            log.warning("Redis lost its data: groups re-created, outbox re-published", messages=count)
        with self.engine.begin() as conn:  # only once re-driven: a crash before re-drives again
            epoch.save(conn, self.group, self.keys, now)
        self._seen = now

    def _forget_dead_consumers(self) -> None:
        """The consumers of replicas that are gone (each restart of a `<host>-<pid>` is a new one)."""
        limit = consumers.idle_limit(self.options.visibility_timeout)
        removed = consumers.forget_idle(self.client, self.participant.streams(self.keys), self.group,
                                        limit, keep=self.consumer)
        if removed:
            log.info("forgot consumers idle with nothing pending", consumers=removed, idle_seconds=limit)

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

    def reclaim(self) -> int:
        """Claim entries idle past their backoff and handle them; dead-letter those delivered too
        often. Returns the entries handled."""
        return self._process(self._reader.reclaim())

    def _process(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        good = [e for e in entries if self._reader.decode(e)]
        skipped: list[Entry] = []
        if self.participant.ignore is not None:
            ignored = [e.message is not None and self.participant.ignore(e.message) for e in good]
            skipped = [e for e, no in zip(good, ignored, strict=True) if no]
            good = [e for e, no in zip(good, ignored, strict=True) if not no]
        done: list[Entry] = list(skipped)
        pending: list[outbox.Pending] = []
        if good or not skipped:  # a batch of ignored entries alone needs no transaction
            done[:0], pending = self._handler.handle(good, self._unmarked)
            self._unmarked = []  # marked sent in that commit
        self._reader.remember_failures(good)
        points = self.options.crash_points
        crash_point("runtime.before_publish", points)
        pipe = self.client.pipeline(transaction=False)  # publish, then ack: one round trip
        outbox.send(pipe, pending, points)
        crash_point("runtime.before_ack", points)
        self._reader.ack(done, pipe)
        pipe.execute()
        self._unmarked += [p.seq for p in pending]
        return len(entries)

    def _mark_sent(self) -> None:
        if self._unmarked:
            with self.engine.begin() as conn:
                outbox.mark_sent(conn, self._unmarked)
            self._unmarked = []
