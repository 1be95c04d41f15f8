"""no report fact for a step that counts nothing (not started, no flag): drop those written before

A kickoff wrote one fact per step of its flow, most of them for steps not started yet, which count
nothing but a row. `facts.of_workflow` no longer makes them; the ones stored are deleted here, and
their rows taken out of the rollup by a delta, so that the rollup still sums the facts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_KEYS = ("flow", "kind", "name", "to_type", "participant", "hour", "bucket")
_FLAGS = ("started", "completed", "compensated", "failed", "needs_attention", "in_flight",
          "breached", "sla_met", "sla_judged")
_EMPTY = ("kind = 's' AND duration_ms IS NULL AND "
          + " AND ".join(f"{flag} = 0" for flag in _FLAGS))


def upgrade() -> None:
    keys = ", ".join(_KEYS)
    zeros = ", ".join("0" for _ in _FLAGS)
    op.execute(sa.text(
        f"INSERT INTO report_deltas ({keys}, rows, n, {', '.join(_FLAGS)}) "
        f"SELECT {keys}, -count(*), 0, {zeros} FROM report_facts WHERE {_EMPTY} GROUP BY {keys}"))
    op.execute(sa.text(f"DELETE FROM report_facts WHERE {_EMPTY}"))


def downgrade() -> None:
    # Nothing to put back: the facts dropped counted nothing but a row, which the report never
    # shows for a step; the older code upserts a step's fact as it starts whether one is stored.
    pass
