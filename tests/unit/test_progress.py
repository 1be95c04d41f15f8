"""domain/progress.py: the latest of a workflow's progress reports, whatever order they were
recorded in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.domain.progress import latest

T = datetime(2026, 12, 2, tzinfo=UTC)


def report(done: int, failed: int = 0) -> dict[str, object]:
    return {"repricing_id": "r", "progress": {"skus": 40, "done": done, "failed": failed}}


def test_the_report_that_occurred_last_wins_even_when_recorded_first() -> None:
    assert latest([(T + timedelta(seconds=2), 1, report(40)), (T, 2, report(36))]) == \
        report(40)["progress"]


def test_of_reports_made_at_one_moment_the_one_that_counts_most_wins() -> None:
    assert latest([(T, 1, report(40)), (T, 2, report(36))]) == report(40)["progress"]


def test_at_one_moment_and_equal_sums_the_one_recorded_last_wins() -> None:
    assert latest([(T, 1, report(36, 1)), (T, 2, report(35, 2))]) == report(35, 2)["progress"]


def test_messages_without_an_object_of_counts_are_no_report() -> None:
    assert latest([(T, 1, {"progress": 3}), (T, 2, "x"), (T, 3, None)]) is None
    assert latest([]) is None
