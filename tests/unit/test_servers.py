"""The Redis server helper finds an executable server binary (without starting it)."""

from __future__ import annotations

import os

from participants.runtime import redis_server


def test_server_binary_exists() -> None:
    assert os.access(redis_server.server_binary(), os.X_OK)
