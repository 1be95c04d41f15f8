"""The dead-letter stream: the original entry, kept verbatim, with why and where it failed."""

from __future__ import annotations

from typing import Any

import redis

from contracts.streams import Keys
from contracts.timefmt import format_ts, utcnow

# A dead letter keeps evidence, not a second copy of a flood: larger values are cut.
_MAX_VALUE = 64 * 1024


def send(client: redis.Redis, keys: Keys, participant: str, consumer: str, stream: str,
         entry_id: str, raw: dict[Any, Any] | None, reason: str, deliveries: int) -> None:
    fields: dict[Any, Any] = {}
    for key, value in (raw or {}).items():
        fields[key] = value[:_MAX_VALUE] if isinstance(value, bytes | str) else value
    fields.update({
        "dead_reason": reason[:2000],
        "dead_stream": stream,
        "dead_entry_id": entry_id,
        "dead_participant": participant,
        "dead_consumer": consumer,
        "dead_deliveries": str(deliveries),
        "dead_at": format_ts(utcnow()),
    })
    client.xadd(keys.dead_stream(participant), fields)
