"""The participant runtime on real Redis and real databases: a small test participant driven by
`Runtime.poll()` (the runtime in real processes: tests/e2e/test_runtime.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import orjson
import psycopg
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select

from contracts.envelope import Envelope, decode_fields, new_command, new_event
from contracts.streams import Keys
from contracts.timefmt import utcnow
from participants.runtime.connect import connect
from participants.runtime.db import create_tables, make_engine
from participants.runtime.loop import Options, Runtime
from participants.runtime.participant import Context, Participant
from participants.runtime.tables import metadata as runtime_metadata
from tests.cluster import plain_redis_only

NAME = "probe"
# linger_ms=0: each poll handles what one read found (test_a_busy_consumer_lingers_… sets it)
FAST = Options(visibility_timeout=0.2, max_deliveries=3, block_ms=1, linger_ms=0)
PATIENT = Options(visibility_timeout=30.0, max_deliveries=3, block_ms=1, linger_ms=0)  # nothing is reclaimed


# -- the test participant ------------------------------------------------------------------------


@dataclass
class Probe:
    """A participant whose behaviour each test sets; every effect is a row of `probe_effects`."""

    fail_times: int = 0  # raise in the order.placed handler this many times (-1: always)
    deadlocks: int = 0  # lose this many races (a deadlock) in the order.placed handler first
    emit: str = "valid"  # "valid", "invalid" (through ctx.event) or "raw-invalid" (a bare envelope)
    calls: list[tuple[str, float]] = field(default_factory=list)  # (message id, monotonic time)
    metadata: MetaData = field(default_factory=MetaData)

    def __post_init__(self) -> None:
        self.effects = Table(
            "probe_effects", self.metadata,
            Column("seq", Integer, primary_key=True, autoincrement=True),
            Column("message_id", String(64), nullable=False),
            Column("kind", String(32), nullable=False),
        )

    def build(self) -> Participant:
        p = Participant(NAME, metadata=self.metadata)
        p.on_event("order.placed")(self._on_order_placed)
        p.on_command("payment.refund")(self._on_refund)
        p.join("ship", "inventory.reserved", "payment.charged")(self._on_both)
        return p

    def _effect(self, ctx: Context, kind: str) -> None:
        ctx.conn.execute(insert(self.effects).values(message_id=ctx.message.id, kind=kind))

    def _on_order_placed(self, msg: Envelope, ctx: Context) -> list[Envelope]:
        self.calls.append((msg.id, time.monotonic()))
        self._effect(ctx, "charge")  # written before a failure: must be rolled back with it
        if self.deadlocks:
            self.deadlocks -= 1
            raise deadlock()
        if self.fail_times:
            self.fail_times -= 1 if self.fail_times > 0 else 0
            raise RuntimeError("the card service is down")
        data = {"order_id": msg.data["order_id"], "payment_id": f"pay-{msg.id[:8]}",
                "amount": msg.data["total_amount"], "currency": msg.data["currency"]}
        if self.emit == "invalid":
            return [ctx.event("payment.charged", {**data, "amount": "lots"})]
        if self.emit == "raw-invalid":
            return [new_event("payment.charged", {"order_id": data["order_id"]},
                              correlation_id=msg.correlation_id, causation_id=msg.id, source=NAME)]
        return [ctx.event("payment.charged", data)]

    def _on_refund(self, msg: Envelope, ctx: Context) -> list[Envelope]:
        self.calls.append((msg.id, time.monotonic()))
        self._effect(ctx, "refund")
        return [ctx.event("payment.refunded", {"order_id": msg.data["order_id"],
                                               "payment_id": "pay-1", "amount": 1.0})]

    def _on_both(self, arrived: dict[str, Envelope], ctx: Context) -> list[Envelope]:
        self._effect(ctx, "ship")
        order_id = arrived["inventory.reserved"].data["order_id"]
        return [ctx.event("shipment.scheduled", {"order_id": order_id, "shipment_id": "shp-1",
                                                  "estimated_delivery": "2026-11-25"})]

    def effect_count(self, engine: Engine, kind: str | None = None) -> int:
        query = select(func.count()).select_from(self.effects)
        if kind:
            query = query.where(self.effects.c.kind == kind)
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


class AckWitness(redis.Redis):
    """A Redis client that, whenever XACK goes out, counts the effects committed at that moment."""

    witness_engine: Engine | None = None
    probe: Probe | None = None
    seen_at_ack: list[int]

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _PipelineSpy(super().pipeline(*args, **kwargs), self)

    def xack(self, *args: Any, **kwargs: Any) -> Any:
        self.witness()
        return super().xack(*args, **kwargs)

    def witness(self) -> None:
        assert self.witness_engine is not None and self.probe is not None
        self.seen_at_ack.append(self.probe.effect_count(self.witness_engine))


class _PipelineSpy:
    def __init__(self, inner: Any, owner: AckWitness) -> None:
        self._inner, self._owner, self._acks = inner, owner, 0

    def xack(self, *args: Any, **kwargs: Any) -> Any:
        self._acks += 1
        return self._inner.xack(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self._acks:
            self._owner.witness()
        return self._inner.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- fixtures and helpers ------------------------------------------------------------------------


@dataclass
class Bench:
    database_url: str
    redis_url: str
    client: redis.Redis
    keys: Keys
    probe: Probe
    engines: list[Engine] = field(default_factory=list)

    def engine(self) -> Engine:
        engine = make_engine(self.database_url)
        self.engines.append(engine)
        return engine

    def runtime(self, options: Options = FAST, *, engine: Engine | None = None,
                client: redis.Redis | None = None, consumer: str = "c1") -> Runtime:
        rt = Runtime(self.probe.build(), engine or self.engine(), client or self.client, self.keys,
                     options, consumer=consumer)
        rt.setup()
        return rt

    def send(self, envelope: Envelope) -> str:
        return self.xadd(stream_of(self.keys, envelope), envelope.to_fields())

    def xadd(self, stream: str, fields: dict[Any, Any]) -> str:
        return text(self.client.xadd(stream, fields))

    def entries(self, stream: str) -> list[tuple[str, dict[str, Any]]]:
        found: Any = self.client.xrange(stream)
        return [(text(i), {text(k): v for k, v in f.items()}) for i, f in found]

    def emitted(self, message_type: str) -> list[Envelope]:
        return [decode_fields(f) for _, f in self.entries(self.keys.event_stream(message_type))]

    def dead(self) -> list[dict[str, Any]]:
        return [f for _, f in self.entries(self.keys.dead_stream(NAME))]

    def last_errors(self, stream: str) -> dict[str, str]:
        """The handler errors kept for the pending entries of `stream`, by entry id."""
        found: Any = self.client.hgetall(self.keys.last_errors(stream, NAME))
        return {text(k): text(v) for k, v in found.items()}

    def pending(self, stream: str) -> int:
        info: Any = self.client.xpending(stream, NAME)
        return int(info["pending"])


def deadlock() -> sa.exc.OperationalError:
    """What SQLAlchemy raises when PostgreSQL chose this transaction as a deadlock's victim."""
    return sa.exc.OperationalError("SELECT pg_advisory_xact_lock(...)", {},
                                   psycopg.errors.DeadlockDetected("deadlock detected"))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_of(keys: Keys, envelope: Envelope) -> str:
    if envelope.kind == "command":
        return keys.command_stream(envelope.target or "")
    return keys.event_stream(envelope.type)


