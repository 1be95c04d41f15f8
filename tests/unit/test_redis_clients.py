"""Every Redis client Baton builds times out: a half-open connection must not hang a publish that
holds row locks, and a blocking read must not time out before its BLOCK does."""

from __future__ import annotations

import pytest

from config.settings import SettingsError, load_settings
from participants.runtime.service import redis_client


def test_a_redis_client_times_out_but_later_than_a_blocking_read() -> None:
    for block_ms in ("2000", "60000"):
        settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "BATON_BLOCK_MS": block_ms})
        client = redis_client(settings)  # connects lazily: no socket here
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == settings.redis_timeout
        assert kwargs["socket_timeout"] == settings.redis_timeout + int(block_ms) / 1000
        client.close()
    assert load_settings({}).redis_timeout == 5.0


def test_the_redis_timeout_is_validated_at_start() -> None:
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SettingsError, match=r"^BATON_REDIS_TIMEOUT: "):
            load_settings({"BATON_REDIS_TIMEOUT": bad})
