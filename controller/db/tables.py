"""The controller's tables: workflows, their steps, compensations, search attributes and timeline;
and the SLA report's facts and hourly rollups, written with the state they summarize."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    literal_column,
)

from participants.runtime.tables import UtcDateTime

metadata = MetaData()
_ID = BigInteger().with_variant(Integer(), "sqlite")
_TS = UtcDateTime()

workflows = Table(
    "workflows", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("flow", String(64), nullable=False),
    Column("flow_version", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", String(20)),
    Column("started_at", _TS, nullable=False),
    Column("deadline", _TS),
    Column("finished_at", _TS),
    Column("paused_at", _TS),
    # The earliest moment the sweeper must look at this workflow; NULL once nothing is owed.
    Column("next_due_at", _TS),
    Column("started_by", String(64), nullable=False),
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64)),
    Column("input", JSON, nullable=False),
    Column("start_message_id", String(64), nullable=False),
    UniqueConstraint("started_by", "idempotency_key", name="uq_workflows_idempotency"),
)
Index("ix_workflows_flow_started", workflows.c.flow, workflows.c.started_at)
Index("ix_workflows_status_started", workflows.c.status, workflows.c.started_at)
Index("ix_workflows_started", workflows.c.started_at, workflows.c.correlation_id)
# The few workflows whose steps may still be breached by the clock alone (the report's live part).
Index(
    "ix_workflows_open", workflows.c.started_at,
    postgresql_where=workflows.c.finished_at.is_(None),
    sqlite_where=workflows.c.finished_at.is_(None),
)
Index(
    "ix_workflows_due", workflows.c.next_due_at,
    postgresql_where=workflows.c.next_due_at.is_not(None),
    sqlite_where=workflows.c.next_due_at.is_not(None),
)

attributes = Table(
    "workflow_attributes", metadata,
    Column("correlation_id", String(128), ForeignKey("workflows.correlation_id", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", String(255), nullable=False),
    PrimaryKeyConstraint("correlation_id", "name"),
)
Index("ix_workflow_attributes_lookup", attributes.c.name, attributes.c.value)

steps = Table(
    "workflow_steps", metadata,
    Column("correlation_id", String(128), ForeignKey("workflows.correlation_id", ondelete="CASCADE"),
           nullable=False),
    Column("name", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("started_at", _TS),
    Column("finished_at", _TS),
    Column("deadline", _TS),
    Column("completed_seq", Integer),
    Column("attempts", Integer, nullable=False, default=0),
    Column("command_id", String(64)),
    Column("next_attempt_at", _TS),
    Column("result", JSON),
    PrimaryKeyConstraint("correlation_id", "name"),
)

compensations = Table(
    "workflow_compensations", metadata,
    Column("correlation_id", String(128), ForeignKey("workflows.correlation_id", ondelete="CASCADE"),
           nullable=False),
    Column("step", String(64), nullable=False),
    Column("position", Integer, nullable=False),
    Column("command", String(128), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("command_id", String(64), nullable=False),
    Column("sent_at", _TS),
    Column("next_attempt_at", _TS),
    Column("finished_at", _TS),
    PrimaryKeyConstraint("correlation_id", "step"),
)

# Every message of a workflow, in the order the controller received (or sent) it.
messages = Table(
    "workflow_messages", metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("correlation_id", String(128), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("type", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", String(64), nullable=False),
    Column("causation_id", String(128), nullable=False),
    Column("occurred_at", _TS, nullable=False),
    Column("received_at", _TS, nullable=False),
    Column("target", String(64)),
    Column("data", JSON, nullable=False),
)
Index("ix_workflow_messages_cid", messages.c.correlation_id, messages.c.seq)

audit = Table(
    "workflow_audit", metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("correlation_id", String(128), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", _TS, nullable=False),
    Column("result", String(255), nullable=False),
    Column("details", JSON),
)
Index("ix_workflow_audit_cid", audit.c.correlation_id, audit.c.seq)


# -- the SLA report (controller/reporting/facts.py says what each column means) ----------------------

# The report's subjects: a flow's workflows (kind "w"), one of its steps ("s": name), or one
# transition ("t": from the message type `name` to `to_type`, emitted by `participant`).
_SUBJECT = ("flow", "kind", "name", "to_type", "participant")
# What a row counts (0/1 in a fact, sums in the rollup); `n` counts the timed ones.
FLAGS = ("started", "completed", "compensated", "failed", "needs_attention", "in_flight",
         "breached", "sla_met", "sla_judged")


def _subject() -> list[Column[str]]:
    return [Column("flow", String(64), nullable=False), Column("kind", String(1), nullable=False),
            Column("name", String(128), nullable=False), Column("to_type", String(128), nullable=False),
            Column("participant", String(64), nullable=False)]


def _sums(kind: type[Integer] | type[SmallInteger]) -> list[Column[int]]:
    return [Column(name, kind, nullable=False, default=0) for name in ("rows", "n", *FLAGS)]


# One row per workflow, step and transition: what it contributes now, whatever the clock says.
report_facts = Table(
    "report_facts", metadata,
    Column("correlation_id", String(128), nullable=False),
    Column("item", String(128), nullable=False),  # "" (the workflow), a step name, a message id
    *_subject(),
    Column("started_at", _TS, nullable=False),  # the workflow's: the report's time axis
    Column("hour", BigInteger, nullable=False),  # of started_at, since 1970
    Column("duration_ms", BigInteger),
    Column("bucket", BigInteger, nullable=False),  # of duration_ms; -1 when not timed
    *(Column(name, SmallInteger, nullable=False, default=0) for name in FLAGS),
    PrimaryKeyConstraint("correlation_id", "kind", "item"),
)
# The k-th duration of a subject, and the slowest workflows, read in order.
Index("ix_report_facts_rank", *(report_facts.c[c] for c in _SUBJECT),
      report_facts.c.duration_ms, report_facts.c.started_at)
# The partial hours at the edges of an asked range.
Index("ix_report_facts_started", report_facts.c.started_at)
# The breached workflows, for the report's list of them.
_BREACHED = and_(report_facts.c.kind == literal_column("'w'"),
                 report_facts.c.breached == literal_column("1"))
Index("ix_report_facts_breached", report_facts.c.started_at,
      postgresql_where=_BREACHED, sqlite_where=_BREACHED)

# Per subject, hour of start and duration bucket: the sums of its facts.
report_rollup = Table(
    "report_rollup", metadata,
    *_subject(),
    Column("hour", BigInteger, nullable=False),
    Column("bucket", BigInteger, nullable=False),
    *_sums(Integer),
    PrimaryKeyConstraint(*_SUBJECT, "hour", "bucket"),
)

# Changes to the rollup, appended by every write (no row that concurrent writers wait for) and
# folded into `report_rollup` in the background; the report reads both.
report_deltas = Table(
    "report_deltas", metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    *_subject(),
    Column("hour", BigInteger, nullable=False),
    Column("bucket", BigInteger, nullable=False),
    *_sums(Integer),
)


# -- the message types flow files declared, as each (type, version) was last loaded ----------------
# What a later start compares a declaration with: a field removed or retyped needs a new version.
declared_schemas = Table(
    "declared_schemas", metadata,
    Column("type", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("schema", JSON, nullable=False),
    Column("source", Text, nullable=False),
    Column("recorded_at", _TS, nullable=False),
)
