"""The one unit of work every writer of workflows goes through: lock, load, let the pure lifecycle
decide, save what changed, write the report's facts and the timeline, enqueue the outbox, commit,
publish.

The kickoff, the sweeper and the interventions open one with `unit_of_work(services, now, name)`:
it owns their transaction and publishes after the commit. The tracker runs inside the participant
runtime's transaction (one per batch, with the batch's processed-id rows): it builds a
`UnitOfWork` on that connection and hands what `flush` wrote back to the runtime, which enqueues
the messages in the same transaction and publishes them after its commit, as it does for every
consumer. Nothing else writes a workflow or publishes a controller's message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection

from config.flows import Catalog
from contracts import lifecycle_events as announce
from contracts.envelope import Envelope
from contracts.flows import Flow
from contracts.payloads import Registry
from controller.db import store
from controller.domain import lifecycle
from controller.domain.statuses import WorkflowStatus
from controller.reporting import facts as rf
from controller.reporting import store as report_store
from controller.service import effects
from controller.service.bootstrap import Services
from controller.service.unmarked import Unmarked
from participants.runtime import outbox
from participants.runtime.faults import crash_point

log = structlog.get_logger("baton.unit_of_work")


@dataclass
class _New:
    workflow: lifecycle.Workflow
    columns: dict[str, Any]  # who started it, its input, its idempotency key
    attributes: dict[str, str]
    early: bool  # messages of its correlation ID were recorded before it started


@dataclass
class UnitOfWork:
    conn: Connection
    catalog: Catalog
    registry: Registry
    now: datetime
    messages: list[Envelope] = field(default_factory=list)  # to publish, in order
    _loaded: dict[str, tuple[lifecycle.Workflow, lifecycle.Workflow]] = field(default_factory=dict)
    _new: list[_New] = field(default_factory=list)
    _timeline: list[Envelope] = field(default_factory=list)
    _untraced: set[str] = field(default_factory=set)  # ids whose report transitions are not looked for

    def lock(self, correlation_ids: Iterable[str], *, wait: bool = True) -> set[str]:
        """The workflow locks, in one sorted order; `wait=False` takes only the free ones."""
        return store.lock_many(self.conn, correlation_ids, wait=wait)

    def load(self, correlation_ids: Iterable[str], *, wait: bool = True) -> dict[str, lifecycle.Workflow]:
        """Lock, then load, the workflows of these IDs that exist (with `wait=False`, only those
        whose lock was free). Each is saved by `flush` if the lifecycle changed it."""
        found = store.load_many(self.conn, self.lock(correlation_ids, wait=wait))
        for cid, wf in found.items():
            self._loaded[cid] = (wf, _snapshot(wf))
        return found

    def before(self, wf: lifecycle.Workflow) -> lifecycle.Workflow:
        """The workflow as it was loaded."""
        return self._loaded[wf.correlation_id][1]

    def flow(self, wf: lifecycle.Workflow) -> Flow:
        return self.catalog.get(wf.flow, wf.flow_version)

    def add(self, wf: lifecycle.Workflow, columns: dict[str, Any], attributes: dict[str, str], *,
            early: bool) -> None:
        """A new workflow, inserted by `flush` (the caller holds its lock, if anyone could race)."""
        self._new.append(_New(wf, columns, attributes, early))

    def receive(self, batch: Iterable[Envelope]) -> None:
        """Messages that arrived (the tracker's batch): put on the timeline by `flush`."""
        self._timeline += batch

    def emit(self, message: Envelope, *, traced: bool = True) -> None:
        """A message of the controller's own (the start event): on the timeline, then published.
        `traced=False`: a new id no recorded message can name as its cause yet."""
        self._timeline.append(message)
        self.messages.append(message)
        if not traced:
            self._untraced.add(message.id)

    def apply(self, wf: lifecycle.Workflow, changes: list[lifecycle.Effect]) -> list[Envelope]:
        """The lifecycle's effects as messages, published after the commit; commands and emitted
        events also go on the workflow's timeline (lifecycle announcements do not)."""
        out = [effects.message_for(self.registry, wf, effect) for effect in changes]
        self._timeline += [m for m, e in zip(out, changes, strict=True)
                           if not isinstance(e, lifecycle.Announce)]
        self.messages += out
        return out

    def audit(self, row: dict[str, Any]) -> None:
        store.insert_audit(self.conn, row)

    def set_aside(self, wf: lifecycle.Workflow, exc: Exception, actor: str) -> list[Envelope]:
        """A workflow whose decision raised `exc`: saved as it was loaded (the lifecycle may have
        changed `wf` half-way), but `needs_attention`, announced, with the problem in its audit
        for an operator. Nothing falls due for it any more; the unit's other workflows are
        untouched. The announcement is returned (and published with the unit's messages)."""
        before = self.before(wf)
        problem = f"the {actor} cannot decide it: {self._problem(wf, exc)}"
        log.error("workflow set aside", correlation_id=wf.correlation_id, problem=problem)
        kept = replace(_snapshot(before), status=WorkflowStatus.NEEDS_ATTENTION)
        self._loaded[wf.correlation_id] = (kept, before)
        self.audit({"correlation_id": wf.correlation_id, "actor": actor, "action": "needs_attention",
                    "reason": problem, "at": self.now, "result": f"applied: {before.status} -> {kept.status}",
                    "details": None})
        return self.apply(kept, [lifecycle.Announce(announce.NEEDS_ATTENTION, kept.status, kept.reason)])

    def _problem(self, wf: lifecycle.Workflow, exc: Exception) -> str:
        if (wf.flow, wf.flow_version) not in self.catalog.flows:
            return f"flow {wf.flow} version {wf.flow_version} is not loaded"
        return f"{type(exc).__name__}: {exc}"

    def flush(self) -> list[Envelope]:
        """Write everything this unit decided, in the order the report's facts need (a new
        workflow before the messages that name it); the messages to publish. A unit is flushed
        once, at its end: what it loaded is written and forgotten (no snapshot taken again)."""
        self._insert_new()
        fresh = store.record_messages(self.conn, self._timeline, self.now)
        changed = [(wf, before) for wf, before in self._loaded.values() if wf != before]
        store.save_many(self.conn, changed)
        traced = [m for m in fresh if m.id not in self._untraced]
        states = [(rf.of_workflow(before), rf.of_workflow(wf)) for wf, before in changed]
        report_store.recorded_and_saved(self.conn, traced, states)  # one upsert, one delta
        sent, self.messages, self._timeline, self._new = self.messages, [], [], []
        self._loaded = {}
        return sent

    def _insert_new(self) -> None:
        if not self._new:
            return
        store.insert_workflows(self.conn, [(n.workflow, n.columns) for n in self._new],
                               {n.workflow.correlation_id: n.attributes for n in self._new})
        report_store.workflows_saved(self.conn, [({}, rf.of_workflow(n.workflow))
                                                 for n in self._new if not n.early])
        for n in self._new:
            if n.early:  # its facts, and the transitions among the messages recorded before it
                report_store.workflow_inserted(self.conn, n.workflow)

    def correlation_ids(self) -> list[str]:
        return sorted({*self._loaded, *(n.workflow.correlation_id for n in self._new)})


@contextmanager
def unit_of_work(services: Services, now: datetime, name: str,
                 unmarked: Unmarked | None = None) -> Iterator[UnitOfWork]:
    """A transaction of its own, committed when the block ends without an exception (rolled back
    otherwise), then its messages published; what fails to publish stays in the outbox for the
    relay. With `unmarked` (the API's kickoffs), the rows published earlier are marked sent in
    this transaction and this unit's are left to the next: one commit, not two (see
    `unmarked.py`). `<name>.before_commit` and `<name>.after_commit` are crash points (tests only)."""
    points, marking = services.settings.crash_points, unmarked.take() if unmarked else []
    try:
        with services.engine.begin() as conn:
            uow = UnitOfWork(conn, services.catalog, services.registry, now)
            yield uow
            cids = uow.correlation_ids()
            sent = uow.flush()
            outbox.mark_sent(conn, marking)
            crash_point(f"{name}.before_commit", points if sent else ())
            pending = outbox.enqueue(conn, services.keys, sent, now)
    except BaseException:
        if unmarked:
            unmarked.add(marking)  # still to mark: by the next unit
        raise
    crash_point(f"{name}.after_commit", points if pending else ())
    with _bound(cids):
        if unmarked is None:
            outbox.publish_or_leave(services.engine, services.redis, pending, points)
        else:
            _send(services, pending, unmarked)


def _send(services: Services, pending: list[outbox.Pending], unmarked: Unmarked) -> None:
    try:
        outbox.send(services.redis, pending, services.settings.crash_points)
    except outbox.LEFT_TO_THE_RELAY as exc:  # a cluster's slot errors are not RedisErrors
        log.warning("publish after commit failed; the relay will send it", error=repr(exc)[:200],
                    messages=len(pending))
        return
    unmarked.add([p.seq for p in pending])


def _bound(cids: list[str]) -> Any:
    """Log lines about one workflow carry its correlation ID."""
    return structlog.contextvars.bound_contextvars(**({"correlation_id": cids[0]} if len(cids) == 1 else {}))


def _snapshot(wf: lifecycle.Workflow) -> lifecycle.Workflow:
    """A copy to diff against after the lifecycle ran: each step and compensation copied, their
    values shared (the lifecycle replaces a result or a payload, never changes one in place)."""
    copied = _shallow(wf)
    copied.steps = {n: _shallow(s) for n, s in wf.steps.items()}
    copied.compensations = {n: _shallow(c) for n, c in wf.compensations.items()}
    copied.seen = dict(wf.seen)
    return copied


_T = TypeVar("_T")


def _shallow(obj: _T) -> _T:
    """`copy.copy` of a plain dataclass (no `__post_init__`), its attributes shared: 0.6 µs where
    `copy.copy` took 4.5 (its reduce protocol). A workflow of four steps is copied in about 4 µs
    instead of 13.7, and the tracker copies each one in every batch that loads it."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new

