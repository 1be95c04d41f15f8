"""a step of an open workflow that has only started has no report fact: drop those written before

A step's fact was written as it started (its flag `started` alone) and again as it ended.
`facts.of_workflow` now writes it once the step has more to say (or its workflow has ended), and
the report counts the steps of open workflows that have only started live
(`outcomes.live_started`). The ones stored are deleted here, and taken out of the rollup by a
delta, so that the rollup still sums the facts and nothing is counted twice.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:20:00
"""

from __future__ import annotations

from datetime import UTC

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KEYS = ("flow", "kind", "name", "to_type", "participant", "hour", "bucket")
_OTHER_FLAGS = ("completed", "compensated", "failed", "needs_attention", "in_flight", "breached",
                "sla_met", "sla_judged")
_ONLY_STARTED = (
    "kind = 's' AND duration_ms IS NULL AND started = 1 AND "
    + " AND ".join(f"{flag} = 0" for flag in _OTHER_FLAGS)
    + " AND correlation_id IN (SELECT correlation_id FROM workflows"
    " WHERE status IN ('running', 'paused', 'compensating'))")


def upgrade() -> None:
    keys = ", ".join(_KEYS)
    zeros = ", ".join("0" for _ in _OTHER_FLAGS)
    op.execute(sa.text(
        f"INSERT INTO report_deltas ({keys}, rows, n, started, {', '.join(_OTHER_FLAGS)}) "
        f"SELECT {keys}, -count(*), 0, -count(*), {zeros} FROM report_facts "
        f"WHERE {_ONLY_STARTED} GROUP BY {keys}"))
    op.execute(sa.text(f"DELETE FROM report_facts WHERE {_ONLY_STARTED}"))


def downgrade() -> None:
    """The facts put back as the older code keeps them (a step's fact from its start on), with
    their rows added to the rollup by a delta."""
    conn = op.get_bind()
    w, st, f = _table("workflows"), _table("workflow_steps"), _table("report_facts")
    has_fact = sa.exists().where(f.c.correlation_id == st.c.correlation_id, f.c.kind == "s",
                                 f.c.item == st.c.name)
    found = conn.execute(sa.select(st.c.correlation_id, st.c.name, w.c.flow, w.c.started_at).select_from(
        st.join(w, w.c.correlation_id == st.c.correlation_id)).where(
        w.c.status.in_(("running", "paused", "compensating")), st.c.started_at.is_not(None),
        ~has_fact)).all()
    facts: list[dict[str, object]] = []
    deltas: dict[tuple[str, str, int], int] = {}
    for cid, name, flow, started_at in found:
        moment = started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
        hour = int(moment.timestamp()) // 3600
        facts.append({"correlation_id": cid, "item": name, "flow": flow, "kind": "s", "name": name,
                      "to_type": "", "participant": "", "started_at": moment, "hour": hour,
                      "duration_ms": None, "bucket": -1, "started": 1,
                      **dict.fromkeys(_OTHER_FLAGS, 0)})
        deltas[(flow, name, hour)] = deltas.get((flow, name, hour), 0) + 1
    if facts:
        conn.execute(sa.insert(f), facts)
        conn.execute(sa.insert(_table("report_deltas")), [
            {"flow": flow, "kind": "s", "name": name, "to_type": "", "participant": "", "hour": hour,
             "bucket": -1, "rows": n, "n": 0, "started": n, **dict.fromkeys(_OTHER_FLAGS, 0)}
            for (flow, name, hour), n in sorted(deltas.items())])


def _table(name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=op.get_bind())
