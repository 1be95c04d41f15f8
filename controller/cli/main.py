"""The `baton` command: the processes of the Procfile, the demo, and (later) an API client."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from config.logging import configure_logging
from config.settings import Settings, SettingsError, load_settings
from contracts.errors import FlowDefinitionError
from controller.cli import api_commands as cli_client
from controller.cli import report as report_cli


def _settings(process: str) -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        _configuration_error(exc)
    configure_logging(settings, process)
    return settings


def _configuration_error(exc: SettingsError | FlowDefinitionError) -> NoReturn:
    """The variable at fault and why, without a traceback; exit status 2."""
    click.echo(f"baton: configuration error: {exc}", err=True)
    sys.exit(2)


@click.group()
def main() -> None:
    """Baton: a front controller for event-driven workflows over Redis Streams."""


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (the Procfile's release line)."""
    from controller.db import migrate as migrations
    from participants.runtime.db import make_engine

    settings = _settings("release")
    engine = make_engine(settings.database_url)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()
    click.echo("database is up to date")


def _controller_process(name: str, body: Callable[[Any, Any], None]) -> None:
    from controller.service.bootstrap import build_services
    from participants.runtime.connect import Stopped
    from participants.runtime.service import stop_on_signals
    from participants.runtime.startup import until_reachable

    settings = _settings(name)
    stop = stop_on_signals()
    try:
        services = build_services(settings, stop)
    except (SettingsError, FlowDefinitionError) as exc:  # a flow that cannot be loaded, or a
        _configuration_error(exc)  # Redis Cluster that refuses REDIS_URL's password
    except Stopped:  # SIGTERM before any node of the Redis Cluster answered: a clean stop
        return
    try:
        if until_reachable(lambda: _prepare(services), stop, "the database"):
            body(services, stop)
    except FlowDefinitionError as exc:  # a declared message type changed incompatibly
        _configuration_error(exc)
    finally:
        services.close()


def _prepare(services: Any) -> None:
    """The schema up to date, and the declared message types checked against those recorded."""
    from contracts.timefmt import utcnow
    from controller.db import declared
    from controller.db import migrate as migrations

    migrations.upgrade(services.engine)
    with services.engine.begin() as conn:
        declared.record(conn, services.registry, utcnow())


def _consumer_process(name: str, build: Callable[[Any], Any]) -> None:
    """A controller process that is one consumer loop over the participant `build(services)`
    returns. It leaves its unsent outbox rows to the relay process."""
    from participants.runtime.loop import Options, Runtime

    def body(services: Any, stop: Any) -> None:
        Runtime(build(services), services.engine, services.redis, services.keys,
                Options.from_settings(services.settings, relay_outbox=False)).run(stop)

    _controller_process(name, body)


@main.command()
def tracker() -> None:
    """Read every event stream of every loaded flow and move workflows along."""
    from controller.service.track import build_tracker

    _consumer_process("tracker", lambda services: build_tracker(services.catalog, services.registry))


@main.command()
def relay() -> None:
    """Publish outbox rows that a crash left unsent."""
    from controller.processes.relay import run_relay

    _controller_process("relay", run_relay)


@main.command()
def clock() -> None:
    """Queue an SLA sweep on the RQ workers every BATON_SWEEP_INTERVAL seconds."""
    from controller.processes.clock import run_clock

    _controller_process("clock", run_clock)


@main.command()
def worker() -> None:
    """Run an RQ worker for sweeps and alert webhooks (JSON serializer, retries, scheduler)."""
    from controller.processes.worker import run_worker

    _controller_process("worker", run_worker)


@main.command()
def alerts() -> None:
    """Queue the alert webhook of every workflow that needs attention."""
    from controller.processes.alerts import build_alerter

    _consumer_process("alerts", lambda services: build_alerter(
        services.catalog, services.registry, services.settings, services.rq))


@main.command()
@click.argument("name")
def participant(name: str) -> None:
    """Run one reference participant (inventory, payment, shipping, notification)."""
    from participants import reference
    from participants.runtime.service import run_participant

    settings = _settings(name)
    try:
        built = reference.build(name)
    except KeyError:
        raise click.BadParameter(f"no reference participant {name!r}; known: "
                                 f"{', '.join(reference.NAMES)}") from None
    try:
        run_participant(built, settings, settings.participant_db(name))
    except FlowDefinitionError as exc:  # BATON_FLOWS_DIRS holds a flow that cannot be loaded
        _configuration_error(exc)


@main.command()
@click.option("--orders", default=60, show_default=True, help="How many orders to place.")
def demo(orders: int) -> None:
    """Run the whole system on embedded defaults, drive orders through it, print the outcome."""
    from controller.cli.demo import run_demo

    try:
        status = run_demo(orders=orders)
    except SettingsError as exc:
        _configuration_error(exc)
    sys.exit(status)


@main.group()
def redis() -> None:
    """The private Redis server of $BATON_DATA_DIR (used when REDIS_URL is not set).

    The first process that needs it starts it, and it outlives them all (a restart finds its
    streams again): `baton redis stop` stops it once every process has stopped."""


@redis.command("status")
@click.option("--json", "json_out", is_flag=True, help="Print JSON: {data_dir, running, url, pid}.")
def redis_status(json_out: bool) -> None:
    """Print the private server's URL and pid, or `not running`."""
    import json

    from participants.runtime.redis_server import server_status

    settings = _settings("redis")
    found = server_status(settings.data_dir)
    if json_out:
        click.echo(json.dumps({"data_dir": str(settings.data_dir), "running": found is not None,
                               "url": found and found["url"], "pid": found and found["pid"]}))
    elif found is None:
        click.echo("not running")
    else:
        click.echo(f"{found['url']} (pid {found['pid']}, data in {settings.data_dir})")


@redis.command("stop")
def redis_stop() -> None:
    """Stop the private server (SIGTERM, then SIGKILL after 10 s): `stopped` or `not running`."""
    from participants.runtime.redis_server import stop_server

    settings = _settings("redis")
    try:
        stopped = stop_server(settings.data_dir)
    except RuntimeError as exc:
        click.echo(f"baton: {exc}", err=True)
        sys.exit(1)
    click.echo("stopped" if stopped else "not running")


cli_client.register(main)
main.add_command(report_cli.report)

if __name__ == "__main__":
    main()
