"""The API in-process, for the integration tests: `create_app` on a migrated test database and real
Redis under a stream prefix of the test's own, with its tokens and flows, and Flask's test client.
The tracker and the participants run beside it as runtimes the test polls by hand."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import redis
from flask.testing import FlaskClient
from structlog.testing import capture_logs

from config.redis_urls import is_cluster
from config.settings import Settings, load_settings
from contracts.streams import Keys
from controller.api.app import create_app
from controller.db import migrate
from controller.service.bootstrap import Services, build_services
from controller.service.track import build_tracker
from participants.reference import build
from participants.runtime.connect import connect
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime


@dataclass
class App:
    client: FlaskClient
    services: Services
    keys: Keys
    raw: redis.Redis  # bytes in and out, as the runtime wants it
    settings: Settings

    def runtime_of(self, participant: str, options: Options, consumer: str) -> Runtime:
        """A runtime on the app's database and Redis: the controller's tracker, or a reference
        participant by name. Set up (its consumer groups made), never started: poll it."""
        built = (build_tracker(self.services.catalog, self.services.registry)
                 if participant == "controller" else build(participant))
        built.adopt_registry(self.services.registry)  # as its process does: the flows' types too
        rt = Runtime(built, self.services.engine, self.raw, self.keys, options, consumer=consumer)
        rt.setup()
        return rt


def environment(database_url: str, redis_url: str, tmp_path: Path, keys: Keys, tokens: str,
                flows: dict[str, str] | None = None,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of a test app; `flows` (name: YAML) are written to a flows dir of its own."""
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "BATON_STREAM_PREFIX": keys.prefix,
        "BATON_TOKENS": tokens, "BATON_DATA_DIR": str(tmp_path / "data"),
    }
    if is_cluster(redis_url):  # RQ on the plain test server (BATON_TEST_REDIS_CLUSTER=1)
        env["BATON_RQ_REDIS_URL"] = os.environ["BATON_TEST_REDIS_URL"]
    if flows:
        flows_dir = tmp_path / "flows"
        flows_dir.mkdir(exist_ok=True)
        for name, text in flows.items():
            (flows_dir / f"{name}.yaml").write_text(text)
        env["BATON_FLOWS_DIRS"] = str(flows_dir)
    return {**env, **(extra or {})}


@contextmanager
def running_app(database_url: str, redis_url: str, tmp_path: Path, tokens: str, *,
                flows: dict[str, str] | None = None, extra: dict[str, str] | None = None,
                quiet: bool = False) -> Iterator[App]:
    """The app on a freshly migrated database; afterwards its Redis keys are deleted and its
    services closed. `quiet`: log lines are captured, not rendered on the terminal."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    settings = load_settings(environment(database_url, redis_url, tmp_path, keys, tokens, flows,
                                         extra))
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    services = build_services(settings)
    keys = services.keys  # the same prefix, with the partitioned types the flows declare
    raw = connect(redis_url)
    try:
        with capture_logs() if quiet else nullcontext():
            yield App(create_app(settings, services).test_client(), services, keys, raw, settings)
    finally:
        for key in raw.scan_iter(match=f"{keys.prefix}:*"):
            raw.delete(key)
        raw.close()
        services.close()
