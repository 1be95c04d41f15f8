"""A participant's side of its streams: batch reads, reclaiming entries idle past their backoff,
checking each entry before a handler sees it, acks, and dead letters (malformed entries at once,
others after their last allowed delivery, with the last handler error kept to say why)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from contracts.envelope import COMMAND, EVENT, Envelope, decode_fields
from contracts.streams import Keys
from participants.runtime import connect, deadletter
from participants.runtime.leases import Leases
from participants.runtime.options import MAX_ENTRY_BYTES, Options
from participants.runtime.participant import Participant

log = structlog.get_logger("baton.runtime")
# On a cluster, how long one round of reads over every slot blocks at most when all are empty
# (ms), shared among the slots: a message that arrives meanwhile waits about this much at most.
ROUND_BLOCK_MS = 100


class Malformed(Exception):
    """An entry that can never be processed: it goes to the dead-letter stream at once."""


@dataclass
class Entry:
    stream: str
    entry_id: str
    raw: dict[bytes, bytes] | None
    deliveries: int = 1
    message: Envelope | None = None
    error: str | None = None  # the handler's, when this delivery failed


@dataclass(frozen=True)
class Reader:
    participant: Participant
    client: redis.Redis  # decode_responses=False: garbage bytes must not break a read
    keys: Keys
    options: Options
    consumer: str
    _turns: Iterator[int] = field(default_factory=itertools.count, repr=False)
    leases: Leases = field(init=False)
    _streams: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        streams = self.participant.streams(self.keys)
        partitions = [s for s in streams if self.keys.is_partition(s)]
        object.__setattr__(self, "_streams", streams)  # the handlers are registered: fixed now
        object.__setattr__(self, "leases", Leases(
            self.client, self.keys, self.group, self.consumer, partitions,
            ttl=self.options.visibility_timeout))

    @property
    def group(self) -> str:
        return self.participant.name

    def reading(self) -> list[str]:
        """The streams this consumer reads now: every one of its participant's but the partitions
        of partitioned types, of which only those it holds the lease of (`leases`)."""
        if not self.leases.partitions:
            return self._streams
        owned, partitions = self.leases.held(), set(self.leases.partitions)
        return [s for s in self._streams if s in owned or s not in partitions]

    def read(self, start: str, block: int | None = None, count: int | None = None) -> list[Entry]:
        """One XREADGROUP over the consumer's streams; on a cluster one per hash slot they fall
        in (`connect.by_slot`), each blocking for its share of ROUND_BLOCK_MS, and only while the
        slots read before it had nothing."""
        streams = self.reading()
        if not streams:  # every stream it reads is a partition, and none is its share now
            time.sleep((block or 0) / 1000)
            return []
        groups = connect.by_slot(self.client, streams)
        if len(groups) > 1:  # each slot in turn comes first: a busy one cannot starve the rest
            turn = next(self._turns) % len(groups)
            groups = groups[turn:] + groups[:turn]
            block = None if block is None else min(block, max(2, ROUND_BLOCK_MS // len(groups)))
        found: list[Entry] = []
        for group in groups:
            found += self._read(group, start, None if found else block,
                                (count or self.options.read_count) - len(found))
            if len(found) >= (count or self.options.read_count):
                break
        return found

    def _read(self, streams: list[str], start: str, block: int | None, count: int) -> list[Entry]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, dict.fromkeys(streams, start),
            count=count, block=block,
        )
        return [
            Entry(_text(stream), _text(entry_id), fields or None)
            for stream, entries in reply or []
            for entry_id, fields in entries
        ]

    def take_over(self, partitions: list[str]) -> list[Entry]:
        """Claim every entry left pending on partitions whose lease this consumer just took
        (their last reader crashed, or handed them over), to be handled before any new one."""
        claimed: list[Entry] = []
        for stream in partitions:
            start: str | None = "-"
            while start:
                batch, start = self._claim_pending(stream, 0, backoff=False, start=start)
                claimed += batch
        return claimed

    def reclaim(self) -> list[Entry]:
        """Claim entries idle past their backoff; dead-letter those delivered too often."""
        claimed: list[Entry] = []
        base_ms = int(self.options.visibility_timeout * 1000)
        for stream in self.reading():
            claimed += self._claim_pending(stream, base_ms, backoff=True)[0]
        return claimed

    def _claim_pending(self, stream: str, base_ms: int, *, backoff: bool,
                       start: str = "-") -> tuple[list[Entry], str | None]:
        """What it claimed of a page of pending entries from `start`, and where the next page
        starts (None: that was the last)."""
        claimed: list[Entry] = []
        pending: Any = self.client.xpending_range(stream, self.group, start, "+", 100,
                                                  idle=base_ms or None)
        for p in pending:
            entry_id, count = _text(p["message_id"]), int(p["times_delivered"])
            if backoff and p["time_since_delivered"] < base_ms * min(2 ** (count - 1), 32):
                continue
            if count >= self.options.max_deliveries:
                self._dead_letter_by_id(stream, entry_id, count)
                continue
            got: Any = self.client.xclaim(stream, self.group, self.consumer, base_ms, [entry_id])
            claimed += [Entry(stream, _text(i), f or None, count + 1) for i, f in got]
        last = _text(pending[-1]["message_id"]) if len(pending) == 100 else None
        return claimed, last and f"({last}"

    def decode(self, entry: Entry) -> bool:
        """Decode and check the entry (True), or dead-letter and acknowledge it (False)."""
        try:
            if entry.raw is None:
                raise Malformed("entry was deleted from the stream before it was processed")
            size = sum(len(k) + len(v) for k, v in entry.raw.items())
            if size > MAX_ENTRY_BYTES:
                raise Malformed(f"entry of {size} bytes exceeds {MAX_ENTRY_BYTES}")
            entry.message = decode_fields(entry.raw)
            self._check_route(entry)
            self.participant.registry.check(entry.message.type, entry.message.version, entry.message.data)
        except Exception as exc:  # never let one entry stop the consumer or block those behind it
            deadletter.send(self.client, self.keys, self.group, self.consumer, entry.stream,
                            entry.entry_id, entry.raw, str(exc), entry.deliveries)
            self.ack([entry])
            log.warning("dead-lettered", stream=entry.stream, entry=entry.entry_id, reason=str(exc))
            return False
        return True

    def _check_route(self, entry: Entry) -> None:
        msg = entry.message
        assert msg is not None
        if entry.stream == self.keys.command_stream(self.group):
            if msg.kind != COMMAND or msg.target != self.group:
                raise Malformed(f"a {msg.kind} for {msg.target!r} on the command stream of {self.group}")
            if msg.type not in self.participant.commands:
                raise Malformed(f"{self.group} has no handler for command {msg.type}")
        elif msg.kind != EVENT or entry.stream != self.keys.stream_of(msg.type, msg.data):
            raise Malformed(f"a {msg.kind} of type {msg.type} does not belong on {entry.stream}")

    def remember_failures(self, entries: list[Entry]) -> None:
        failures = [(e.stream, e.entry_id, e.error) for e in entries if e.error]
        if failures:  # nothing to write, and no round trip, when every handler succeeded
            # Outlives the longest backoff (each wait at most 32 visibility timeouts) with room to spare.
            ttl = max(86400, int(32 * self.options.visibility_timeout * self.options.max_deliveries))
            deadletter.remember(self.client, self.keys, self.group, failures, ttl)

    def ack(self, entries: list[Entry], pipe: Any = None) -> None:
        """Acknowledge the entries (and forget their errors) in one round trip; queued on `pipe`
        instead when given, for the caller to execute."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        own = pipe is None
        if not by_stream:
            return
        pipe = self.client.pipeline(transaction=False) if own else pipe
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
            deadletter.forget(pipe, self.keys, self.group, stream, ids)  # same round trip
        if own:
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
        self.ack([Entry(stream, entry_id, raw)])
        log.warning("dead-lettered", stream=stream, entry=entry_id, reason=reason)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
