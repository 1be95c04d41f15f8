"""Running a participant as a process: its Redis and database from settings, clean stop on SIGTERM."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import redis

from config.settings import Settings
from contracts.streams import Keys
from participants.runtime.db import make_engine
from participants.runtime.loop import Options, Runtime
from participants.runtime.participant import Participant
from participants.runtime.redis_server import ensure_server


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: loops finish the batch at hand, then return."""
    stop = threading.Event()

    def _handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    return stop


def redis_url(settings: Settings) -> str:
    return settings.redis_url or ensure_server(settings.data_dir)


def redis_client(settings: Settings, *, decode: bool = False) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings), decode_responses=decode,
                                health_check_interval=30)


def run_participant(participant: Participant, settings: Settings, database_url: str) -> None:
    stop = stop_on_signals()
    engine = make_engine(database_url)
    client = redis_client(settings)
    try:
        Runtime(participant, engine, client, Keys(settings.stream_prefix),
                Options.from_settings(settings)).run(stop)
    finally:
        client.close()
        engine.dispose()
