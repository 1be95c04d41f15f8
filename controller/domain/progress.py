"""Which of a workflow's progress reports (the events of its flow's `progress_on`, each with
`data.progress`, an object of counts) is its progress now.

The reports come on several streams, so the controller may record them out of order (a report
emitted before `repricing.completed` may be read after it), and one participant's batch gives the
reports it emits one `occurred_at`. The latest is the one that occurred last; of those that
occurred at one moment, the one that counts the most (counts only grow as work is done), then the
one recorded last."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any


def _counts_of(data: Any) -> dict[str, Any] | None:
    """A message's `data.progress`, when it is an object."""
    found = data.get("progress") if isinstance(data, dict) else None
    return found if isinstance(found, dict) else None


def latest(reports: Iterable[tuple[datetime, int, Any]]) -> dict[str, Any] | None:
    """Of (occurred_at, seq, data) each, the latest report's counts; None without any."""
    best: tuple[datetime, int, int] | None = None
    found: dict[str, Any] | None = None
    for occurred_at, seq, data in reports:
        counts = _counts_of(data)
        if counts is None:
            continue
        key = (occurred_at, sum(v for v in counts.values() if isinstance(v, int)), seq)
        if best is None or key > best:
            best, found = key, counts
    return found
