"""The SLA report's facts and rollup for rows filled in bulk (PostgreSQL), as the store would have
written them one workflow at a time: `report_facts.py`'s rules in SQL over the base tables.

`check` compares them with `report_store.rebuild` (the store's own code) on the same database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, text

from controller.db.tables import FLAGS, report_facts
from controller.reporting import store as report_store

_COLUMNS = ("correlation_id, item, flow, kind, name, to_type, participant, started_at, hour, "
            "duration_ms, bucket, " + ", ".join(FLAGS))
_HOUR = "floor(extract(epoch FROM w.started_at) / 3600)::bigint"


def _ms(start: str, end: str) -> str:
    return f"round(extract(epoch FROM {end} - {start}) * 1000)::bigint"


FACTS = [
    f"""INSERT INTO report_facts ({_COLUMNS})
       SELECT w.correlation_id, '', w.flow, 'w', '', '', '', w.started_at, {_HOUR}, x.d,
              bench_bucket(x.d), 1, (w.status = 'completed')::int, (w.status = 'compensated')::int,
              0, (w.status = 'needs_attention')::int,
              (w.status IN ('running', 'paused', 'compensating'))::int,
              coalesce(w.reason = 'sla_breached' OR (w.status = 'completed'
                                                     AND w.finished_at > w.deadline), false)::int,
              coalesce(w.status = 'completed' AND (w.deadline IS NULL
                                                  OR w.finished_at <= w.deadline), false)::int,
              (w.status IN ('completed', 'compensated', 'needs_attention'))::int
       FROM workflows w, LATERAL (SELECT CASE WHEN w.status = 'completed'
             AND w.finished_at IS NOT NULL THEN {_ms('w.started_at', 'w.finished_at')} END AS d) x""",
    f"""INSERT INTO report_facts ({_COLUMNS})
       SELECT s.correlation_id, s.name, w.flow, 's', s.name, '', '', w.started_at, {_HOUR}, x.d,
              bench_bucket(x.d), (s.started_at IS NOT NULL)::int,
              (s.status IN ('done', 'compensated'))::int, (s.status = 'compensated')::int,
              (s.status = 'failed')::int, (c.status IS NOT DISTINCT FROM 'failed')::int, 0,
              x.breached::int,
              coalesce(s.status IN ('done', 'compensated') AND s.finished_at IS NOT NULL
                       AND (s.deadline IS NULL OR s.finished_at <= s.deadline), false)::int,
              (s.finished_at IS NOT NULL OR x.breached)::int
       FROM workflow_steps s JOIN workflows w ON w.correlation_id = s.correlation_id
       LEFT JOIN workflow_compensations c
         ON c.correlation_id = s.correlation_id AND c.step = s.name
       LEFT JOIN (SELECT correlation_id, min(sent_at) AS at FROM workflow_compensations
                  GROUP BY correlation_id) g ON g.correlation_id = s.correlation_id,
       LATERAL (SELECT
         CASE WHEN s.status IN ('done', 'compensated') AND s.started_at IS NOT NULL
              AND s.finished_at IS NOT NULL THEN {_ms('s.started_at', 's.finished_at')} END AS d,
         coalesce(s.started_at IS NOT NULL AND s.deadline IS NOT NULL AND (
           s.finished_at > s.deadline OR (s.finished_at IS NULL
             AND (w.reason IS NULL OR w.reason = 'sla_breached')
             AND coalesce(g.at, w.finished_at) > s.deadline)), false) AS breached) x""",
    f"""INSERT INTO report_facts ({_COLUMNS})
       SELECT e.correlation_id, e.id, w.flow, 't', c.type, e.type, e.source, w.started_at, {_HOUR},
              x.d, bench_bucket(x.d), {', '.join('0' for _ in FLAGS)}
       FROM workflow_messages e
       JOIN workflow_messages c ON c.id = e.causation_id AND c.correlation_id = e.correlation_id
       JOIN workflows w ON w.correlation_id = e.correlation_id,
       LATERAL (SELECT {_ms('c.occurred_at', 'e.occurred_at')} AS d) x
       WHERE e.id <> c.id""",
    f"""INSERT INTO report_rollup (flow, kind, name, to_type, participant, hour, bucket, rows, n,
                                   {', '.join(FLAGS)})
       SELECT flow, kind, name, to_type, participant, hour, bucket, count(*), count(duration_ms),
              {', '.join(f'sum({x})' for x in FLAGS)}
       FROM report_facts GROUP BY flow, kind, name, to_type, participant, hour, bucket""",
]


def fill(conn: Connection) -> None:
    """The facts and rollup of every row in the base tables (the report's tables empty); the
    facts' secondary indexes are built after, which is faster than row by row."""
    indexes = [i for i in report_facts.indexes]
    for index in indexes:
        index.drop(conn)
    for sql in FACTS:
        conn.execute(text(sql))
    for index in indexes:
        index.create(conn)


def check(engine: Engine) -> list[str]:
    """Differences between the facts and rollup filled in bulk and those the store's code writes
    for the same rows (rolled back); empty when they agree."""
    tables = {"report_facts": "correlation_id, kind, item",
              "report_rollup": "flow, kind, name, to_type, participant, hour, bucket"}
    with engine.connect() as conn:
        bulk = {t: _rows(conn, t, order) for t, order in tables.items()}
        report_store.rebuild(conn)
        stored = {t: _rows(conn, t, order) for t, order in tables.items()}
        conn.rollback()
    problems = []
    for table in tables:
        a, b = bulk[table], stored[table]
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            problems.append(f"{table}: {len(a)} rows in bulk, {len(b)} by the store; first "
                            f"difference: {a[first] if first is not None else '-'} vs "
                            f"{b[first] if first is not None else '-'}")
    return problems


def _rows(conn: Any, table: str, order: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))]
