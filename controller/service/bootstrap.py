"""The composition root: builds every adapter a controller process needs from settings, once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis
from sqlalchemy import Engine

from config.flows import Catalog, load_catalog
from config.settings import Settings
from contracts.payloads import Registry
from contracts.registry import default_registry
from contracts.streams import Keys
from participants.runtime.db import make_engine
from participants.runtime.service import redis_client


@dataclass
class Services:
    settings: Settings
    engine: Engine
    redis: Redis  # the streams' (one server or a cluster)
    catalog: Catalog
    registry: Registry
    keys: Keys
    rq_redis: Redis | None = None  # RQ's own server (BATON_RQ_REDIS_URL), if it has one

    @property
    def rq(self) -> Redis:
        """RQ's Redis (sweeps, alerts): one server, `redis` itself unless REDIS_URL is a cluster."""
        return self.rq_redis if self.rq_redis is not None else self.redis

    _closing: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def on_close(self, action: Callable[[], None]) -> None:
        """Run `action` first when the services close (while the database is still there)."""
        self._closing.append(action)

    def close(self) -> None:
        for action in self._closing:
            action()
        self.redis.close()
        if self.rq_redis is not None:
            self.rq_redis.close()
        self.engine.dispose()


def build_services(settings: Settings, stop: threading.Event | None = None) -> Services:
    """Every adapter; a Redis Cluster with no node answering yet is waited for (connect.py),
    until `stop` is set (participants.runtime.connect.Stopped)."""
    registry = default_registry()
    catalog = load_catalog(registry, settings.flows_dirs)
    return Services(
        settings=settings, engine=make_engine(settings.database_url), redis=redis_client(settings, stop=stop),
        catalog=catalog, registry=registry, keys=Keys(settings.stream_prefix, registry.partitioned()),
        rq_redis=redis_client(settings, rq=True) if settings.rq_redis_url else None,
    )