@pytest.fixture
def bench(database_url: str, redis_url: str) -> Iterator[Bench]:
    client = connect(redis_url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    made = Bench(database_url, redis_url, client, keys, Probe())
    try:
        yield made
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.delete(key)
        client.close()
        for engine in made.engines:
            engine.dispose()


def poll_until(rt: Runtime, done: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or done}")
        rt.poll()


def drain(*runtimes: Runtime) -> None:
    """Poll until a whole round handles nothing."""
    for _ in range(50):
        if sum(rt.poll() for rt in runtimes) == 0:
            return
    raise AssertionError("the runtime never went quiet")


def order(cid: str | None = None) -> Envelope:
    data = {"order_id": f"ord-{uuid.uuid4().hex[:8]}", "customer_id": "cust-gold",
            "items": [{"product_id": "SKU-001", "quantity": 1, "unit_price": 10.0}],
            "total_amount": 10.0, "currency": "EUR"}
    return new_event("order.placed", data, correlation_id=cid or f"wf-{uuid.uuid4().hex[:12]}",
                     source="test")


def refund_command(attempt: int = 1, message_id: str | None = None) -> Envelope:
    made = new_command("payment.refund", {"order_id": "ord-1", "reason": "cancelled"}, target=NAME,
                       correlation_id=f"wf-{uuid.uuid4().hex[:12]}", causation_id=str(uuid.uuid4()),
                       deadline=utcnow() + timedelta(seconds=60), source="controller",
                       message_id=message_id)
    return dataclasses.replace(made, attempt=attempt)


def reserved(cid: str) -> Envelope:
    data = {"order_id": "ord-1", "reservations": [
        {"reservation_id": "res-1", "product_id": "SKU-001", "quantity": 1}]}
    return new_event("inventory.reserved", data, correlation_id=cid, causation_id=str(uuid.uuid4()),
                     source="inventory")


def charged(cid: str) -> Envelope:
    data = {"order_id": "ord-1", "payment_id": "pay-1", "amount": 10.0, "currency": "EUR"}
    return new_event("payment.charged", data, correlation_id=cid, causation_id=str(uuid.uuid4()),
                     source="payment")


# -- setup, acknowledgement, retries --------------------------------------------------------------


def test_setup_creates_a_consumer_group_on_every_stream_and_can_run_twice(bench: Bench) -> None:
    rt = bench.runtime()
    rt.setup()  # a second process starting: BUSYGROUP is not an error
    streams = rt.participant.streams(bench.keys)
    assert set(streams) == {bench.keys.event_stream("order.placed"),
                            bench.keys.event_stream("inventory.reserved"),
                            bench.keys.event_stream("payment.charged"),
                            bench.keys.command_stream(NAME)}
    for stream in streams:
        groups: Any = bench.client.xinfo_groups(stream)
        assert [text(g["name"]) for g in groups] == [NAME]


@plain_redis_only
def test_an_entry_is_acknowledged_only_after_its_effects_commit(bench: Bench) -> None:
    witness = cast(AckWitness, AckWitness.from_url(bench.redis_url))
    witness.witness_engine = sa.create_engine(bench.database_url)  # a reader outside the runtime
    witness.probe, witness.seen_at_ack = bench.probe, []
    try:
        bench.probe.fail_times = 1
        rt = bench.runtime(client=witness)
        bench.send(order())
        stream = bench.keys.event_stream("order.placed")
        rt.poll()
        assert len(bench.probe.calls) == 1
        assert bench.pending(stream) == 1, "a failed handler's entry stays pending"
        assert bench.probe.effect_count(witness.witness_engine) == 0, "its effects were rolled back"
        assert bench.emitted("payment.charged") == []
        assert list(bench.last_errors(stream).values()) == ["RuntimeError: the card service is down"]
        poll_until(rt, lambda: bench.pending(stream) == 0, what="the retry is acknowledged")
        assert len(bench.probe.calls) == 2
        assert bench.last_errors(stream) == {}, "the acknowledgement forgets the error"
        assert witness.seen_at_ack and all(n == 1 for n in witness.seen_at_ack), (
            f"effects committed when XACK went out: {witness.seen_at_ack}")
        assert len(bench.emitted("payment.charged")) == 1
    finally:
        witness.close()
        witness.witness_engine.dispose()


def test_a_failing_batch_handler_is_redone_message_by_message(bench: Bench) -> None:
    """A batch handler (as the tracker's) that fails on one message: the batch is rolled back and
    redone one message at a time; the others commit and are acknowledged, the poison one stays
    pending for its retry."""
    sizes: list[int] = []
    messages = [order() for _ in range(3)]
    poison = messages[1].id

    def batch(conn: sa.Connection, got: list[Envelope], now: Any) -> list[list[Envelope]]:
        sizes.append(len(got))
        for m in got:
            conn.execute(insert(bench.probe.effects).values(message_id=m.id, kind="batch"))
            if m.id == poison:
                raise RuntimeError("poison")
        return [[] for _ in got]

    participant = Participant(NAME, metadata=bench.probe.metadata, batch=batch,
                              batch_types=("order.placed",))
    rt = Runtime(participant, bench.engine(), bench.client, bench.keys, PATIENT, consumer="c1")
    rt.setup()
    entry_ids = [bench.send(m) for m in messages]
    rt.poll()
    assert sizes == [3, 1, 1, 1]
    stream = bench.keys.event_stream("order.placed")
    assert bench.last_errors(stream) == {entry_ids[1]: "RuntimeError: poison"}
    assert bench.probe.effect_count(bench.engine(), "batch") == 2, "the good two, once each"
    assert bench.pending(bench.keys.event_stream("order.placed")) == 1, "the poison one, for a retry"


def test_a_busy_consumer_lingers_for_a_fuller_batch(bench: Bench) -> None:
    """A read that finds a message waiting lets the batch fill for BATON_LINGER_MS: a message
    sent 0.1 s later is handled in the same batch; without linger, a message sent once the
    first is read (it is being handled) comes in a batch of its own."""
    def one_poll(linger_ms: int, send_late: Callable[[int], threading.Thread]) -> int:
        rt = bench.runtime(dataclasses.replace(PATIENT, linger_ms=linger_ms, block_ms=100))
        before = len(bench.probe.calls)
        bench.send(order())
        late = send_late(before)
        late.start()
        rt.poll()
        in_first_batch = len(bench.probe.calls) - before
        late.join()
        poll_until(rt, lambda: len(bench.probe.calls) == before + 2, what="both handled")
        return in_first_batch

    def after_a_while(_: int) -> threading.Thread:
        return threading.Timer(0.1, lambda: bench.send(order()))

    def once_handled(before: int) -> threading.Thread:
        def run() -> None:
            deadline = time.monotonic() + 30
            while len(bench.probe.calls) == before and time.monotonic() < deadline:
                time.sleep(0.005)
            bench.send(order())
        return threading.Thread(target=run)

    assert one_poll(0, once_handled) == 1
    assert one_poll(2000, after_a_while) == 2  # 2 s: a loaded machine still sends within it


def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered(bench: Bench) -> None:
    bench.probe.fail_times = -1
    # The backoff counts from each delivery, the probe times each handler call: a first call later
    # after its delivery than the next by more than the slack (a loaded machine's first
    # transaction) shortens the first gap. A first poll with nothing to read pays those first
    # costs; a slack of a third of the base still tells a doubled backoff from a flat one.
    options = dataclasses.replace(FAST, visibility_timeout=0.5)
    rt = bench.runtime(options)
    rt.poll()
    placed = order()
    entry_id = bench.send(placed)
    stream = bench.keys.event_stream("order.placed")
    poll_until(rt, lambda: len(bench.dead()) == 1, what="the entry is dead-lettered")
    times = [t for _, t in bench.probe.calls]
    assert len(times) == options.max_deliveries
    gaps = [b - a for a, b in itertools.pairwise(times)]
    base = options.visibility_timeout
    slack = base / 3  # each call is a little late after its delivery, not always equally late
    assert gaps[0] >= base - slack, gaps
    assert gaps[1] >= 2 * base - slack, f"the second retry waits twice as long: {gaps}"
    dead = bench.dead()[0]
    assert "3 deliveries" in text(dead["dead_reason"])
    assert "last error: RuntimeError: the card service is down" in text(dead["dead_reason"])
    assert bench.last_errors(stream) == {}, "nothing is kept for a dead-lettered entry"
    assert text(dead["dead_stream"]) == stream
    assert text(dead["dead_entry_id"]) == entry_id
    for name, value in placed.to_fields().items():
        assert text(dead[name]) == value, f"the original field {name} is kept"
    assert bench.pending(stream) == 0, "a dead-lettered entry is acknowledged"
    assert bench.probe.effect_count(rt.engine) == 0
    assert bench.emitted("payment.charged") == []
    calls = len(bench.probe.calls)
    deadline = time.monotonic() + 3 * base
    while time.monotonic() < deadline:
        rt.poll()
    assert len(bench.probe.calls) == calls, "a dead letter is not handled again"


def test_the_dead_letter_says_why_the_handler_of_another_consumer_failed(bench: Bench) -> None:
    """The consumer whose handler failed is not the one that gives up on the entry: the error
    travels through Redis, not through the memory of either."""
    bench.probe.fail_times = 1
    once = dataclasses.replace(FAST, max_deliveries=1)
    failing = bench.runtime(once, consumer="c1")
    entry_id = bench.send(order())
    failing.poll()
    assert len(bench.probe.calls) == 1 and bench.dead() == []
    other = bench.runtime(once, consumer="c2", client=connect(bench.redis_url))
    try:
        poll_until(other, lambda: len(bench.dead()) == 1, what="the entry is dead-lettered")
    finally:
        other.client.close()
    dead = bench.dead()[0]
    assert text(dead["dead_entry_id"]) == entry_id and text(dead["dead_consumer"]) == "c2"
    assert text(dead["dead_reason"]) == ("not acknowledged after 1 deliveries; "
                                         "last error: RuntimeError: the card service is down")
    assert len(bench.probe.calls) == 1, "the entry was not handled again"


# -- malformed entries ----------------------------------------------------------------------------


def _good_fields() -> dict[str, Any]:
    return dict(order().to_fields())


def _bad_json() -> tuple[str, dict[str, Any]]:
    return "order.placed", {**_good_fields(), "data": '{"order_id": "ord-1",'}


def _no_correlation() -> tuple[str, dict[str, Any]]:
    fields = _good_fields()
    del fields["correlation_id"]
    return "order.placed", fields


def _not_utf8() -> tuple[str, dict[str, Any]]:
    return "order.placed", {**_good_fields(), "source": b"\xff\xfe\xfa"}


def _unknown_command_type() -> tuple[str, dict[str, Any]]:
    fields = dict(refund_command().to_fields())
    return "command", {**fields, "type": "payment.teleport"}


def _unknown_version() -> tuple[str, dict[str, Any]]:
    return "order.placed", {**_good_fields(), "version": "9"}


def _wrong_stream() -> tuple[str, dict[str, Any]]:
    return "order.placed", dict(charged("wf-1").to_fields())


def _other_target() -> tuple[str, dict[str, Any]]:
    return "command", {**refund_command().to_fields(), "target": "shipping"}


def _ten_megabytes() -> tuple[str, dict[str, Any]]:
    fields = _good_fields()
    data = {**orjson.loads(fields["data"]), "note": "x" * (10 * 1024 * 1024)}
    return "order.placed", {**fields, "data": orjson.dumps(data).decode()}


MALFORMED: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "bad-json-data": _bad_json,
    "missing-correlation-id": _no_correlation,
    "non-utf8-bytes": _not_utf8,
    "unknown-command-type": _unknown_command_type,
    "unknown-version": _unknown_version,
    "event-type-not-of-its-stream": _wrong_stream,
    "command-for-another-target": _other_target,
    "ten-megabyte-value": _ten_megabytes,
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_entry_is_dead_lettered_at_once_and_the_next_is_processed(
        bench: Bench, case: str) -> None:
    where, fields = MALFORMED[case]()
    if where == "command":
        stream, good = bench.keys.command_stream(NAME), refund_command()
    else:
        stream, good = bench.keys.event_stream(where), order()
    rt = bench.runtime(PATIENT)  # a 30 s visibility timeout: only "at once" can pass
    bad_id = bench.xadd(stream, fields)
    bench.xadd(stream, good.to_fields())
    drain(rt)
    dead = bench.dead()
    assert len(dead) == 1, f"{case}: dead letters {[text(d.get('dead_reason')) for d in dead]}"
    assert text(dead[0]["dead_entry_id"]) == bad_id
    assert text(dead[0]["dead_reason"])
    assert text(dead[0]["dead_stream"]) == stream
    if case == "non-utf8-bytes":
        assert dead[0]["source"] == b"\xff\xfe\xfa", "the original bytes are kept verbatim"
    assert bench.pending(stream) == 0, "the malformed entry is acknowledged"
    assert [m for m, _ in bench.probe.calls] == [good.id], "the entry behind it is handled"


# -- idempotency, propagation, validation ---------------------------------------------------------


def test_a_redelivered_id_is_not_handled_again_after_a_restart(bench: Bench) -> None:
    placed = order()
    first_engine = bench.engine()
    drain_rt = bench.runtime(engine=first_engine)
    bench.send(placed)
    drain(drain_rt)
    first_engine.dispose()  # the process is gone; only the database remembers
    again = bench.runtime(engine=bench.engine(), consumer="c2")
    bench.send(placed)  # the same id, e.g. republished by an outbox relay
    drain(again)
    assert [m for m, _ in bench.probe.calls] == [placed.id]
    assert bench.probe.effect_count(again.engine, "charge") == 1
    assert len(bench.emitted("payment.charged")) == 1
    assert bench.pending(bench.keys.event_stream("order.placed")) == 0, "the duplicate is acked"


def test_a_process_started_after_redis_lost_its_data_publishes_its_recent_outbox_again(
        bench: Bench) -> None:
    """The participant charged, published `payment.charged` and stopped; Redis lost its data while
    no process of it ran (a host reboot without AOF). The process that starts next has never seen
    the old epoch, yet its database has: it publishes the charge again, with the same id, or the
    controller would never learn of it (and a breach would compensate only the done steps,
    leaving the customer charged). A start that follows no loss publishes nothing again."""
    first_engine = bench.engine()
    first = bench.runtime(engine=first_engine)
    bench.send(order())
    drain(first)
    [charged] = bench.emitted("payment.charged")
    first_engine.dispose()  # the process is gone; only its database remembers
    for key in bench.client.scan_iter(match=f"{bench.keys.prefix}:*"):
        bench.client.delete(key)  # every stream, group and the epoch marker

    second = bench.runtime(engine=bench.engine(), consumer="c2")
    poll_until(second, lambda: len(bench.emitted("payment.charged")) == 1,
               what="the charge published again by the process started after the loss")
    assert bench.emitted("payment.charged")[0].id == charged.id
    drain(second)
    assert bench.probe.effect_count(second.engine, "charge") == 1

    third = bench.runtime(engine=bench.engine(), consumer="c3")  # a restart, Redis intact
    drain(third)
    assert len(bench.emitted("payment.charged")) == 1


def test_an_event_committed_but_never_published_is_published_by_the_runtime(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis goes away (or the process dies) between the commit and the XADD: the redelivered entry
    is a duplicate and emits nothing, so the runtime publishes the committed row itself, once.
    (Found by the chaos run: participants' outboxes, in their own databases, had no relay.)"""
    from participants.runtime import loop as runtime_module

    real_send = runtime_module.outbox.send
    calls = itertools.count()

    def send_fails_once(*args: Any, **kwargs: Any) -> None:
        if next(calls) == 0:
            raise redis.ConnectionError("Redis went away after the commit")
        real_send(*args, **kwargs)

    monkeypatch.setattr(runtime_module.outbox, "send", send_fails_once)
    rt = bench.runtime()
    placed = order()
    bench.send(placed)
    with pytest.raises(redis.ConnectionError):
        rt.poll()
    assert bench.probe.effect_count(rt.engine, "charge") == 1, "the effect committed"
    assert bench.emitted("payment.charged") == []
    stream = bench.keys.event_stream("order.placed")
    poll_until(rt, lambda: len(bench.emitted("payment.charged")) == 1 and bench.pending(stream) == 0,
               what="the committed event to be published and the entry acknowledged")
    drain(rt)
    assert len(bench.emitted("payment.charged")) == 1
    assert [m for m, _ in bench.probe.calls] == [placed.id]


def test_an_emitted_event_carries_the_correlation_and_is_caused_by_the_message(bench: Bench) -> None:
    rt = bench.runtime()
    placed = order()
    bench.send(placed)
    drain(rt)
    [out] = bench.emitted("payment.charged")
    assert out.correlation_id == placed.correlation_id
    assert out.causation_id == placed.id
    assert out.id != placed.id
    assert out.source == NAME
    assert out.kind == "event" and out.version == 1
    assert out.data["order_id"] == placed.data["order_id"]


@pytest.mark.parametrize("emit", ["invalid", "raw-invalid"])
def test_a_handler_emitting_an_invalid_payload_fails_and_is_retried(bench: Bench, emit: str) -> None:
    bench.probe.emit = emit
    rt = bench.runtime()
    bench.send(order())
    stream = bench.keys.event_stream("order.placed")
    rt.poll()
    assert len(bench.probe.calls) == 1
    assert bench.emitted("payment.charged") == [], "an invalid payload is never published"
    assert bench.pending(stream) == 1
    assert bench.probe.effect_count(rt.engine) == 0, "the handler's effects are rolled back"
    bench.probe.emit = "valid"  # the bug is fixed and deployed
    poll_until(rt, lambda: bench.pending(stream) == 0, what="the retry succeeds")
    assert len(bench.probe.calls) == 2
    [out] = bench.emitted("payment.charged")
    rt.participant.registry.validate(out.type, out.version, out.data)
    assert bench.probe.effect_count(rt.engine) == 1


# -- durable joins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["inventory.reserved", "payment.charged"])
def test_the_join_fires_exactly_once_in_any_order_with_duplicates(bench: Bench, first: str) -> None:
    rt = bench.runtime()
    cid = f"wf-{uuid.uuid4().hex[:12]}"
    halves = {"inventory.reserved": reserved(cid), "payment.charged": charged(cid)}
    second = next(t for t in halves if t != first)
    bench.send(halves[first])
    bench.send(halves[first])  # a duplicate delivery of the first half
    drain(rt)
    assert bench.emitted("shipment.scheduled") == []
    bench.send(halves[second])
    drain(rt)
    bench.send(halves[second])  # a duplicate after the join fired
    bench.send(halves[first])
    bench.send(charged(cid))  # another event of a joined type, with a new id
    drain(rt)
    [shipped] = bench.emitted("shipment.scheduled")
    assert shipped.correlation_id == cid
    assert shipped.causation_id == halves[second].id, "caused by the half that completed the join"
    assert bench.probe.effect_count(rt.engine, "ship") == 1


def test_the_join_fires_once_across_a_restart_between_its_halves(bench: Bench) -> None:
    cid = f"wf-{uuid.uuid4().hex[:12]}"
    first_engine = bench.engine()
    before = bench.runtime(engine=first_engine)
    bench.send(reserved(cid))
    drain(before)
    first_engine.dispose()
    after = bench.runtime(engine=bench.engine(), consumer="c2")
    bench.send(charged(cid))
    drain(after)
    bench.send(charged(cid))
    drain(after)
    assert len(bench.emitted("shipment.scheduled")) == 1
    assert bench.probe.effect_count(after.engine, "ship") == 1


def test_the_join_of_one_workflow_does_not_complete_another(bench: Bench) -> None:
    rt = bench.runtime()
    bench.send(reserved("wf-a"))
    bench.send(charged("wf-b"))
    drain(rt)
    assert bench.emitted("shipment.scheduled") == []


def re_emitted(original: Envelope) -> Envelope:
    """What the controller's `retry` emits for a step's trigger: a new message caused by it."""
    return new_event(original.type, original.data, correlation_id=original.correlation_id,
                     causation_id=original.id, source="controller")


def test_a_join_that_fired_fires_once_more_for_each_retry_that_re_emits_its_triggers(bench: Bench) -> None:
    """The operator's `retry` of a stuck join step re-emits its triggers: a join that had already
    fired (its answer lost, or rejected) acts again, once per retry, not once per re-emitted half."""
    rt = bench.runtime()
    cid = f"wf-{uuid.uuid4().hex[:12]}"
    halves = [reserved(cid), charged(cid)]
    for half in halves:
        bench.send(half)
    drain(rt)
    assert bench.probe.effect_count(rt.engine, "ship") == 1
    for retry in (1, 2):  # the controller re-emits the original each time (it keeps the first)
        again = [re_emitted(half) for half in halves]
        bench.send(again[0])
        drain(rt)
        assert bench.probe.effect_count(rt.engine, "ship") == retry, "waits for the whole set again"
        bench.send(again[1])
        bench.send(again[0])  # a duplicate delivery changes nothing
        drain(rt)
        assert bench.probe.effect_count(rt.engine, "ship") == retry + 1
        assert bench.emitted("shipment.scheduled")[-1].causation_id == again[1].id
    bench.send(charged(cid))  # a participant's own second event of a joined type is no retry
    drain(rt)
    assert bench.probe.effect_count(rt.engine, "ship") == 3


# -- commands --------------------------------------------------------------------------------------


def test_a_retried_command_is_answered_again_once_per_attempt(bench: Bench) -> None:
    rt = bench.runtime()
    first = refund_command(attempt=1)
    bench.send(first)
    drain(rt)
    retried = refund_command(attempt=2, message_id=first.id)
    retried = dataclasses.replace(retried, correlation_id=first.correlation_id)
    bench.send(retried)
    drain(rt)
    bench.send(retried)  # the same attempt delivered twice: answered once
    drain(rt)
    answers = bench.emitted("payment.refunded")
    assert len(answers) == 2
    assert {a.causation_id for a in answers} == {first.id}
    assert {a.correlation_id for a in answers} == {first.correlation_id}
    assert bench.pending(bench.keys.command_stream(NAME)) == 0


def test_published_rows_are_marked_sent_with_the_next_batch_or_before_blocking(bench: Bench) -> None:
    """One commit per batch: what a batch published is marked sent in the next batch's
    transaction; a consumer that finds its streams empty marks it before it blocks, so the relay
    (which waits out a grace period) never sends it again."""
    from sqlalchemy import select

    from participants.runtime.tables import outbox

    rt = bench.runtime(PATIENT)

    def unmarked() -> list[str]:
        with rt.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.message_id).where(outbox.c.sent_at.is_(None)))
            return sorted(rows.scalars())

    bench.send(order())
    assert rt.poll() == 1
    [charged] = [e.id for e in bench.emitted("payment.charged")]
    assert unmarked() == [charged]  # published, not yet marked
    assert rt.poll() == 1  # the probe's join reads that payment.charged back: a batch
    assert unmarked() == []  # marked in that batch's commit
    bench.send(refund_command())
    assert rt.poll() == 1
    [refunded] = [e.id for e in bench.emitted("payment.refunded")]
    assert unmarked() == [refunded]
    assert rt.poll() == 0
    assert unmarked() == []  # marked before blocking on the empty streams


# -- lost races: deadlocks ----------------------------------------------------------------------


def test_a_deadlock_is_retried_at_once_not_taken_for_a_database_outage(bench: Bench) -> None:
    """A transaction chosen as a deadlock's victim lost a race; the database is fine. The batch
    is run again at once, in the same poll, instead of the consumer pausing as for an outage."""
    bench.probe.deadlocks = 2
    rt = bench.runtime(PATIENT)
    placed = order()
    bench.send(placed)
    assert rt.poll() == 1
    assert [m for m, _ in bench.probe.calls] == [placed.id] * 3
    assert bench.probe.effect_count(rt.engine, "charge") == 1
    assert len(bench.emitted("payment.charged")) == 1
    assert bench.pending(bench.keys.event_stream("order.placed")) == 0


def test_two_trackers_in_the_per_message_fallback_lock_in_one_order_and_never_deadlock(
        pg_database_url: str) -> None:
    """Two trackers handle events of the same two workflows in opposite orders, each batch redone
    message by message (a handler failed). Each message locks its workflow, as the tracker's
    does; if the fallback took those locks message by message, in arrival order, each would hold
    one and wait for the other. It takes the whole batch's first, sorted, as the unit of work
    does, so one waits for the other and no transaction is chosen as a deadlock's victim."""
    from controller.db import store
    from controller.service.track import lock_batch
    from participants.runtime.handling import BatchHandler
    from participants.runtime.reading import Entry

    cid_a, cid_b = f"wf-a-{uuid.uuid4().hex[:8]}", f"wf-b-{uuid.uuid4().hex[:8]}"
    both_hold_one = threading.Barrier(2)
    calls: list[int] = []

    def batch(conn: sa.Connection, messages: list[Envelope], now: Any) -> list[list[Envelope]]:
        calls.append(len(messages))
        if len(messages) > 1:
            raise RuntimeError("a handler failed: the batch again, message by message")
        store.lock_many(conn, [messages[0].correlation_id])
        # With per-message locking each holds one lock here; else the other waits for the
        # batch's locks, and there is no one to meet.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_hold_one.wait(timeout=3)
        return [[]]

    participant = Participant(NAME, batch=batch, batch_types=("order.placed",), lock=lock_batch)
    engines = [make_engine(pg_database_url) for _ in range(2)]
    create_tables(engines[0], runtime_metadata)
    failures: list[BaseException] = []

    def run(engine: Engine, first: Envelope, second: Envelope) -> None:
        handler = BatchHandler(participant, engine, Keys("t"), ())
        entries = [Entry("s", f"{i}-0", None, message=m) for i, m in enumerate((first, second))]
        try:
            done, _ = handler.handle(entries, [])
            assert len(done) == 2
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(engines[0], order(cid_a), order(cid_b))),
               threading.Thread(target=run, args=(engines[1], order(cid_b), order(cid_a)))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for engine in engines:
            engine.dispose()
    assert not failures, failures
    assert sorted(calls) == [1, 1, 1, 1, 2, 2], "each message handled once, no transaction run again"
