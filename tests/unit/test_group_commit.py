"""GroupCommit with a stand-in for `start_workflows`: what queues during a commit goes in the next
one, each request gets its own outcome, and a group that fails as a whole is run request by request."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from sqlalchemy.exc import OperationalError

from controller.api.group_commit import GroupCommit
from controller.domain.errors import Conflict
from controller.service.start import Outcome, Started, StartRequest


def request(name: str) -> StartRequest:
    return StartRequest(flow="f", input={}, actor="a", correlation_id=name)


class Runs:
    """Records each group; the first waits for `release`; an item `boom` fails its whole group
    unless alone, when it raises; an item `taken` is its own 409."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, requests: Sequence[StartRequest]) -> list[Outcome]:
        names = [r.correlation_id or "" for r in requests]
        with self.lock:
            self.groups.append(names)
            first = len(self.groups) == 1
        if first:
            assert self.release.wait(10)
        if "boom" in names:
            raise RuntimeError("boom")
        return [Conflict(f"workflow {n} already exists") if n == "taken" else Started(n, True)
                for n in names]


def _queued(group: GroupCommit, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(group._queue) < n:  # the requests waiting for the next group
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.001)


def _run_all(group: GroupCommit, runs: Runs, later: list[str]) -> dict[str, Outcome | Exception]:
    """`first` leads a group held until the `later` requests all queued behind it."""
    answers: dict[str, Outcome | Exception] = {}

    def one(name: str) -> None:
        try:
            answers[name] = group.start(request(name))
        except Exception as exc:
            answers[name] = exc

    threads = [threading.Thread(target=one, args=("first",))]
    threads[0].start()
    while not runs.groups:
        time.sleep(0.001)
    threads += [threading.Thread(target=one, args=(n,)) for n in later]
    for t in threads[1:]:
        t.start()
    _queued(group, len(later))
    runs.release.set()
    for t in threads:
        t.join(10)
    return answers


def test_what_queues_during_a_commit_is_the_next_group_each_answered_on_its_own() -> None:
    runs = Runs()
    group = GroupCommit(runs)
    answers = _run_all(group, runs, ["a", "taken", "b", "c"])
    assert runs.groups[0] == ["first"]
    assert sorted(runs.groups[1]) == ["a", "b", "c", "taken"] and len(runs.groups) == 2
    assert isinstance(answers["taken"], Conflict)
    for name in ("first", "a", "b", "c"):
        started = answers[name]
        assert isinstance(started, Started) and started.correlation_id == name


def test_a_group_that_fails_as_a_whole_runs_each_request_alone() -> None:
    runs = Runs()
    group = GroupCommit(runs)
    answers = _run_all(group, runs, ["a", "boom", "b"])
    assert sorted(map(sorted, runs.groups[2:])) == [["a"], ["b"], ["boom"]]  # after the failed group
    assert isinstance(answers["boom"], RuntimeError)
    assert all(isinstance(answers[n], Started) for n in ("first", "a", "b"))


def test_a_failure_alone_is_raised_and_the_next_request_leads() -> None:
    runs = Runs()
    runs.release.set()
    group = GroupCommit(runs)
    with pytest.raises(RuntimeError):
        group.start(request("boom"))
    assert group.start(request("next")) == Started("next", True)


class DatabaseLost(Runs):
    """The group's COMMIT lost its connection: whether it committed is unknown."""

    def __call__(self, requests: Sequence[StartRequest]) -> list[Outcome]:
        super().__call__(requests)
        if len(self.groups) > 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return [Started(r.correlation_id or "", True) for r in requests]


def test_a_group_whose_database_failed_is_not_run_again_each_request_answers_the_error() -> None:
    runs = DatabaseLost()
    group = GroupCommit(runs)
    answers = _run_all(group, runs, ["a", "b", "c"])
    assert len(runs.groups) == 2  # the held first, then a, b, c once: never each again alone
    assert all(isinstance(answers[n], OperationalError) for n in ("a", "b", "c"))
    assert isinstance(answers["first"], Started)
