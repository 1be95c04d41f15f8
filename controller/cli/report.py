"""`baton report sla`: the SLA report into a file or the terminal.

With BATON_API_TOKEN it asks the REST API at BATON_API_URL; without one it computes the same
report straight from DATABASE_URL (the same SQL, the same renderers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from marshmallow import ValidationError

from config.settings import Settings, SettingsError, load_settings
from contracts.reports_api import SlaQuery
from contracts.timefmt import utcnow
from controller.cli.client import ApiClient, ClientError
from controller.reporting import render_csv as report_csv
from controller.reporting import render_html as report_html
from controller.reporting import render_text as report_text

_MIME = {"json": "application/json", "csv": "text/csv", "html": "text/html"}


@click.group()
def report() -> None:
    """Reports over the workflows' history."""


@report.command("sla")
@click.option("--flow", help="Only this flow.")
@click.option("--from", "start", help="RFC 3339, inclusive: workflows started from then (UTC).")
@click.option("--to", "end", help="RFC 3339, exclusive.")
@click.option("--limit", type=int, default=20, show_default=True,
              help="Rows of the breaches and slowest lists.")
@click.option("--format", "fmt", type=click.Choice([*_MIME, "text"]),
              help="json (the default), csv, html, or text: the summary table.")
@click.option("--json", "json_out", is_flag=True, help="Print the JSON report: --format json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (default: standard output).")
def sla(flow: str | None, start: str | None, end: str | None, limit: int, fmt: str | None,
        json_out: bool, output: Path | None) -> None:
    """Per flow, step and transition: outcomes, SLA met %, p50/p95/p99; breaches; slowest."""
    if json_out and fmt not in (None, "json"):
        raise click.UsageError(f"--json asks for JSON; --format {fmt} for something else")
    fmt = fmt or "json"
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    params = {k: v for k, v in (("flow", flow), ("from", start), ("to", end)) if v is not None}
    params["limit"] = str(limit)
    body = (_from_api(settings, params, fmt) if settings.api_token
            else _from_database(settings, params, fmt))
    if output is None:
        click.echo(body, nl=False)
        return
    output.write_text(body, encoding="utf-8")
    click.echo(f"wrote {output}")


def _from_api(settings: Settings, params: dict[str, str], fmt: str) -> str:
    client = ApiClient(settings.api_url, settings.api_token)
    try:
        mime = _MIME.get(fmt, _MIME["json"])
        found = client.call("GET", "/v1/reports/sla", params=params, headers={"Accept": mime})
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    return report_text.summary(found.json()) if fmt == "text" else found.text


def _from_database(settings: Settings, params: dict[str, str], fmt: str) -> str:
    from config.flows import load_catalog
    from contracts.registry import default_registry
    from controller.reporting.sla import ReportQuery, sla_report, step_order
    from participants.runtime.db import make_engine

    try:
        query = SlaQuery().load(params)
    except ValidationError as exc:
        field, problems = sorted(exc.normalized_messages().items())[0]
        raise click.BadParameter("; ".join(map(str, problems)), param_hint=f"--{field}") from None
    catalog = load_catalog(default_registry(), settings.flows_dirs)
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            found = sla_report(conn, ReportQuery(now=utcnow(), flow=query.get("flow"),
                                                 start=query.get("start"), end=query.get("end"),
                                                 limit=query["limit"]), step_order(catalog))
    finally:
        engine.dispose()
    return render(found, fmt, settings.api_url)


def render(found: dict[str, Any], fmt: str, base_url: str = "") -> str:
    if fmt == "csv":
        return report_csv.render(found)
    if fmt == "html":
        return report_html.render(found, base_url)
    if fmt == "text":
        return report_text.summary(found)
    return json.dumps(found, indent=2) + "\n"


def write_demo_report(base_url: str, token: str, run_dir: Path) -> None:
    """The end of `baton demo`: the HTML report next to its logs, and the summary table."""
    client = ApiClient(base_url, token)
    try:
        page = client.call("GET", "/v1/reports/sla", headers={"Accept": _MIME["html"]}).text
        found = client.json("GET", "/v1/reports/sla")
    finally:
        client.close()
    path = run_dir / "sla-report.html"
    path.write_text(page, encoding="utf-8")
    print(f"SLA report: {path}")
    print(report_text.summary(found))
