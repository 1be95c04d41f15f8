"""Settings read once from environment variables into a frozen object; nothing else reads os.environ.

Every variable is validated by a marshmallow schema: an unknown `BATON_*` name or a malformed value
stops the process at start with a message naming the variable.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config import redis_urls

ROLES = ("starter", "viewer", "operator")


class SettingsError(Exception):
    """A variable of the environment is malformed; the message names it."""


@dataclass(frozen=True)
class Token:
    name: str
    role: str
    sha256: str  # hex digest; the token itself is never kept


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".baton")
    database_url: str = ""
    redis_url: str | None = None
    rq_redis_url: str | None = None  # RQ's (sweeps, alerts); REDIS_URL's when it is one server
    port: int = 8000
    stream_prefix: str = "baton"
    tokens: tuple[Token, ...] = ()
    flows_dirs: tuple[Path, ...] = ()
    participant_database_url: str = ""
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    read_count: int = 100
    block_ms: int = 2000
    redis_timeout: float = 5.0  # seconds: connecting, and any reply beyond a blocking read's BLOCK
    metrics_max_age: float = 10.0  # seconds a process answers /metrics from its last reading
    linger_ms: int = 20
    relay_interval: float = 1.0
    sweep_interval: float = 1.0
    redrive_window: float = 3600.0
    stream_retention: float = 3600.0  # an event stream no consumer group reads keeps this much
    max_body_bytes: int = 1_048_576
    max_backlog: int = 2_000  # kickoffs answer 429 while a consumer group is further behind
    alert_webhook: str | None = None
    alert_retry_intervals: tuple[int, ...] = (1, 5, 15, 60, 300)  # seconds before each retry
    api_url: str = "http://127.0.0.1:8000"  # what the `baton` client commands talk to
    api_token: str | None = field(default=None, repr=False)  # a secret: never in logs
    log_level: str = "INFO"
    log_format: str = "json"
    crash_points: frozenset[str] = field(default_factory=frozenset)
    # This process's name in its consumer groups; "" for `<host>-<pid>`. Stable across restarts,
    # a replica reads its own pending entries again at once instead of waiting for another to
    # reclaim them. Unique per replica of a participant: BATON_CONSUMER, else `<host>-<name>`
    # from HONCHO_PROCESS_NAME (`tracker.2`, which `honcho start -c` and `honcho export` set).
    consumer_name: str = ""

    def participant_db(self, participant: str) -> str:
        return self.participant_database_url.replace("{name}", participant)


# (backend, driver) pairs the engines are built for (participants/runtime/db.py): psycopg 3 for PostgreSQL.
_DATABASES = {("sqlite", "pysqlite"): "sqlite", ("postgresql", "psycopg"): "postgresql+psycopg"}


def _database_url(value: str) -> None:
    """A SQLAlchemy URL Baton can open. The value is never echoed: it may hold a password."""
    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as exc:
        raise ValidationError("not a SQLAlchemy URL such as sqlite:///path/baton.db or "
                              "postgresql+psycopg://user:pw@host/db") from exc
    try:
        dialect = (url.get_backend_name(), url.get_driver_name())  # postgresql: the default driver
    except ArgumentError:  # a dialect SQLAlchemy does not know
        dialect = (url.get_backend_name(), "")
    if dialect not in _DATABASES:
        raise ValidationError(f"{url.drivername} is not supported; use one of "
                              f"{', '.join(_DATABASES.values())}")


def _redis_url(value: str) -> None:
    try:
        redis_urls.check(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


def _rq_redis_url(value: str) -> None:
    """RQ runs on one server: it does not support Redis Cluster."""
    _redis_url(value)
    if redis_urls.is_cluster(value):
        raise ValidationError("RQ does not support Redis Cluster: name one Redis server "
                              "(redis://host:port[/db])")


def _participant_database_url(value: str) -> None:
    """The same, with each `{name}` standing for a participant's name."""
    _database_url(value.replace("{name}", "name"))


def _intervals(text: str) -> tuple[int, ...]:
    """`1,5,15`: whole seconds, 1 to 20 of them."""
    if not re.fullmatch(r"\d{1,6}(,\d{1,6}){0,19}", text):
        raise ValidationError("must be 1 to 20 comma-separated whole seconds, e.g. 1,5,15")
    return tuple(int(s) for s in text.split(","))


