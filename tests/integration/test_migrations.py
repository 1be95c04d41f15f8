"""The migrations build exactly the schema the code declares: a model changed without its
revision (or the reverse) shows here, on both databases."""

from __future__ import annotations

from typing import Any

from alembic import command
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


def test_0006_drops_the_started_only_facts_of_open_workflows_and_its_downgrade_puts_them_back(
        database_url: str) -> None:
    """Before 0006 a step's fact was written as it started; of an open workflow, those go (the
    report counts them live), with their rows and starts taken out of the rollup. A finished
    workflow's are kept. The downgrade writes them again, rollup included."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from controller.db.tables import FLAGS, report_facts, report_rollup, steps, workflows
    from controller.reporting import facts as rf
    from controller.reporting import store as report_store

    t0 = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)

    def fact(cid: str, kind: str, item: str, *flags: str) -> rf.Fact:
        return rf.Fact(cid, kind, item, "f", item, "", "", t0, None,
                       tuple(int(n in flags) for n in FLAGS))

    def rows(conn: Any) -> tuple[set[tuple[str, str, str]], dict[tuple[str, str], tuple[int, int]]]:
        report_store.fold_deltas(conn)
        kept = {(r.correlation_id, r.kind, r.item) for r in conn.execute(select(report_facts))}
        rollup = {(r.kind, r.name): (r.rows, r.started) for r in conn.execute(select(report_rollup))
                  if r.rows}
        return kept, rollup

    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0005")
        with engine.begin() as conn:
            for cid, status in (("open", "running"), ("ended", "compensated")):
                conn.execute(insert(workflows).values(
                    correlation_id=cid, flow="f", flow_version=1, status=status, started_at=t0,
                    started_by="t", input={}, start_message_id=f"m-{cid}"))
                conn.execute(insert(steps).values(correlation_id=cid, name="b", status="active",
                                                  started_at=t0, attempts=0))
                report_store.workflow_saved(conn, {}, {f.key: f for f in (
                    fact(cid, rf.WORKFLOW, "", "started"), fact(cid, rf.STEP, "b", "started"))})
            before = rows(conn)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            after = rows(conn)
        migrate.upgrade(engine)  # again: nothing to do
        with engine.begin() as conn:
            assert rows(conn) == after
        config = migrate.alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0005")
        with engine.begin() as conn:
            back = rows(conn)
    finally:
        engine.dispose()
    assert before[0] == {("open", "w", ""), ("open", "s", "b"), ("ended", "w", ""), ("ended", "s", "b")}
    assert before[1] == {("w", ""): (2, 2), ("s", "b"): (2, 2)}
    assert after == ({("open", "w", ""), ("ended", "w", ""), ("ended", "s", "b")},
                     {("w", ""): (2, 2), ("s", "b"): (1, 1)})
    assert back == before
