"""Read models for the API: a workflow as clients see it, its timeline, and filtered listings."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, and_, or_, select

from config.flows import Catalog
from contracts.flows import Flow
from contracts.timefmt import format_ts, parse_ts
from controller.db.tables import attributes, compensations, messages, steps, workflows
from controller.db.tables import audit as audit_table
from controller.domain import progress as domain_progress
from controller.domain.errors import InvalidInput, NotFound
from controller.domain.statuses import StepStatus, WorkflowStatus


def _ts(value: datetime | None) -> str | None:
    return format_ts(value) if value else None


def workflow(conn: Connection, catalog: Catalog, cid: str, actor: str | None = None) -> dict[str, Any]:
    """`actor` set: a starter, who sees only what it started (404 otherwise)."""
    row = conn.execute(select(workflows).where(workflows.c.correlation_id == cid)).first()
    if row is None or (actor is not None and row.started_by != actor):
        raise NotFound(f"no workflow {cid}")
    step_rows = {s.name: s for s in conn.execute(select(steps).where(steps.c.correlation_id == cid))}
    comp_rows = conn.execute(select(compensations).where(compensations.c.correlation_id == cid))
    attrs = conn.execute(select(attributes.c.name, attributes.c.value)
                         .where(attributes.c.correlation_id == cid))
    flow = catalog.flows.get((row.flow, row.flow_version))
    reasons = failure_reasons(conn, flow, cid, step_rows) if flow else {}
    view = render(flow or _Unloaded.of(step_rows), row, row.started_by, row.input, step_rows,
                  list(comp_rows), {a.name: a.value for a in attrs}, reasons)
    if flow and flow.progress_on:
        view["progress"] = progress(conn, flow, cid)
    return view


def progress(conn: Connection, flow: Flow, cid: str) -> dict[str, Any] | None:
    """The `progress` of the latest event of `flow.progress_on` the workflow recorded
    (domain/progress.py: a few rows, the per-unit state staying with the participant that counts)."""
    rows = conn.execute(select(messages.c.occurred_at, messages.c.seq, messages.c.data).where(
        messages.c.correlation_id == cid, messages.c.type.in_(flow.progress_on)))
    return domain_progress.latest((r.occurred_at, r.seq, r.data) for r in rows)


@dataclass(frozen=True)
class _UnloadedStep:
    name: str
    kind: str | None = None
    participant: str | None = None


@dataclass(frozen=True)
class _Unloaded:
    """A flow version no longer loaded: its workflows are shown from their rows alone (each
    step's name and state, not its kind or participant) rather than answered with a 500."""

    steps: tuple[_UnloadedStep, ...]

    @classmethod
    def of(cls, step_rows: Mapping[str, Any]) -> _Unloaded:
        return cls(tuple(_UnloadedStep(name) for name in step_rows))


def failure_reasons(conn: Connection, flow: Flow, cid: str,
                    step_states: Mapping[str, Any]) -> dict[str, str]:
    """Why each failed step failed, read from the timeline (a failed step keeps no message): the
    `data.reason` of the last failed event of the step (a command step's last `_failed` answer);
    for a done event that matched `fails_when`, its `reason` or the match; for a command step
    without such a message, that it ran out of attempts unanswered. One query, and only when a
    step failed."""
    failed = [s for s in flow.steps
              if (r := step_states.get(s.name)) is not None and r.status == StepStatus.FAILED]
    if not failed:
        return {}
    types = {t for s in failed for t in (s.failed_on, s.done_on if s.fails_when else None) if t}
    seen: dict[str, list[dict[str, Any]]] = {}
    if types:
        for m in conn.execute(select(messages.c.type, messages.c.data)
                              .where(messages.c.correlation_id == cid, messages.c.type.in_(types))
                              .order_by(messages.c.seq)):
            seen.setdefault(m.type, []).append(m.data if isinstance(m.data, dict) else {})
    reasons = {}
    for step in failed:
        answers = seen.get(step.failed_on or "", [])
        matched = [d for d in seen.get(step.done_on, []) if step.fails_when
                   and all(d.get(k) == v for k, v in step.fails_when)]
        if answers:
            reasons[step.name] = str(answers[-1].get("reason") or f"{step.failed_on} (no reason given)")
        elif matched:
            reasons[step.name] = str(matched[-1].get("reason") or f"{step.done_on} with " + ", ".join(
                f"{k}={v}" for k, v in step.fails_when))
        elif step.command:
            attempts = step_states[step.name].attempts
            reasons[step.name] = f"{step.command} unanswered after {attempts} attempts"
    return reasons


def render(flow: Flow | _Unloaded, wf: Any, started_by: str, input_: Any, step_states: Mapping[str, Any],
           comps: Iterable[Any], attrs: dict[str, str],
           reasons: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A workflow as clients see it, from its rows or from the lifecycle's objects alike;
    `reasons`: why each failed step failed (`failure_reasons`)."""
    return {
        "correlation_id": wf.correlation_id, "flow": wf.flow, "flow_version": wf.flow_version,
        "status": wf.status, "reason": wf.reason, "started_at": _ts(wf.started_at),
        "deadline": _ts(wf.deadline), "finished_at": _ts(wf.finished_at),
        "started_by": started_by, "input": input_,
        "search_attributes": attrs,
        "steps": [_step(s.name, s.kind, s.participant, step_states.get(s.name),
                        (reasons or {}).get(s.name)) for s in flow.steps],
        "compensations": [
            {"step": c.step, "command": c.command, "status": c.status, "attempts": c.attempts,
             "sent_at": _ts(c.sent_at), "finished_at": _ts(c.finished_at)}
            for c in sorted(comps, key=lambda c: c.position)
        ],
    }


def _step(name: str, kind: str | None, participant: str | None, row: Any,
          reason: str | None) -> dict[str, Any]:
    return {
        "name": name, "kind": kind, "participant": participant,
        "status": row.status if row else StepStatus.PENDING,
        "started_at": _ts(row.started_at) if row else None,
        "finished_at": _ts(row.finished_at) if row else None,
        "deadline": _ts(row.deadline) if row else None,
        "attempts": row.attempts if row else 0,
        "reason": reason,
    }


def timeline(conn: Connection, cid: str, limit: int, cursor: str | None) -> dict[str, Any]:
    after = _seq_cursor(cursor)
    rows = conn.execute(
        select(messages).where(messages.c.correlation_id == cid, messages.c.seq > after)
        .order_by(messages.c.seq).limit(limit + 1)
    ).all()
    items = [
        {"id": m.id, "kind": m.kind, "type": m.type, "version": m.version, "source": m.source,
         "causation_id": m.causation_id, "target": m.target, "occurred_at": _ts(m.occurred_at),
         "received_at": _ts(m.received_at), "data": m.data}
        for m in rows[:limit]
    ]
    more = len(rows) > limit
    return {"items": items, "next_cursor": _encode_cursor([rows[limit - 1].seq]) if more else None}


def _seq_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    value = _decode_cursor(cursor)[0]
    if not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidInput("cursor is not one this server issued", {"cursor": ["invalid"]})
    return value


def audit(conn: Connection, cid: str, limit: int, cursor: str | None) -> dict[str, Any]:
    rows = conn.execute(select(audit_table).where(audit_table.c.correlation_id == cid,
                                                  audit_table.c.seq > _seq_cursor(cursor))
                        .order_by(audit_table.c.seq).limit(limit + 1)).all()
    items = [{"actor": r.actor, "action": r.action, "reason": r.reason, "at": _ts(r.at),
              "result": r.result, "details": r.details} for r in rows[:limit]]
    more = len(rows) > limit
    return {"items": items, "next_cursor": _encode_cursor([rows[limit - 1].seq]) if more else None}


@dataclass(frozen=True)
class Filters:
    flow: str | None = None
    status: str | None = None
    reason: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    overdue: bool = False
    attributes: tuple[tuple[str, str], ...] = ()
    started_by: str | None = None
    stalled_step: str | None = None  # that step active past its deadline

    @classmethod
    def of(cls, given: dict[str, Any], attributes: dict[str, str],
           started_by: str | None = None) -> Filters:
        """From a validated filter (a listing's query, a bulk action's `filter`)."""
        return cls(
            flow=given.get("flow"), status=given.get("status"), reason=given.get("reason"),
            started_after=given.get("started_after"), started_before=given.get("started_before"),
            overdue=bool(given.get("overdue")), stalled_step=given.get("stalled_step"),
            attributes=tuple(sorted(attributes.items())), started_by=started_by,
        )


def matching(conn: Connection, filters: Filters, limit: int, now: datetime) -> list[str]:
    """Correlation IDs matching `filters`, newest first: what a bulk action touches."""
    query = select(workflows.c.correlation_id).where(*_conditions(filters, now))
    query = query.order_by(workflows.c.started_at.desc(), workflows.c.correlation_id.desc())
    return list(conn.execute(query.limit(limit)).scalars())


def list_workflows(conn: Connection, catalog: Catalog, filters: Filters, limit: int,
                   cursor: str | None, now: datetime) -> dict[str, Any]:
    query = select(workflows.c.correlation_id, workflows.c.started_at)
    query = query.where(*_conditions(filters, now))
    if cursor:
        started, cid = _cursor_position(cursor)
        moment = started
        query = query.where(or_(workflows.c.started_at < moment,
                                and_(workflows.c.started_at == moment, workflows.c.correlation_id < cid)))
    query = query.order_by(workflows.c.started_at.desc(), workflows.c.correlation_id.desc())
    rows = conn.execute(query.limit(limit + 1)).all()
    items = summaries(conn, [r.correlation_id for r in rows[:limit]])
    last = rows[limit - 1] if len(rows) > limit else None
    return {"items": items,
            "next_cursor": _encode_cursor([format_ts(last.started_at), last.correlation_id])
            if last else None}


def summaries(conn: Connection, cids: list[str]) -> list[dict[str, Any]]:
    """A list page's items, in the order of `cids`: the workflow's own fields and its search
    attributes, two queries for the page; never its input (up to the body limit) or steps."""
    rows = {r.correlation_id: r for r in conn.execute(
        select(*(workflows.c[k] for k in SUMMARY_COLUMNS)).where(workflows.c.correlation_id.in_(cids)))}
    attrs: dict[str, dict[str, str]] = {cid: {} for cid in cids}
    for a in conn.execute(select(attributes).where(attributes.c.correlation_id.in_(cids))):
        attrs[a.correlation_id][a.name] = a.value
    return [{**{k: _ts(v) if isinstance(v, datetime) else v for k, v in rows[cid]._mapping.items()},
             "search_attributes": attrs[cid]} for cid in cids]


SUMMARY_COLUMNS = ("correlation_id", "flow", "flow_version", "status", "reason", "started_at",
                   "deadline", "finished_at", "started_by")


def _conditions(f: Filters, now: datetime) -> list[Any]:
    c: list[Any] = []
    for column, value in ((workflows.c.flow, f.flow), (workflows.c.status, f.status),
                          (workflows.c.reason, f.reason), (workflows.c.started_by, f.started_by)):
        if value is not None:
            c.append(column == value)
    if f.started_after:
        c.append(workflows.c.started_at >= f.started_after)
    if f.started_before:
        c.append(workflows.c.started_at < f.started_before)
    if f.overdue:  # past its own deadline, or a step past the step's
        c.append(workflows.c.status.in_([WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING]))
        c.append(or_(workflows.c.deadline < now, workflows.c.correlation_id.in_(
            select(steps.c.correlation_id).where(steps.c.status == StepStatus.ACTIVE,
                                                 steps.c.deadline < now))))
    if f.stalled_step:
        c.append(workflows.c.correlation_id.in_(
            select(steps.c.correlation_id).where(steps.c.name == f.stalled_step,
                                                 steps.c.status == StepStatus.ACTIVE,
                                                 steps.c.deadline < now)))
    for name, value in f.attributes:
        c.append(workflows.c.correlation_id.in_(
            select(attributes.c.correlation_id).where(attributes.c.name == name,
                                                      attributes.c.value == value)))
    return c


def _cursor_position(cursor: str) -> tuple[datetime, str]:
    parts = _decode_cursor(cursor)
    try:
        started, cid = parts
        return parse_ts(str(started)), str(cid)
    except ValueError as exc:
        raise InvalidInput("cursor is not one this server issued", {"cursor": ["invalid"]}) from exc


def _encode_cursor(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def _decode_cursor(cursor: str) -> list[Any]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or not parts:
            raise ValueError("not a list")
        return parts
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("cursor is not one this server issued", {"cursor": ["invalid"]}) from exc