_CONSUMER = r"^[A-Za-z0-9_.:@-]{1,64}$"
_HONCHO_NAME = "HONCHO_PROCESS_NAME"  # honcho's, not ours: `<line>.<n>`


def _consumer_from_honcho(env: Mapping[str, str]) -> dict[str, str]:
    """BATON_CONSUMER as honcho's replica name implies it, when BATON_CONSUMER is not given."""
    name = env.get(_HONCHO_NAME, "")
    if "BATON_CONSUMER" in env or not name:
        return {}
    implied = f"{socket.gethostname()}-{name}"[-64:]
    return {"BATON_CONSUMER": implied} if re.fullmatch(_CONSUMER, implied) else {}


# Environment variable -> (settings attribute, marshmallow field)
_VARIABLES: dict[str, tuple[str, fields.Field]] = {
    "BATON_DATA_DIR": ("data_dir", fields.Str(validate=validate.Length(min=1))),
    "DATABASE_URL": ("database_url", fields.Str(validate=_database_url)),
    "REDIS_URL": ("redis_url", fields.Str(validate=_redis_url)),
    "BATON_RQ_REDIS_URL": ("rq_redis_url", fields.Str(validate=_rq_redis_url)),
    "PORT": ("port", fields.Int(validate=validate.Range(min=1, max=65535))),
    "BATON_STREAM_PREFIX": (
        "stream_prefix", fields.Str(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,32}$"))),
    "BATON_TOKENS": ("tokens", fields.Str()),
    "BATON_TOKENS_FILE": ("tokens_file", fields.Str()),
    "BATON_FLOWS_DIRS": ("flows_dirs", fields.Str()),
    "BATON_PARTICIPANT_DATABASE_URL": (
        "participant_database_url", fields.Str(validate=_participant_database_url)),
    "BATON_VISIBILITY_TIMEOUT": ("visibility_timeout", fields.Float(validate=validate.Range(min=0.05))),
    "BATON_MAX_DELIVERIES": ("max_deliveries", fields.Int(validate=validate.Range(min=1, max=1000))),
    "BATON_READ_COUNT": ("read_count", fields.Int(validate=validate.Range(min=1, max=10000))),
    "BATON_BLOCK_MS": ("block_ms", fields.Int(validate=validate.Range(min=1, max=60000))),
    "BATON_REDIS_TIMEOUT": ("redis_timeout", fields.Float(validate=validate.Range(min=0.1, max=600))),
    "BATON_METRICS_MAX_AGE": (
        "metrics_max_age", fields.Float(validate=validate.Range(min=0, max=3600))),
    "BATON_LINGER_MS": ("linger_ms", fields.Int(validate=validate.Range(min=0, max=1000))),
    "BATON_RELAY_INTERVAL": ("relay_interval", fields.Float(validate=validate.Range(min=0.01))),
    "BATON_SWEEP_INTERVAL": ("sweep_interval", fields.Float(validate=validate.Range(min=0.01))),
    "BATON_REDRIVE_WINDOW": ("redrive_window", fields.Float(validate=validate.Range(min=1))),
    "BATON_STREAM_RETENTION": ("stream_retention", fields.Float(validate=validate.Range(min=1))),
    "BATON_MAX_BODY_BYTES": ("max_body_bytes", fields.Int(validate=validate.Range(min=1024))),
    "BATON_MAX_BACKLOG": ("max_backlog", fields.Int(validate=validate.Range(min=1))),
    "BATON_ALERT_WEBHOOK": ("alert_webhook", fields.Url(require_tld=False, schemes={"http", "https"})),
    "BATON_ALERT_RETRY_INTERVALS": ("alert_retry_intervals", fields.Function(deserialize=_intervals)),
    "BATON_API_URL": ("api_url", fields.Url(require_tld=False, schemes={"http", "https"})),
    "BATON_API_TOKEN": ("api_token", fields.Str(validate=validate.Length(min=1))),
    "BATON_LOG_LEVEL": (
        "log_level", fields.Str(validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))),
    "BATON_LOG_FORMAT": ("log_format", fields.Str(validate=validate.OneOf(["json", "console"]))),
    "BATON_CRASH_POINTS": ("crash_points", fields.Str()),
    "BATON_CONSUMER": ("consumer_name", fields.Str(validate=validate.Regexp(_CONSUMER))),
}
# Read by other tools, never by Baton: allowed so that they do not count as typos.
_FOREIGN_PREFIXES = ("BATON_TEST_",)


