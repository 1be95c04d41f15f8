"""Every Redis key the project uses is spelled here, and only here, with the one rule that picks
the partition of an event of a partitioned type (`partition_of`)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONTROLLER = "controller"
MAX_PARTITIONS = 256


@dataclass(frozen=True)
class Partitioning:
    """An event type appended to `P:event:<type>:<n>`, n from the string value of `data[field]`."""

    field: str
    partitions: int


def partition_of(key: str, partitions: int) -> int:
    """CRC-32 (IEEE 802.3, as zlib.crc32) of the key's UTF-8 bytes, unsigned, modulo `partitions`:
    a rule any language can apply (docs/wire-format.md has test vectors)."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def partition_key(value: Any) -> str:
    """The string a partition key's value is hashed as: a string as it is, an integer in decimal
    (the declared field is one or the other)."""
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Keys:
    prefix: str = "baton"
    # The partitioned event types (declared in flow files); every other type has one stream.
    partitioned: Mapping[str, Partitioning] = field(default_factory=dict, compare=False)

    def event_stream(self, message_type: str) -> str:
        """The stream of an unpartitioned event type (the contract's `P:event:<type>`)."""
        return f"{self.prefix}:event:{message_type}"

    def partition_stream(self, message_type: str, n: int) -> str:
        return f"{self.prefix}:event:{message_type}:{n}"

    def event_streams(self, message_type: str) -> list[str]:
        """Every stream events of this type are appended to: its partitions, or its one stream."""
        part = self.partitioned.get(message_type)
        if part is None:
            return [self.event_stream(message_type)]
        return [self.partition_stream(message_type, n) for n in range(part.partitions)]

    def stream_of(self, message_type: str, data: Mapping[str, Any]) -> str:
        """The stream one event of this type with this `data` is appended to."""
        part = self.partitioned.get(message_type)
        if part is None:
            return self.event_stream(message_type)
        n = partition_of(partition_key(data.get(part.field, "")), part.partitions)
        return self.partition_stream(message_type, n)

    def is_partition(self, stream: str) -> bool:
        head, _, tail = stream.rpartition(":")
        return tail.isdigit() and head.removeprefix(f"{self.prefix}:event:") in self.partitioned

    def command_stream(self, participant: str) -> str:
        return f"{self.prefix}:command:{participant}"

    def dead_stream(self, participant: str) -> str:
        return f"{self.prefix}:dead:{participant}"

    def last_errors(self, stream: str, group: str) -> str:
        """A hash of the last handler error per pending entry id of one stream and group."""
        return f"{self.prefix}:errors:{group}:{stream}"

    def partition_lease(self, group: str, stream: str) -> str:
        """Who of `group`'s consumers reads the partition `stream` now (a value with a TTL)."""
        return f"{self.prefix}:lease:{group}:{stream}"

    def members(self, group: str) -> str:
        """A sorted set of `group`'s live consumers of partitions, scored by their last beat (ms)."""
        return f"{self.prefix}:members:{group}"

    def dead_pattern(self) -> str:
        return f"{self.prefix}:dead:*"

    def event_pattern(self) -> str:
        return f"{self.prefix}:event:*"

    def command_pattern(self) -> str:
        return f"{self.prefix}:command:*"

    def epoch(self) -> str:
        """A marker whose disappearance means Redis lost its data."""
        return f"{self.prefix}:epoch"

    def epoch_on(self, n: int) -> str:
        """The epoch marker of one primary of a Redis Cluster: the hash tag `{n}` puts it in a
        slot that primary serves (participants/runtime/epoch.py picks n)."""
        return f"{self.prefix}:epoch:{{{n}}}"

    def alert_queued(self, message_id: str) -> str:
        """Set once the alert of a `workflow.needs_attention` is queued: it is queued only once."""
        return f"{self.prefix}:alert-queued:{message_id}"

    def lease(self, name: str) -> str:
        """Held by the one active process of a kind (`clock`) while it lives; see processes/lease.py."""
        return f"{self.prefix}:lease:{name}"

    def rq_queue(self, name: str) -> str:
        return f"{self.prefix}-{name}"
