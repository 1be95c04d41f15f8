"""Settings from the environment: defaults, every variable, and malformed values named at start."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from config.settings import Settings, SettingsError, Token, hash_token, load_settings
from participants.runtime.loop import Options


def refused(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return str(caught.value)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_defaults_with_an_empty_environment() -> None:
    settings = load_settings({})
    data_dir = Path(".baton").absolute()
    assert settings == Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir}/baton.db",
        participant_database_url=f"sqlite:///{data_dir}/participant-{{name}}.db",
    )
    assert settings.redis_url is None
    assert (settings.port, settings.stream_prefix, settings.tokens, settings.flows_dirs) == (
        8000, "baton", (), ())
    assert (settings.visibility_timeout, settings.max_deliveries, settings.read_count) == (30.0, 5, 100)
    assert (settings.block_ms, settings.relay_interval, settings.sweep_interval) == (2000, 1.0, 1.0)
    assert (settings.max_body_bytes, settings.log_level, settings.log_format) == (1_048_576, "INFO", "json")
    assert settings.crash_points == frozenset()
    assert settings.alert_webhook is None
    assert settings.participant_db("payment") == f"sqlite:///{data_dir}/participant-payment.db"


def test_variables_that_baton_does_not_own_are_ignored() -> None:
    assert load_settings({"HOME": "/root", "PATH": "/bin", "BATONFOO": "x"}) == load_settings({})


def test_every_variable_is_parsed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    settings = load_settings({
        "BATON_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": "postgresql+psycopg://u@db/baton",
        "REDIS_URL": "redis://cache:6380/2",
        "PORT": "5050",
        "BATON_STREAM_PREFIX": "acme.prod-1",
        "BATON_TOKENS": "ann:operator:s3cret-a, bob:viewer:s3cret-b,",
        "BATON_FLOWS_DIRS": f"{tmp_path}/a:{tmp_path}/b",
        "BATON_PARTICIPANT_DATABASE_URL": "postgresql+psycopg://u@db/{name}",
        "BATON_VISIBILITY_TIMEOUT": "2.5",
        "BATON_MAX_DELIVERIES": "7",
        "BATON_READ_COUNT": "10",
        "BATON_BLOCK_MS": "150",
        "BATON_RELAY_INTERVAL": "0.2",
        "BATON_SWEEP_INTERVAL": "0.3",
        "BATON_MAX_BODY_BYTES": "4096",
        "BATON_ALERT_WEBHOOK": "https://hooks.internal/baton",
        "BATON_LOG_LEVEL": "DEBUG",
        "BATON_LOG_FORMAT": "console",
        "BATON_CRASH_POINTS": "outbox.before_xadd,runtime.before_ack",
    })
    assert settings.data_dir == tmp_path / "data"
    assert settings.database_url == "postgresql+psycopg://u@db/baton"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.port == 5050
    assert settings.stream_prefix == "acme.prod-1"
    assert settings.tokens == (
        Token("ann", "operator", sha("s3cret-a")), Token("bob", "viewer", sha("s3cret-b")))
    assert settings.flows_dirs == (tmp_path / "a", tmp_path / "b")
    assert settings.participant_db("inventory") == "postgresql+psycopg://u@db/inventory"
    assert settings.visibility_timeout == 2.5
    assert settings.max_deliveries == 7
    assert settings.read_count == 10
    assert settings.block_ms == 150
    assert settings.relay_interval == 0.2
    assert settings.sweep_interval == 0.3
    assert settings.max_body_bytes == 4096
    assert settings.alert_webhook == "https://hooks.internal/baton"
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")
    assert settings.crash_points == frozenset({"outbox.before_xadd", "runtime.before_ack"})


def test_the_data_dir_places_the_default_databases(tmp_path: Path) -> None:
    settings = load_settings({"BATON_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path}/baton.db"
    assert settings.participant_db("shipping") == f"sqlite:///{tmp_path}/participant-shipping.db"


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:1/0", "unix:///tmp/redis.sock"])
def test_redis_urls_of_every_scheme_are_accepted(url: str) -> None:
    assert load_settings({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", [
    "sqlite:///relative.db", "sqlite:////abs/baton.db", "sqlite://", "sqlite+pysqlite:///x.db",
    "postgresql+psycopg://u:pw@db:5432/baton?connect_timeout=5",
])
def test_database_urls_of_every_supported_dialect_are_accepted(url: str) -> None:
    assert load_settings({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("name", ["DATABASE_URL", "BATON_PARTICIPANT_DATABASE_URL"])
@pytest.mark.parametrize(("url", "why"), [
    ("notaurl", "not a SQLAlchemy URL"),
    ("postgresql+psycopg://u@db:port/baton", "not a SQLAlchemy URL"),
    ("mysql://u@db/baton", "mysql is not supported; use one of sqlite, postgresql+psycopg"),
    ("postgres://u@db/baton", "postgres is not supported"),
    ("postgresql+psycopg2://u@db/baton", "postgresql+psycopg2 is not supported"),
    ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite is not supported"),
])
def test_a_database_url_baton_cannot_open_is_refused(name: str, url: str, why: str) -> None:
    message = refused({name: url})
    assert message.startswith(f"{name}: ") and why in message, message


def test_a_refused_database_url_is_not_echoed() -> None:
    message = refused({"DATABASE_URL": "postgresql+psycopg://u:hunter2@db:5432x/baton"})
    assert "hunter2" not in message, message


def test_the_participant_database_url_may_name_the_participant(tmp_path: Path) -> None:
    settings = load_settings({"BATON_PARTICIPANT_DATABASE_URL": f"sqlite:///{tmp_path}/{{name}}.db"})
    assert settings.participant_db("payment") == f"sqlite:///{tmp_path}/payment.db"


def test_a_flows_dir_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    for missing in (tmp_path / "absent", tmp_path / "a-file"):
        message = refused({"BATON_FLOWS_DIRS": f"{tmp_path / 'flows'}:{missing}"})
        assert message == f"BATON_FLOWS_DIRS: {missing} is not a directory"


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("name", "value"), [
    ("PORT", "x"),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("REDIS_URL", "http://localhost:6379"),
    ("REDIS_URL", "localhost:6379"),
    ("DATABASE_URL", ""),
    ("BATON_DATA_DIR", ""),
    ("BATON_STREAM_PREFIX", "has space"),
    ("BATON_STREAM_PREFIX", "a:b"),
    ("BATON_MAX_DELIVERIES", "0"),
    ("BATON_MAX_DELIVERIES", "many"),
    ("BATON_VISIBILITY_TIMEOUT", "0"),
    ("BATON_VISIBILITY_TIMEOUT", "nan"),
    ("BATON_READ_COUNT", "-5"),
    ("BATON_BLOCK_MS", "1.5"),
    ("BATON_RELAY_INTERVAL", "soon"),
    ("BATON_SWEEP_INTERVAL", "0"),
    ("BATON_MAX_BODY_BYTES", "10"),
    ("BATON_ALERT_WEBHOOK", "ftp://hooks.example/x"),
    ("BATON_ALERT_WEBHOOK", "not a url"),
    ("BATON_LOG_LEVEL", "VERBOSE"),
    ("BATON_LOG_FORMAT", "xml"),
    ("BATON_CONSUMER", "has space"),
    ("BATON_CONSUMER", "x" * 65),
])
def test_a_malformed_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    message = refused({name: value})
    assert message.startswith(f"{name}: "), message


@pytest.mark.parametrize("tokens", [
    "ann:admin:secret",
    "ann:operator:secret,bob:root:other",
    "ann:operator",
    "just-a-token",
    "ann:operator:sec:ret",
    "ann::secret",
    ":viewer:secret",
    "ann:viewer:",
])
def test_malformed_tokens_are_refused_naming_the_variable(tokens: str) -> None:
    message = refused({"BATON_TOKENS": tokens})
    assert message.startswith("BATON_TOKENS: "), message
    assert "secret" not in message.replace("name:role:token", "")  # never echo a token back


def test_a_bad_role_names_the_roles() -> None:
    message = refused({"BATON_TOKENS": "ann:viewer:x,bob:admin:y"})
    assert message == "BATON_TOKENS: entry 2 (bob): role must be one of starter, viewer, operator"


def test_an_unknown_baton_variable_is_refused() -> None:
    message = refused({"BATON_FOO": "1", "PORT": "8080"})
    assert message.startswith("BATON_FOO: unknown variable")


def test_a_misspelt_variable_is_refused_even_when_the_others_are_fine() -> None:
    assert refused({"BATON_TOKEN": "ann:viewer:x"}).startswith("BATON_TOKEN: ")


def test_baton_test_variables_are_allowed() -> None:
    settings = load_settings({"BATON_TEST_REDIS_URL": "redis://x:1/0", "BATON_TEST_ANYTHING": "?"})
    assert settings == load_settings({})


def test_tokens_are_stored_hashed_never_in_clear() -> None:
    secret = "tok-9f8e7d6c5b4a-very-secret"
    settings = load_settings({"BATON_TOKENS": f"ci:starter:{secret}"})
    [token] = settings.tokens
    assert token == Token("ci", "starter", hash_token(secret))
    assert token.sha256 == sha(secret)
    assert secret not in repr(settings)
    assert secret not in str(settings)
    assert secret not in repr(token)


def test_a_tokens_file_holds_hashed_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "# production tokens\n"
        f"ops:operator:{sha('ops-secret')}\n"
        "\n"
        f"   dash:viewer:{sha('dash-secret').upper()}   \n",
        encoding="utf-8",
    )
    settings = load_settings({"BATON_TOKENS_FILE": str(path), "BATON_TOKENS": "dev:starter:dev-secret"})
    assert settings.tokens == (
        Token("dev", "starter", sha("dev-secret")),
        Token("ops", "operator", sha("ops-secret")),
        Token("dash", "viewer", sha("dash-secret")),
    )


@pytest.mark.parametrize("line", [
    "ops:operator:plain-token",
    f"ops:admin:{sha('x')}",
    f"ops:operator:{sha('x')}:extra",
    f"ops:operator:{sha('x')[:-1]}",
    f":operator:{sha('x')}",
    "ops:operator:" + "z" * 64,
])
def test_a_malformed_tokens_file_line_is_refused(tmp_path: Path, line: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# header\nok:viewer:{sha('y')}\n{line}\n", encoding="utf-8")
    message = refused({"BATON_TOKENS_FILE": str(path)})
    assert message == "BATON_TOKENS_FILE: line 3 is not name:role:<sha256 hex>"


def test_a_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    message = refused({"BATON_TOKENS_FILE": str(tmp_path / "absent")})
    assert message.startswith("BATON_TOKENS_FILE: cannot read")


def test_the_runtime_options_are_the_settings_with_the_same_defaults() -> None:
    """One table of defaults: an Options built bare equals one built from default settings, and
    each option follows its variable."""
    assert Options() == Options.from_settings(Settings())
    assert Options().linger_ms == Settings().linger_ms == 20
    options = Options.from_settings(load_settings({"BATON_LINGER_MS": "0", "BATON_READ_COUNT": "7",
                                                   "BATON_CRASH_POINTS": "runtime.before_ack"}),
                                    relay_outbox=False)
    assert (options.linger_ms, options.read_count, options.relay_outbox) == (0, 7, False)
    assert options.crash_points == frozenset({"runtime.before_ack"})


@pytest.mark.parametrize("tokens", ["ann:viewer:one,ann:operator:two", "ann:viewer:same,bob:operator:same"])
def test_a_token_name_or_secret_given_twice_is_refused_naming_the_variable(tokens: str) -> None:
    message = refused({"BATON_TOKENS": tokens})
    assert message.startswith("BATON_TOKENS: entry 2"), message
    assert "same" not in message and "one" not in message


def test_a_token_in_the_file_that_repeats_one_already_given_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"ops:operator:{sha('ops')}\nci:viewer:{sha('dev')}\n", encoding="utf-8")
    message = refused({"BATON_TOKENS": "dev:starter:dev", "BATON_TOKENS_FILE": str(path)})
    assert message.startswith("BATON_TOKENS_FILE: line 2 "), message  # dev's secret again
    path.write_text(f"ops:operator:{sha('ops')}\n# again\nops:viewer:{sha('x')}\n", encoding="utf-8")
    assert refused({"BATON_TOKENS_FILE": str(path)}).startswith("BATON_TOKENS_FILE: line 3 ")


def test_the_consumer_name_is_given_or_implied_by_honchos_replica_name() -> None:
    """Stable across a replica's restarts: `honcho start -c tracker=3` and `honcho export` set
    HONCHO_PROCESS_NAME (`tracker.2`); BATON_CONSUMER wins; neither: the runtime's `<host>-<pid>`."""
    import socket

    assert load_settings({}).consumer_name == ""
    assert load_settings({"BATON_CONSUMER": "eu-1.tracker-2"}).consumer_name == "eu-1.tracker-2"
    implied = load_settings({"HONCHO_PROCESS_NAME": "tracker.2"}).consumer_name
    assert implied == f"{socket.gethostname()}-tracker.2"[-64:]
    assert load_settings({"HONCHO_PROCESS_NAME": "tracker.2", "BATON_CONSUMER": "t2"}).consumer_name == "t2"
    assert Options.from_settings(load_settings({"BATON_CONSUMER": "t2"})).consumer_name == "t2"
