"""Database migrations (Alembic), run by the Procfile's `release` line and safe to run again."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

_HERE = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Idempotent; concurrent callers wait for each other (advisory lock, SQLite's write lock)."""
    config = alembic_config(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(72616)"))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def behind(conn: Connection) -> bool:
    """Whether the schema lacks a migration this code has: none applied yet (the release line has
    not run), or an older head. A schema ahead of this code (a newer release migrated first, as in
    a rolling deploy) is not behind."""
    script = _script()
    current = set(MigrationContext.configure(conn).get_current_heads())
    known = {r.revision for r in script.walk_revisions()}
    return not current or (current <= known and current != set(script.get_heads()))


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(_HERE))


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new revision against a database at head (developers only)."""
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)
