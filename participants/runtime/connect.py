"""The Redis client from one URL: `redis.Redis` for a single server, `redis.cluster.RedisCluster`
for a Redis Cluster (`redis+cluster://host:port[,host:port...]`, config/redis_urls.py), and what
the rest of the runtime needs to know of the difference: which keys one command may touch (those
of one hash slot), which servers hold data of their own (every primary), and which errors mean
"Redis is away for now" (a failover under way counts).

A cluster client learns the layout when it is made, so it cannot be made while no node answers:
`connect` then waits for one, retrying with backoff and logging each attempt with the URL's
nodes, until one answers or the process is told to stop (`Stopped`). A node that answers but
refuses the credentials, or is not part of a cluster, is a configuration error (SettingsError
naming REDIS_URL), not a wait. A single server's client
connects on its first command: the caller's retries wait for it (startup.py).

A cluster client that was made learns the layout again after a node fails; when no node answers
then (the whole cluster down), redis-py raises a RedisClusterException, which is not a RedisError.
The client `connect` makes raises `NoNodeAnswers`, a ConnectionError, instead: what every process
already waits out for a single server that is down.

The wire format is the same on both: the stream names carry no hash tag, so the streams of one
consumer spread over the cluster and a read over several of them is one XREADGROUP per slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, cast

import redis
import structlog
from redis.cluster import ClusterNode, NodesManager, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from config import redis_urls
from config.settings import SettingsError

log = structlog.get_logger("baton.startup")
LONGEST_PAUSE = 5.0  # seconds between two attempts to reach a cluster, at most

# Redis, or a part of the cluster, cannot answer now: wait and try again. On a cluster a failover
# shows as CLUSTERDOWN or TRYAGAIN, a slot no primary covers yet, or a write refused by a
# primary just demoted (READONLY) until the client learns the new layout.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError,
    SlotNotCoveredError, redis.ReadOnlyError,
)

# No node answers, or the nodes answer but do not form a cluster yet (slots not all covered).
_NOT_YET: tuple[type[Exception], ...] = (RedisClusterException, *UNAVAILABLE)


class NoNodeAnswers(redis.ConnectionError):
    """A running cluster client found no node to learn the layout from: Redis is away for now."""


class _Nodes(NodesManager):
    """redis-py's layout of the cluster, but the layout that cannot be learnt again because no
    node answers raises a ConnectionError (NoNodeAnswers), not a RedisClusterException."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            if _refusal(exc):
                raise
            raise NoNodeAnswers(str(exc)) from exc


class Stopped(Exception):
    """Told to stop while waiting for a node of the cluster to answer."""


def connect(url: str, *, stop: threading.Event | None = None, **options: Any) -> redis.Redis:
    """A client for `url`; `options` are redis-py's connection options (timeouts, decoding).
    A cluster client answers the same commands as `redis.Redis` (typed as one here); it learns
    the cluster's layout from the first node that answers, and again after a failover. While no
    node answers (or the cluster is not formed yet) it waits; `stop` set meanwhile: Stopped."""
    if not redis_urls.is_cluster(url):
        return redis.Redis.from_url(url, **options)
    parsed = redis_urls.parse_cluster(url)
    nodes = [f"{h}:{p}" for h, p in parsed.nodes]  # never the password
    pause, attempt = 0.5, 1
    while True:
        try:
            client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
                                  username=parsed.username, password=parsed.password,
                                  ssl=parsed.ssl, **options)
            # made (the layout learnt once): from now on, NoNodeAnswers (see _Nodes)
            client.nodes_manager.__class__ = _Nodes
            return cast(redis.Redis, client)
        except _NOT_YET as exc:
            refused = _refusal(exc)
            if refused:  # waiting cannot mend what the URL says: the process stops with the reason
                raise SettingsError(f"REDIS_URL: {refused} ({', '.join(nodes)})") from exc
            log.warning("no node of the Redis Cluster answers: retrying", nodes=nodes,
                        attempt=attempt, retry_in=pause, error=str(exc)[:200])
        if _stopped_during(stop, pause):
            raise Stopped(f"stopped while waiting for the Redis Cluster at {', '.join(nodes)}")
        pause, attempt = min(pause * 2, LONGEST_PAUSE), attempt + 1


def _refusal(exc: Exception) -> str | None:
    """Why a node that answered refused us, when no wait will change it: the password (redis-py
    raises its AuthenticationError, a ConnectionError, as the cause of "cannot be connected"), or a
    server that is not part of a cluster. None for a node that did not answer, or a cluster that is
    still forming."""
    cause = exc.__cause__ or exc
    if isinstance(cause, redis.AuthenticationError):
        return f"the Redis Cluster refused the credentials: {cause}"
    if isinstance(cause, RedisClusterException) and "not enabled" in str(cause):
        return "names a Redis server that is not part of a cluster (cluster mode is not enabled)"
    return None


def _stopped_during(stop: threading.Event | None, pause: float) -> bool:
    """Wait `pause` seconds; True if `stop` was set meanwhile. With no `stop` (a process with no
    handler of its own for SIGTERM: the web's workers, RQ's), the signal ends the process."""
    if stop is None:
        time.sleep(pause)
        return False
    return stop.wait(pause)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def by_slot(client: Any, keys: Iterable[str]) -> list[list[str]]:
    """`keys` in groups that one command may touch: all of them on one server, one group per
    hash slot on a cluster (in the order of each slot's first key)."""
    keys = list(keys)
    if not is_cluster(client):
        return [keys] if keys else []
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(client.keyslot(key), []).append(key)
    return list(groups.values())


def primaries(client: Any) -> list[tuple[str, redis.Redis]]:
    """Each server that holds data of its own, by name (`host:port`), with a client of it: the
    one server, or every primary of the cluster as the client last learnt them."""
    if not is_cluster(client):
        return [("", client)]
    nodes = sorted(client.get_primaries(), key=lambda n: n.name)
    return [(n.name, client.get_redis_connection(n)) for n in nodes]


def key_on(client: Any, node_name: str, key_for: Any, tries: int = 100_000) -> str | None:
    """The first of `key_for(0)`, `key_for(1)`, ... that the primary `node_name` holds (None if
    none of `tries` does): a key of Baton's own on each server, for the epoch markers."""
    for i in range(tries):
        key = key_for(i)
        if client.get_node_from_key(key).name == node_name:
            return str(key)
    return None
