"""Shared fixtures, and the tiers. Servers come from `bash scripts/test.sh`, which exports
BATON_TEST_* (and starts none when only tests/unit is run).

Every test lives in a tier's folder and gets the tier's marker (`-m unit`, `-m "not e2e"`):
tests/unit (pure code: tests/unit/conftest.py refuses sockets, processes and databases),
tests/integration (real Redis, PostgreSQL and SQLite, in-process), tests/e2e (real processes).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

TIERS = ("unit", "integration", "e2e")
HERE = Path(__file__).parent

# -- tiers ---------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier; a test outside the tiers' folders is an error. On
    a cluster (BATON_TEST_REDIS_CLUSTER=1) the plain_redis_only tests are deselected, not skipped."""
    if os.environ.get("BATON_TEST_REDIS_CLUSTER") == "1":
        gone = [i for i in items if i.get_closest_marker("plain_redis_only")]
        if gone:
            config.hook.pytest_deselected(items=gone)
            items[:] = [i for i in items if i not in gone]
    for item in items:
        parts = item.path.relative_to(HERE).parts if item.path.is_relative_to(HERE) else ()
        if not parts:
            continue  # not one of ours (pytester's)
        if len(parts) < 2 or parts[0] not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/e2e "
                "(see tests/conftest.py)")
        item.add_marker(getattr(pytest.mark, parts[0]))

# -- servers -------------------------------------------------------------------------------


def _server_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run the tests with `bash scripts/test.sh`, which starts "
            "Redis and PostgreSQL and exports BATON_TEST_REDIS_URL and BATON_TEST_DATABASE_URL",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of the test Redis server (database 0), from BATON_TEST_REDIS_URL; with
    BATON_TEST_REDIS_CLUSTER=1, the session's Redis Cluster instead (`redis_cluster_url`), so that
    a tier's tests run on a cluster as they are."""
    if os.environ.get("BATON_TEST_REDIS_CLUSTER") == "1":
        return str(request.getfixturevalue("redis_cluster_url"))
    return _server_env("BATON_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def rq_redis_url() -> str:
    """A single Redis server, whatever `redis_url` is: RQ's (it does not support Redis Cluster)."""
    return _server_env("BATON_TEST_REDIS_URL")


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A decode_responses client (of a cluster, if `redis_url` names one). The server is shared
    by tests running at the same time (two pytest workers): a test uses keys of its own prefix
    and never flushes the database."""
    from participants.runtime.connect import connect

    client = connect(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis Cluster of 3 primaries (tests/cluster.py), started on first use and shared by
    the session's tests, each with keys of its own prefix: `redis+cluster://127.0.0.1:p1,...`."""
    from tests.cluster import Cluster

    with Cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def _pg_admin() -> Iterator[Engine]:
    """Engine on BATON_TEST_DATABASE_URL's database, to create and drop test schemas."""
    engine = sa.create_engine(_server_env("BATON_TEST_DATABASE_URL"), isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _pg_schema_url(admin: Engine) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    # search_path puts every unqualified name in the schema; application_name lets the
    # teardown find connections a test forgot to close.
    url = admin.url.update_query_dict(
        {"options": f"-csearch_path={schema}", "application_name": schema}
    )
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :schema AND pid <> pg_backend_pid()"
            ),
            {"schema": schema},
        )
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL to an empty database: a SQLite file, or a fresh PostgreSQL schema.

    Tests should dispose of every engine they create before they end.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/baton.db"
    else:
        yield from _pg_schema_url(request.getfixturevalue("_pg_admin"))


@pytest.fixture
def pg_database_url(_pg_admin: Engine) -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh schema, dropped after the test."""
    yield from _pg_schema_url(_pg_admin)


@pytest.fixture
def pg_participant_url(_pg_admin: Engine) -> Iterator[str]:
    """A second fresh PostgreSQL schema: the participants' own database, apart from the controller's."""
    yield from _pg_schema_url(_pg_admin)



# -- no private Redis left behind ------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _no_private_redis_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test that lets a process start the private Redis of a BATON_DATA_DIR under its tmp_path
    (no REDIS_URL: `ensure_server`) must stop it. Whatever is still running at the end of the
    session is stopped here, and the session fails naming it."""
    yield
    from participants.runtime.redis_server import STATE_FILE, server_status, stop_server

    left = []
    for state in tmp_path_factory.getbasetemp().rglob(STATE_FILE):
        if server_status(state.parent) is not None:
            stop_server(state.parent)
            left.append(str(state.parent))
    assert not left, f"private Redis servers left running (now stopped): {left}"
