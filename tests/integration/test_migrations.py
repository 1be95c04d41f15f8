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
