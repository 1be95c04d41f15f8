"""The migrations build exactly the schema the code declares: a model changed without its
revision (or the reverse) shows here, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from controller.db import migrate
from controller.db.tables import metadata as controller_metadata
from participants.runtime.db import make_engine
from participants.runtime.tables import metadata as runtime_metadata


def test_the_migrated_schema_is_the_declared_one(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        migrate.upgrade(engine)  # again: nothing to do
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            # a sequence, as in env.py's target_metadata (the stub says one MetaData)
            differences = compare_metadata(context, [controller_metadata, runtime_metadata])  # type: ignore[arg-type]
    finally:
        engine.dispose()
    assert differences == []


def test_0005_drops_the_facts_that_count_nothing_and_the_rollup_still_sums_the_facts(
        database_url: str) -> None:
    """Before 0005 every step had a fact from the kickoff on; those of steps not started count
    nothing but a row, and go, with their rows taken out of the rollup."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from controller.db.tables import FLAGS, report_facts, report_rollup
    from controller.reporting import facts as rf
    from controller.reporting import store as report_store

    def fact(kind: str, item: str, duration_ms: int | None, *flags: str) -> rf.Fact:
        return rf.Fact("wf-1", kind, item, "f", item, "", "", datetime(2026, 12, 1, tzinfo=UTC),
                       duration_ms, tuple(int(n in flags) for n in FLAGS))

    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0004")
        before = [fact(rf.WORKFLOW, "", None, "started", "in_flight"),
                  fact(rf.STEP, "a", 1500, "started", "completed"),
                  fact(rf.STEP, "b", None, "started"),
                  fact(rf.STEP, "c", None),  # pending: counts nothing
                  fact(rf.STEP, "d", None)]
        with engine.begin() as conn:
            report_store.workflow_saved(conn, {}, {f.key: f for f in before})
            report_store.fold_deltas(conn)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            report_store.fold_deltas(conn)
            kept = {(r.kind, r.item) for r in conn.execute(select(report_facts))}
            rollup = {(r.kind, r.name, r.bucket): r.rows for r in conn.execute(
                select(report_rollup.c.kind, report_rollup.c.name, report_rollup.c.bucket,
                       report_rollup.c.rows)) if r.rows}
            summed = {(r.kind, r.name, r.bucket): r.count for r in conn.execute(
                select(report_facts.c.kind, report_facts.c.name, report_facts.c.bucket,
                       func.count().label("count"))
                .group_by(report_facts.c.kind, report_facts.c.name, report_facts.c.bucket))}
    finally:
        engine.dispose()
    assert kept == {(rf.WORKFLOW, ""), (rf.STEP, "a"), (rf.STEP, "b")}
    assert rollup == summed == {(rf.WORKFLOW, "", rf.UNTIMED): 1, (rf.STEP, "a", 1500): 1,
                                (rf.STEP, "b", rf.UNTIMED): 1}
