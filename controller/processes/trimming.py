"""Keeps Redis memory bounded: trims each stream with MINID up to what every consumer group has
read and acknowledged, never past the oldest pending entry, nor past what a consumer the loaded
flows declare still needs. A stream that no group reads (`workflow.completed` for plain XREAD
subscribers, say), or that some declared consumer has no group on yet (a participant not started,
or whose group a loss of Redis took), is treated alike: an event stream keeps its last
`retention` seconds, a command stream is kept whole. The SQL database is the record."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import redis

from config.flows import Catalog
from contracts.flows import APPROVAL_STEP, COMMAND_STEP
from contracts.streams import CONTROLLER, Keys

Declared = Mapping[str, Collection[str]]  # stream -> the consumer groups the flows say read it


def declared_groups(catalog: Catalog, keys: Keys) -> dict[str, set[str]]:
    """The consumer groups each stream must have, from every loaded flow version: the tracker's on
    every event stream it reads, a participant's on the events its event steps react to, and on
    its command stream when one of its steps is sent a command or a compensation."""
    declared: dict[str, set[str]] = {}

    def need(stream: str, group: str) -> None:
        declared.setdefault(stream, set()).add(group)

    for t in catalog.event_types():
        for stream in keys.event_streams(t):  # a partitioned type's every partition
            need(stream, CONTROLLER)
    for flow in catalog.flows.values():
        for step in flow.steps:
            if step.kind == APPROVAL_STEP:
                continue  # an operator's, through the API
            if step.kind == COMMAND_STEP or step.compensation:
                need(keys.command_stream(step.participant), step.participant)
            if step.kind != COMMAND_STEP:  # a command step's triggers are the controller's
                for stream in (s for t in step.reacts_to for s in keys.event_streams(t)):
                    need(stream, step.participant)
    return declared


def safe_trim_id(client: redis.Redis, stream: str, declared: Collection[str] = (),
                 unread: str | None = None) -> str | None:
    """The id to trim `stream` to, never past the smallest one an existing group still needs.
    When one of the `declared` groups is missing (its consumer has not started, or its group
    went with Redis's data) the stream is kept whole: that consumer is owed every entry. When
    no group reads it and none is declared, no further than `unread` (an id of the retention's
    age; None: keep the stream whole)."""
    groups: Any = client.xinfo_groups(stream)
    if not set(declared) <= {_text(group["name"]) for group in groups}:
        return None
    needed = [_needed(client, stream, group) for group in groups]
    if not groups:
        if unread is None:
            return None
        needed.append(_parse(unread))
    low = min(needed)
    return f"{low[0]}-{low[1]}"


def _needed(client: redis.Redis, stream: str, group: Any) -> tuple[int, int]:
    if group["pending"]:
        summary: Any = client.xpending(stream, group["name"])
        return _parse(summary["min"])
    last = _parse(group["last-delivered-id"])
    return last[0], last[1] + 1  # everything up to it was read and acked


def trim_all(client: redis.Redis, keys: Keys, retention: float, declared: Declared) -> int:
    """Trim every event and command stream; returns the number of entries removed. `declared`:
    what `declared_groups` gives for the loaded flows. A command stream without a group is kept
    whole: its participant has not started yet, and is owed it."""
    seconds, micros = client.time()  # stream ids count the server's milliseconds
    by_age = f"{seconds * 1000 + micros // 1000 - int(retention * 1000)}-0"
    removed = 0
    for pattern, unread in ((keys.event_pattern(), by_age), (keys.command_pattern(), None)):
        for stream in client.scan_iter(match=pattern, count=500, _type="STREAM"):
            minid = safe_trim_id(client, stream, declared.get(_text(stream), ()), unread)
            if minid is not None:
                removed += int(client.xtrim(stream, minid=minid, approximate=False))
    return removed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)
