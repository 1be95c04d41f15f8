"""Keeps Redis memory bounded: trims each stream with MINID up to what every consumer group has
read and acknowledged, never past the oldest pending entry. An event stream that no group reads
(`workflow.completed` for plain XREAD subscribers, say) keeps its last `retention` seconds. The
SQL database is the record."""

from __future__ import annotations

from typing import Any

import redis

from contracts.streams import Keys


def safe_trim_id(client: redis.Redis, stream: str) -> str | None:
    """The smallest id some group still needs; None when the stream has no group (keep it all)."""
    groups: Any = client.xinfo_groups(stream)
    if not groups:
        return None
    needed: list[tuple[int, int]] = []
    for group in groups:
        name = group["name"]
        if group["pending"]:
            summary: Any = client.xpending(stream, name)
            needed.append(_parse(summary["min"]))
        else:
            last = _parse(group["last-delivered-id"])
            needed.append((last[0], last[1] + 1))  # everything up to it was read and acked
    low = min(needed)
    return f"{low[0]}-{low[1]}"


def trim_all(client: redis.Redis, keys: Keys, retention: float) -> int:
    """Trim every event and command stream; returns the number of entries removed. A command
    stream without a group is kept whole: its participant has not started yet, and is owed it."""
    seconds, micros = client.time()  # stream ids count the server's milliseconds
    by_age = f"{seconds * 1000 + micros // 1000 - int(retention * 1000)}-0"
    removed = 0
    for pattern, unread in ((keys.event_pattern(), by_age), (keys.command_pattern(), None)):
        for stream in client.scan_iter(match=pattern, count=500, _type="STREAM"):
            minid = safe_trim_id(client, stream) or unread
            if minid is not None:
                removed += int(client.xtrim(stream, minid=minid, approximate=False))
    return removed


def _parse(entry_id: Any) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
