"""`joins.arrive_many` decides a batch as `joins.arrive` decides its messages one by one: the same
completed sets, and the same state left behind (fired or not, the arrivals kept), on SQLite and
PostgreSQL, for sequences with duplicates, several workflows and operator's retries in one batch."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select

from contracts.envelope import Envelope, new_event
from participants.runtime import joins
from participants.runtime.db import create_tables, make_engine
from participants.runtime.tables import join_arrival, join_state
from participants.runtime.tables import metadata as runtime_metadata
from tests.integration.test_runtime import charged, reserved

TYPES = ("inventory.reserved", "payment.charged")


def re_emitted(original: Envelope) -> Envelope:
    return new_event(original.type, original.data, correlation_id=original.correlation_id,
                     causation_id=original.id, source="controller")


def _scenarios() -> dict[str, Callable[[], list[list[Envelope]]]]:
    """Each: batches of messages, the first batches to set the stage, the last one decided."""
    def duplicates() -> list[list[Envelope]]:
        a, b = reserved("wf-a"), charged("wf-a")
        return [[a, a, b, b, a, charged("wf-a")]]

    def two_workflows() -> list[list[Envelope]]:
        return [[reserved("wf-a"), charged("wf-b"), charged("wf-a"), reserved("wf-c")]]

    def half_before() -> list[list[Envelope]]:
        return [[reserved("wf-a")], [charged("wf-a"), charged("wf-a")]]

    def retries() -> list[list[Envelope]]:
        halves = [reserved("wf-a"), charged("wf-a")]
        again = [re_emitted(h) for h in halves]
        twice = [re_emitted(h) for h in halves]
        return [halves, [again[0], again[1], again[0], twice[0], twice[1], charged("wf-a")]]

    def retry_half_in_batch() -> list[list[Envelope]]:
        halves = [reserved("wf-a"), charged("wf-a")]
        return [halves, [re_emitted(halves[1])], [re_emitted(halves[0]), reserved("wf-b")]]

    return {f.__name__: f for f in (duplicates, two_workflows, half_before, retries, retry_half_in_batch)}


SCENARIOS = _scenarios()


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    create_tables(engine, runtime_metadata)
    return engine


def _state(engine: Engine, consumer: str) -> tuple[list[tuple[str, bool]], list[tuple[str, str, str]]]:
    with engine.connect() as conn:
        fired = [(r.correlation_id, r.fired_at is not None) for r in conn.execute(
            select(join_state).where(join_state.c.consumer == consumer)
            .order_by(join_state.c.correlation_id))]
        kept = [(r.correlation_id, r.message_type, r.envelope) for r in conn.execute(
            select(join_arrival).where(join_arrival.c.consumer == consumer)
            .order_by(join_arrival.c.correlation_id, join_arrival.c.message_type))]
    return fired, kept


def _completed(found: dict[str, Envelope] | None) -> tuple[str, ...] | None:
    return None if found is None else tuple(found[t].id for t in TYPES)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_batch_decides_as_its_messages_one_by_one(database_url: str, scenario: str) -> None:
    engine = _engine(database_url)
    batches = SCENARIOS[scenario]()
    one, many = f"one-{uuid.uuid4().hex[:8]}", f"many-{uuid.uuid4().hex[:8]}"
    by_one: list[tuple[str, ...] | None] = []
    by_many: list[tuple[str, ...] | None] = []
    for batch in batches:
        with engine.begin() as conn:
            by_one += [_completed(joins.arrive(conn, one, "schedule", TYPES, m)) for m in batch]
        with engine.begin() as conn:
            by_many += [_completed(f) for f in joins.arrive_many(conn, many, "schedule", TYPES, batch)]
    assert by_many == by_one
    assert any(by_one), "the scenario completes a join"
    assert _state(engine, many) == _state(engine, one)
    engine.dispose()
