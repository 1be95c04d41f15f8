"""The forms REDIS_URL may take: one server (`redis://`, `rediss://`, `unix://`, as redis-py reads
them) or a Redis Cluster, named by one or more of its nodes:

    redis+cluster://[user:password@]host:port[,host:port...][/]
    rediss+cluster://...        (TLS)

The nodes are where the client starts: it learns the rest of the cluster from any one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_NODE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class ClusterUrl:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # a secret: never in logs
    ssl: bool = False


def scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def is_cluster(url: str | None) -> bool:
    return bool(url) and scheme(url or "") in CLUSTER_SCHEMES


def check(url: str) -> None:
    """Raise ValueError, saying what is wrong without echoing the URL (it may hold a password)."""
    if scheme(url) in CLUSTER_SCHEMES:
        parse_cluster(url)
    elif scheme(url) not in SINGLE_SCHEMES:
        raise ValueError("must be redis://host:port[/db], rediss://…, unix:///path, or a cluster: "
                         "redis+cluster://host:port[,host:port...]")


def parse_cluster(url: str) -> ClusterUrl:
    name, _, rest = url.partition("://")
    if "?" in rest or "#" in rest:
        raise ValueError("a redis+cluster:// URL takes no query or fragment")
    credentials, at, hosts = rest.rpartition("@")
    if not at:
        credentials, hosts = "", rest
    hosts = hosts.rstrip("/")
    if "/" in hosts:
        raise ValueError("a Redis Cluster has only database 0: no /<db> after the nodes")
    nodes = []
    for i, node in enumerate(hosts.split(","), 1):
        found = _NODE.match(node.strip())
        if not found or not 0 < int(found.group(2)) < 65536:
            raise ValueError(f"node {i} of the cluster URL is not host:port")
        nodes.append((found.group(1).strip("[]"), int(found.group(2))))
    user, colon, password = credentials.partition(":")
    return ClusterUrl(tuple(nodes), unquote(user) or None,
                      unquote(password) if colon else None, name.lower() == "rediss+cluster")
