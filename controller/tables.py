"""The controller's tables: workflows, their steps, compensations, search attributes and timeline."""

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
    String,
    Table,
    Text,
    UniqueConstraint,
)

from participants.tables import UtcDateTime

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
