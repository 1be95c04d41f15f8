"""Running a participant as a process: its Redis and database from settings, clean stop on SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import redis

from config.flows import load_registry
from config.logging import configure_logging
from config.settings import Settings, SettingsError, load_settings
from contracts.errors import FlowDefinitionError
from contracts.streams import Keys
from participants.runtime.connect import Stopped, connect
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


def redis_client(settings: Settings, *, decode: bool = False, rq: bool = False,
                 stop: threading.Event | None = None) -> redis.Redis:
    """The streams' Redis (REDIS_URL: one server or a cluster), or with `rq` RQ's, which is one
    server (BATON_RQ_REDIS_URL, else REDIS_URL's). Every command times out, so that a half-open
    connection cannot hang a publish that holds row locks; a blocking read (BLOCK
    BATON_BLOCK_MS) gets that much longer. RQ's worker raises the timeout of its own client
    further for its blocking dequeue. A cluster no node of which answers yet is waited for
    (connect.py), until `stop` is set: Stopped."""
    url = (settings.rq_redis_url if rq else None) or redis_url(settings)
    return connect(url, stop=stop, decode_responses=decode, health_check_interval=30,
                   socket_connect_timeout=settings.redis_timeout,
                   socket_timeout=settings.redis_timeout + settings.block_ms / 1000)


def run_participant(participant: Participant, settings: Settings, database_url: str) -> None:
    """A participant given no registry of its own validates with the shipped schemas and every
    message type the flow files of `settings.flows_dirs` declare, as the controller does."""
    participant.adopt_registry(load_registry(settings.flows_dirs))
    stop = stop_on_signals()
    try:
        client = redis_client(settings, stop=stop)
    except Stopped:  # SIGTERM before any node of the cluster answered
        return
    engine = make_engine(database_url)
    try:
        Runtime(participant, engine, client,
                Keys(settings.stream_prefix, participant.registry.partitioned()),
                Options.from_settings(settings)).run(stop)
    finally:
        client.close()
        engine.dispose()


def run(participant: Participant) -> None:
    """Run `participant` as a process configured from the environment, as the reference ones are:
    its database `BATON_PARTICIPANT_DATABASE_URL` (a SQLite file of its own by default), Redis,
    the message types of `BATON_FLOWS_DIRS`. A bad variable or flow file exits 2 with the reason."""
    try:
        settings = load_settings()
        configure_logging(settings, participant.name)
        run_participant(participant, settings, settings.participant_db(participant.name))
    except (SettingsError, FlowDefinitionError) as exc:
        print(f"{participant.name}: configuration error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