_ENV_SCHEMA = Schema.from_dict({k: f for k, (_, f) in _VARIABLES.items()}, name="Environment")()


def _parse_tokens(text: str) -> tuple[Token, ...]:
    tokens: list[Token] = []
    for i, triple in enumerate(t.strip() for t in text.split(",") if t.strip()):
        parts = triple.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValidationError(f"entry {i + 1} is not name:role:token")
        name, role, secret = parts
        if role not in ROLES:
            raise ValidationError(f"entry {i + 1} ({name}): role must be one of {', '.join(ROLES)}")
        token = Token(name, role, hash_token(secret))
        if repeated := _repeats(token, tokens):
            raise ValidationError(f"entry {i + 1} ({name}) repeats the {repeated} of another entry")
        tokens.append(token)
    return tuple(tokens)


def _repeats(token: Token, given: list[Token]) -> str | None:
    """`name` or `token` if one of `given` has the same: with both kept, the last would win."""
    if any(t.name == token.name for t in given):
        return "name"
    return "token" if any(t.sha256 == token.sha256 for t in given) else None


def _read_tokens_file(path: str, given: tuple[Token, ...]) -> tuple[Token, ...]:
    """Production tokens: one `name:role:sha256-hex` per line, `#` comments allowed; none may
    repeat the name or token of another, or of `given` (BATON_TOKENS')."""
    tokens = list(given)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(f"BATON_TOKENS_FILE: cannot read {path}: {exc.strerror}") from exc
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[0] or parts[1] not in ROLES \
                or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[2]):
            raise SettingsError(f"BATON_TOKENS_FILE: line {n} is not name:role:<sha256 hex>")
        token = Token(parts[0], parts[1], parts[2].lower())
        if repeated := _repeats(token, tokens):
            raise SettingsError(f"BATON_TOKENS_FILE: line {n} ({token.name}) repeats the {repeated} "
                                "of another token")
        tokens.append(token)
    return tuple(tokens[len(given):])


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    unknown = sorted(
        k for k in env
        if k.startswith("BATON_") and k not in _VARIABLES and not k.startswith(_FOREIGN_PREFIXES)
    )
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown variable (known: {', '.join(_VARIABLES)})")
    present = {k: v for k, v in env.items() if k in _VARIABLES} | _consumer_from_honcho(env)
    try:
        loaded = _ENV_SCHEMA.load(present, unknown=EXCLUDE)
    except ValidationError as exc:
        name, problems = sorted(exc.messages_dict.items())[0]
        raise SettingsError(f"{name}: {'; '.join(map(str, problems))}") from exc
    return _build(loaded)


def _build(loaded: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {_VARIABLES[k][0]: v for k, v in loaded.items()}
    data_dir = Path(values.pop("data_dir", ".baton")).absolute()
    try:
        tokens = _parse_tokens(values.pop("tokens", ""))
    except ValidationError as exc:
        raise SettingsError(f"BATON_TOKENS: {exc.messages[0]}") from exc
    if "tokens_file" in values:
        tokens += _read_tokens_file(values.pop("tokens_file"), tokens)
    flows_dirs = tuple(Path(p) for p in values.pop("flows_dirs", "").split(":") if p)
    for directory in flows_dirs:
        if not directory.is_dir():
            raise SettingsError(f"BATON_FLOWS_DIRS: {directory} is not a directory")
    crash = frozenset(p for p in values.pop("crash_points", "").split(",") if p)
    if redis_urls.is_cluster(values.get("redis_url")) and not values.get("rq_redis_url"):
        raise SettingsError("BATON_RQ_REDIS_URL: required when REDIS_URL names a Redis Cluster: "
                            "RQ (the sweeps and alert jobs) needs one Redis server")
    values.setdefault("database_url", f"sqlite:///{data_dir}/baton.db")
    values.setdefault("participant_database_url", f"sqlite:///{data_dir}/participant-{{name}}.db")
    return Settings(data_dir=data_dir, tokens=tokens, flows_dirs=flows_dirs, crash_points=crash,
                    **values)
