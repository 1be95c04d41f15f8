"""Alembic environment: the controller's tables and the runtime's (outbox, processed ids, joins)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from controller.db.tables import metadata as controller_metadata
from participants.runtime.tables import metadata as runtime_metadata

target_metadata = [controller_metadata, runtime_metadata]


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `baton migrate`, which passes a connection")
_run(connection)
