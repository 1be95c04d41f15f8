"""The dead-letter stream: the original entry, kept verbatim, with why and where it failed; and the
last handler error of each pending entry, kept in Redis so that whichever consumer gives up on the
entry, in whatever process, can say why."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from contracts.streams import Keys
from contracts.timefmt import format_ts, utcnow

# A dead letter keeps evidence, not a second copy of a flood: larger values are cut.
_MAX_VALUE = 64 * 1024
_MAX_ERROR = 500


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


def describe(exc: BaseException | None) -> str:
    """`RuntimeError: the card service is down`, cut to a length a dead letter can carry."""
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]


def remember(client: redis.Redis, keys: Keys, participant: str,
             failures: Iterable[tuple[str, str, str]], ttl_seconds: int) -> None:
    """Record (stream, entry id, error) of each failed handling, replacing the earlier error. The
    runtime deletes an entry's record when it acknowledges the entry; the expiry only bounds what
    a vanished stream or group would leave behind."""
    pipe = client.pipeline(transaction=False)
    for stream, entry_id, error in failures:
        key = keys.last_errors(stream, participant)
        pipe.hset(key, entry_id, error)
        pipe.expire(key, ttl_seconds)
    pipe.execute()


def forget(pipe: Any, keys: Keys, participant: str, stream: str, entry_ids: list[str]) -> None:
    """Queue on `pipe` (the acknowledgement's) the deletion of these entries' error records."""
    pipe.hdel(keys.last_errors(stream, participant), *entry_ids)


def last_error(client: redis.Redis, keys: Keys, participant: str, stream: str,
               entry_id: str) -> str | None:
    found: Any = client.hget(keys.last_errors(stream, participant), entry_id)
    return found.decode(errors="replace") if isinstance(found, bytes) else found
