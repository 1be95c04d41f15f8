"""A participant's timer: its `tick` (participant.py), run by the loop in a transaction of its own.
What falls due lives in the participant's tables, with the effect of acting on it, so a crash
loses nothing and acts twice on nothing; what it emits is written to the outbox in that
transaction and published after the commit (else by the relay), as a handler's messages are."""

from __future__ import annotations

from collections.abc import Collection

import redis
from sqlalchemy import Engine

from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.runtime import outbox
from participants.runtime.participant import Participant


def run(participant: Participant, engine: Engine, client: redis.Redis, keys: Keys,
        crash_points: Collection[str] = ()) -> int:
    """One tick: the messages it emitted, published (or left to the relay if Redis is away)."""
    assert participant.tick is not None
    now = utcnow()
    registry = participant.registry
    with engine.begin() as conn:
        emitted = list(participant.tick(conn, now) or [])
        for message in emitted:  # nothing leaves unchecked
            if not registry.vouched(message):
                registry.check(message.type, message.version, message.data)
        pending = outbox.enqueue(conn, keys, emitted, now)
    outbox.publish_or_leave(engine, client, pending, crash_points)
    return len(emitted)
