"""REDIS_URL may name a Redis Cluster (`redis+cluster://host:port[,host:port...]`); RQ then
needs a server of its own (BATON_RQ_REDIS_URL). A malformed value stops the process at start
with a message naming the variable, never echoing the URL."""

from __future__ import annotations

import pytest

from config.redis_urls import ClusterUrl, is_cluster, parse_cluster
from config.settings import SettingsError, load_settings

RQ = {"BATON_RQ_REDIS_URL": "redis://rq:6379/0"}


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    assert parse_cluster("redis+cluster://a:7000,b.example:7001/") == ClusterUrl(
        (("a", 7000), ("b.example", 7001)))
    found = parse_cluster("rediss+cluster://user:p%40ss@[::1]:7000")
    assert found.nodes == (("::1", 7000),)
    assert (found.username, found.password, found.ssl) == ("user", "p@ss", True)
    assert "p@ss" not in repr(found)
    assert is_cluster("REDIS+CLUSTER://a:1") and not is_cluster("redis://a:1/0")


def test_settings_take_a_cluster_with_a_server_for_rq() -> None:
    settings = load_settings({"REDIS_URL": "redis+cluster://127.0.0.1:7000,127.0.0.1:7001", **RQ})
    assert settings.redis_url == "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    assert settings.rq_redis_url == "redis://rq:6379/0"
    assert load_settings({"REDIS_URL": "redis://h:1/0"}).rq_redis_url is None


def test_a_cluster_without_a_server_for_rq_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^BATON_RQ_REDIS_URL: required when REDIS_URL names "
                                            r"a Redis Cluster"):
        load_settings({"REDIS_URL": "redis+cluster://h:7000"})


@pytest.mark.parametrize(("url", "says"), [
    ("redis+cluster://", "node 1 of the cluster URL is not host:port"),
    ("redis+cluster://h:7000,h", "node 2 of the cluster URL is not host:port"),
    ("redis+cluster://h:70000", "node 1 of the cluster URL is not host:port"),
    ("redis+cluster://:secret@h:7000/2", "only database 0"),
    ("redis+cluster://h:7000?x=1", "no query"),
    ("cluster://h:7000", "must be redis://"),
])
def test_a_malformed_cluster_url_is_refused_naming_the_variable(url: str, says: str) -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL: ") as raised:
        load_settings({"REDIS_URL": url, **RQ})
    assert says in str(raised.value)
    assert "secret" not in str(raised.value)


def test_rq_cannot_be_given_a_cluster() -> None:
    with pytest.raises(SettingsError, match=r"^BATON_RQ_REDIS_URL: RQ does not support Redis Cluster"):
        load_settings({"REDIS_URL": "redis+cluster://h:7000", "BATON_RQ_REDIS_URL": "redis+cluster://h:7000"})
