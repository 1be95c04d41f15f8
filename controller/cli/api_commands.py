"""The `baton` commands that talk to the REST API: start, list, show, every intervention, flows,
and the probes (health, ready, metrics)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from config.settings import SettingsError, load_settings
from controller.cli.client import ApiClient, ClientError
from controller.domain.actions import Action, bulk_actions
from controller.domain.interventions import ACTIONS

as_json = click.option("--json", "json_out", is_flag=True, help="Print the raw JSON answer.")
reason = click.option("--reason", required=True, help="Why: kept in the audit.")


@contextmanager
def api() -> Iterator[ApiClient]:
    """A client from BATON_API_URL and BATON_API_TOKEN; errors end the command with a message."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    client = ApiClient(settings.api_url, settings.api_token)
    try:
        yield client
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def _emit(data: Any, json_out: bool, human: Callable[[Any], None]) -> None:
    if json_out:
        _print_json(data)
    else:
        human(data)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _json_arg(value: str | None, name: str) -> Any:
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None


def _attributes(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--attr name=value` options as a dict of search attributes."""
    found = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not name or not equals:
            raise click.BadParameter(f"{pair!r} is not name=value", param_hint="--attr")
        found[name] = value
    return found


def _given(filters: dict[str, Any]) -> dict[str, Any]:
    """The filter options given, named as the API names them (`reason_` is `reason`)."""
    return {("reason" if k == "reason_" else k): v for k, v in filters.items() if v not in (None, False)}


def _table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [headers, *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def _summary(wf: dict[str, Any]) -> None:
    reason_ = f" ({wf['reason']})" if wf.get("reason") else ""
    click.echo(f"{wf['correlation_id']}  {wf['flow']} v{wf['flow_version']}  {wf['status']}{reason_}")
    click.echo(f"started {wf['started_at']}  deadline {wf['deadline']}  finished {wf['finished_at']}")
    steps = [[s["name"], s["kind"], s["participant"], s["status"], s["started_at"], s["finished_at"]]
             for s in wf["steps"]]
    headers = ["step", "kind", "participant", "status", "started", "finished"]
    if any(s.get("reason") for s in wf["steps"]):  # why a step failed, next to it
        steps = [[*row, s.get("reason")] for row, s in zip(steps, wf["steps"], strict=True)]
        headers.append("reason")
    _table(steps, headers)
    if wf["compensations"]:
        click.echo("")
        _table([[c["step"], c["command"], c["status"], c["attempts"]] for c in wf["compensations"]],
               ["compensated step", "command", "status", "attempts"])


def register(main: click.Group) -> None:
    for command in (start, list_, show, timeline, audit, *map(_intervention, ACTIONS.values()), bulk,
                    flows, health, ready, metrics):
        main.add_command(command)


@click.command()
@click.argument("flow")
@click.option("--input", "input_", required=True, help="The start event's data: JSON or @file.")
@click.option("--sla-seconds", type=int)
@click.option("--correlation-id")
@click.option("--idempotency-key")
@as_json
def start(flow: str, input_: str, sla_seconds: int | None, correlation_id: str | None,
          idempotency_key: str | None, json_out: bool) -> None:
    """Start a workflow of FLOW."""
    body: dict[str, Any] = {"flow": flow, "input": _json_arg(input_, "--input")}
    if sla_seconds is not None:
        body["sla_seconds"] = sla_seconds
    if correlation_id:
        body["correlation_id"] = correlation_id
    with api() as client:
        _emit(client.start(body, idempotency_key), json_out, _summary)


@click.command("list")
@click.option("--flow")
@click.option("--status")
@click.option("--reason", "reason_")
@click.option("--started-after")
@click.option("--started-before")
@click.option("--overdue", is_flag=True)
@click.option("--stalled-step")
@click.option("--attr", multiple=True, help="A search attribute: name=value (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--cursor")
@as_json
def list_(attr: tuple[str, ...], json_out: bool, **filters: Any) -> None:
    """List workflows, newest first."""
    params = {**_given(filters), **_attributes(attr)}
    with api() as client:
        page = client.json("GET", "/v1/workflows", params=params)

    def human(p: dict[str, Any]) -> None:
        _table([[w["correlation_id"], w["flow"], w["status"], w["reason"], w["started_at"]]
                for w in p["items"]], ["correlation_id", "flow", "status", "reason", "started"])
        if p["next_cursor"]:
            click.echo(f"\nmore: --cursor {p['next_cursor']}")
    _emit(page, json_out, human)


@click.command()
@click.argument("cid")
@as_json
def show(cid: str, json_out: bool) -> None:
    """A workflow, its steps, compensations and its whole timeline (every page of it)."""
    with api() as client:
        wf = client.json("GET", f"/v1/workflows/{cid}")
        items = list(client.items(f"/v1/workflows/{cid}/timeline"))
    if json_out:
        _emit({**wf, "timeline": items}, True, _summary)
        return
    _summary(wf)
    click.echo("")
    _timeline_table(items)


def _timeline_table(items: list[dict[str, Any]]) -> None:
    ids = {m["id"]: n for n, m in enumerate(items, 1)}
    _table([[n, m["received_at"], m["kind"], m["type"], m["source"],
             f"#{ids[m['causation_id']]}" if m["causation_id"] in ids else m["causation_id"][:8]]
            for n, m in enumerate(items, 1)], ["#", "received", "kind", "type", "source", "caused by"])


@click.command()
@click.argument("cid")
@as_json
def timeline(cid: str, json_out: bool) -> None:
    """Every message of a workflow, in the order the controller received it: the whole history,
    fetched page by page (--json: one {"items", "next_cursor": null} holding all of it)."""
    with api() as client:
        items = list(client.items(f"/v1/workflows/{cid}/timeline"))
    _emit({"items": items, "next_cursor": None}, json_out, lambda p: _timeline_table(p["items"]))


@click.command()
@click.argument("cid")
@as_json
def audit(cid: str, json_out: bool) -> None:
    """Every intervention on a workflow: who, what, when, why, result; the whole trail, fetched
    page by page (--json: one {"items", "next_cursor": null} holding all of it)."""
    with api() as client:
        items = list(client.items(f"/v1/workflows/{cid}/audit"))
    _emit({"items": items, "next_cursor": None}, json_out, lambda p: _table(
        [[a["at"], a["actor"], a["action"], a["reason"], a["result"]] for a in p["items"]],
        ["at", "actor", "action", "reason", "result"]))


def _intervention(action: Action) -> click.Command:
    """`baton <action> CID [path arguments] --reason ... [options]`, from its row of the table."""
    def command(cid: str, reason: str, json_out: bool, **given: Any) -> None:
        path = {a: given.pop(a) for a in action.path_args}
        body = {"reason": reason, **{o.field: _json_arg(v, o.flag) if o.json else v
                                     for o in action.cli_options
                                     if (v := given[o.field]) is not None and v != ""}}
        with api() as client:
            _emit(client.intervene(cid, action.url_path(**path), body), json_out, _summary)

    # click lists parameters in the order their decorators are written: applied last to first
    command = as_json(command)
    for option in reversed(action.cli_options):
        command = click.option(option.flag, option.field, type=option.type, help=option.help)(command)
    command = reason(command)
    for name in reversed(("cid", *action.path_args)):
        command = click.argument(name)(command)
    return click.command(action.name, help=action.cli_help)(command)


@click.command()
@click.argument("action", type=click.Choice(list(bulk_actions(ACTIONS.values()))))
@reason
@click.option("--flow")
@click.option("--status")
@click.option("--workflow-reason", "reason_",
              help="Only workflows that left running for this reason (step_failed, sla_breached, "
                   "cancelled).")
@click.option("--started-after")
@click.option("--started-before")
@click.option("--stalled-step")
@click.option("--overdue", is_flag=True)
@click.option("--attr", multiple=True, help="A search attribute: name=value (repeatable).")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--extend", type=int, help="For the deadline action: seconds to add.")
@click.option("--step", help="For the retry action: only this step.")
@click.option("--dry-run", is_flag=True, help="List what would be touched; touch nothing.")
@as_json
def bulk(action: str, reason: str, attr: tuple[str, ...], limit: int, extend: int | None,
         step: str | None, dry_run: bool, json_out: bool, **filters: Any) -> None:
    """One intervention (ACTION) on every workflow matching the filters, newest first, at most
    --limit of them."""
    chosen: dict[str, Any] = _given(filters)
    if attr:
        chosen["attributes"] = _attributes(attr)
    body: dict[str, Any] = {"action": action, "reason": reason, "limit": limit, "dry_run": dry_run,
                            "filter": chosen}
    if extend is not None:
        body["extend_seconds"] = extend
    if step:
        body["step"] = step
    with api() as client:
        result = client.json("POST", "/v1/workflows/actions", json=body)

    def human(r: dict[str, Any]) -> None:
        click.echo(f"{'would touch' if r['dry_run'] else 'touched'} {len(r['matched'])} workflows")
        _table([[x["correlation_id"], x["status"], x["detail"]] for x in r["results"]]
               or [[cid, "", ""] for cid in r["matched"]], ["correlation_id", "status", "detail"])
    _emit(result, json_out, human)


@click.command()
@click.argument("name", required=False)
@as_json
def flows(name: str | None, json_out: bool) -> None:
    """The loaded flow definitions (one, with its Mermaid diagram, when NAME is given)."""
    with api() as client:
        data = client.json("GET", f"/v1/flows/{name}" if name else "/v1/flows")

    def human(d: dict[str, Any]) -> None:
        if name:
            click.echo(f"{d['name']} v{d['version']}: {d['description']}\n\n{d['mermaid']}")
        else:
            _table([[f["name"], f["version"], f["start_event"], len(f["steps"])] for f in d["items"]],
                   ["flow", "version", "start event", "steps"])
    _emit(data, json_out, human)


@click.command()
@as_json
def health(json_out: bool) -> None:
    """Whether the API process is alive (`GET /healthz`); no token needed."""
    with api() as client:
        _emit(client.json("GET", "/healthz"), json_out, lambda d: click.echo(d["status"]))


@click.command()
@as_json
def ready(json_out: bool) -> None:
    """Whether the API can reach its database and Redis (`GET /readyz`): exits 1, naming what is
    unreachable, when it cannot; no token needed."""
    with api() as client:
        _emit(client.json("GET", "/readyz"), json_out, lambda d: click.echo(d["status"]))


@click.command()
@as_json
def metrics(json_out: bool) -> None:
    """The Prometheus metrics (`GET /metrics`) as exposition text; with --json, a list of
    families, each with its name, type, help and samples. No token needed."""
    from prometheus_client.parser import text_string_to_metric_families  # only this command

    with api() as client:
        text = client.call("GET", "/metrics").text
    if not json_out:
        click.echo(text, nl=False)
        return
    _print_json([{"name": f.name, "type": f.type, "help": f.documentation,
                  "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                              for s in f.samples]}
                 for f in text_string_to_metric_families(text)])
