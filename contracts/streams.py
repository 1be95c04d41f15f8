"""Every Redis key the project uses is spelled here, and only here."""

from __future__ import annotations

from dataclasses import dataclass

CONTROLLER = "controller"


@dataclass(frozen=True)
class Keys:
    prefix: str = "baton"

    def event_stream(self, message_type: str) -> str:
        return f"{self.prefix}:event:{message_type}"

    def command_stream(self, participant: str) -> str:
        return f"{self.prefix}:command:{participant}"

    def dead_stream(self, participant: str) -> str:
        return f"{self.prefix}:dead:{participant}"

    def last_errors(self, stream: str, group: str) -> str:
        """A hash of the last handler error per pending entry id of one stream and group."""
        return f"{self.prefix}:errors:{group}:{stream}"

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
