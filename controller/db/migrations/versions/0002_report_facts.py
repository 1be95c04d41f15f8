"""the SLA report's facts, hourly rollup and deltas; an index on the workflows still open

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_SUBJECT = ("flow", "kind", "name", "to_type", "participant")
_FLAGS = ("started", "completed", "compensated", "failed", "needs_attention", "in_flight",
          "breached", "sla_met", "sla_judged")


def _subject() -> list[sa.Column]:
    return [sa.Column("flow", sa.String(64), nullable=False),
            sa.Column("kind", sa.String(1), nullable=False),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("to_type", sa.String(128), nullable=False),
            sa.Column("participant", sa.String(64), nullable=False)]


def _sums() -> list[sa.Column]:
    return [sa.Column(n, sa.Integer(), nullable=False) for n in ("rows", "n", *_FLAGS)]


def upgrade() -> None:
    op.create_table(
        "report_facts",
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("item", sa.String(128), nullable=False),
        *_subject(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        *(sa.Column(n, sa.SmallInteger(), nullable=False) for n in _FLAGS),
        sa.PrimaryKeyConstraint("correlation_id", "kind", "item"),
    )
    op.create_index("ix_report_facts_rank", "report_facts",
                    [*_SUBJECT, "duration_ms", "started_at"])
    op.create_index("ix_report_facts_started", "report_facts", ["started_at"])
    breached = sa.text("kind = 'w' AND breached = 1")
    op.create_index("ix_report_facts_breached", "report_facts", ["started_at"],
                    postgresql_where=breached, sqlite_where=breached)
    op.create_table(
        "report_rollup", *_subject(),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint(*_SUBJECT, "hour", "bucket"),
    )
    op.create_table(
        "report_deltas",
        sa.Column("seq", _ID, autoincrement=True, nullable=False),
        *_subject(),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint("seq"),
    )
    open_rows = sa.text("finished_at IS NULL")
    op.create_index("ix_workflows_open", "workflows", ["started_at"],
                    postgresql_where=open_rows, sqlite_where=open_rows)
    # Workflows written before this revision: their facts, one workflow at a time.
    from controller.reporting import store as report_store

    report_store.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_workflows_open", table_name="workflows")
    op.drop_table("report_deltas")
    op.drop_table("report_rollup")
    op.drop_index("ix_report_facts_breached", table_name="report_facts")
    op.drop_index("ix_report_facts_started", table_name="report_facts")
    op.drop_index("ix_report_facts_rank", table_name="report_facts")
    op.drop_table("report_facts")
