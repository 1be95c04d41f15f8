"""The runtime's own tables, kept in whatever database the participant (or the controller) uses."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)

metadata = MetaData()
_ID = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: Baton stores UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Idempotency: one row per (consumer, message id), written in the transaction of the effect.
processed = Table(
    "baton_processed", metadata,
    Column("consumer", String(64), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("processed_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("consumer", "message_id"),
)

# The transactional outbox: what a transaction wants sent, published after it commits.
outbox = Table(
    "baton_outbox", metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("stream", String(255), nullable=False),
    Column("fields", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime()),
)
Index("ix_baton_outbox_created", outbox.c.created_at)
Index(
    "ix_baton_outbox_unsent", outbox.c.seq,
    postgresql_where=outbox.c.sent_at.is_(None), sqlite_where=outbox.c.sent_at.is_(None),
)

# Durable joins: each arrival of a joined event, and whether the join has fired.
join_state = Table(
    "baton_join_state", metadata,
    Column("consumer", String(64), nullable=False),
    Column("join_name", String(64), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("fired_at", UtcDateTime()),
    PrimaryKeyConstraint("consumer", "join_name", "correlation_id"),
)
join_arrival = Table(
    "baton_join_arrival", metadata,
    Column("consumer", String(64), nullable=False),
    Column("join_name", String(64), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("message_type", String(128), nullable=False),
    Column("envelope", Text, nullable=False),
    PrimaryKeyConstraint("consumer", "join_name", "correlation_id", "message_type"),
)

# What the processes of a consumer last saw of Redis (`epoch.py`): a process started after Redis
# lost its data while none of them ran compares with this, and re-drives its outbox.
redis_seen = Table(
    "baton_redis_seen", metadata,
    Column("consumer", String(64), nullable=False),
    Column("prefix", String(64), nullable=False),
    Column("epoch", String(64), nullable=False),
    Column("run_id", String(64)),
    Column("checked_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("consumer", "prefix"),
)
