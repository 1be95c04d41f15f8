"""The `baton` client commands end to end: the Procfile's gunicorn serving the API on PostgreSQL and
Redis, with the tracker and the pricing participant moving workflows along, and the real `baton`
executable in a subprocess, configured only by BATON_API_URL and BATON_API_TOKEN. Human output is
read as a person would; `--json` output is parsed; outcomes are checked through the API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from werkzeug.serving import make_server

from config.settings import load_settings
from contracts.streams import Keys
from controller.api.app import create_app
from controller.cli import client
from controller.cli.main import main
from controller.cli.procfile import ROOT
from controller.service.bootstrap import build_services
from tests.e2e.test_e2e_price_change import change
from tests.integration.test_api import environment
from tests.integration.test_interventions import order_input
from tests.system import System, free_port, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TOKENS = "olga:operator:t-olga,vic:viewer:t-vic,stan:starter:t-stan"
OPERATOR, VIEWER = "t-olga", "t-vic"


@dataclass
class Server:
    url: str
    tmp: Path
    system: System

    def baton(self, *args: str, token: str | None = OPERATOR, url: str | None = None,
              ok: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `baton ARGS` as a user would; `ok` asserts it succeeded without a word on stderr."""
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(self.tmp), "PYTHONPATH": str(ROOT),
               "BATON_API_URL": url or self.url}
        if token:
            env["BATON_API_TOKEN"] = token
        done = subprocess.run([str(BIN / "baton"), *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=self.tmp)
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def json(self, *args: str, token: str | None = OPERATOR) -> Any:
        return json.loads(self.baton(*args, "--json", token=token).stdout)

    def fails(self, *args: str, token: str | None = OPERATOR, url: str | None = None) -> str:
        """The message of a command that must fail: non-zero exit, said on stderr, nothing on stdout."""
        done = self.baton(*args, token=token, url=url, ok=False)
        assert done.returncode != 0, (args, done.stdout)
        assert done.stdout == "", done.stdout
        assert done.stderr.strip(), "a failure says why"
        return done.stderr


def pg_schema(admin: Engine) -> tuple[str, str]:
    schema = f"cli_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = admin.url.update_query_dict({"options": f"-csearch_path={schema}", "application_name": schema})
    return schema, url.render_as_string(hide_password=False)


def drop_schema(admin: Engine, schema: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = :s AND pid <> pg_backend_pid()"), {"s": schema})
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(scope="module")
def server(_pg_admin: Engine, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The Procfile's web line, the tracker and the pricing participant (so that a price change
    reaches its approval step and a publish can be walked back); no clock: nothing breaches."""
    tmp = tmp_path_factory.mktemp("cli")
    schema, database_url = pg_schema(_pg_admin)
    participant_schema, participant_url = pg_schema(_pg_admin)
    system = System(tmp, database_url, redis_url, participant_url, {"BATON_TOKENS": TOKENS})
    system.http.headers["Authorization"] = f"Bearer {OPERATOR}"
    try:
        migrated = subprocess.run([str(BIN / "baton"), "migrate"], env=system.procs.env,
                                  capture_output=True, text=True, timeout=120, cwd=tmp)
        assert migrated.returncode == 0, migrated.stderr
        system.start("web", "tracker", "pricing")
        yield Server(system.base, tmp, system)
    finally:
        try:
            system.close_cleanly()
        finally:
            drop_schema(_pg_admin, schema)
            drop_schema(_pg_admin, participant_schema)


def start(server: Server, **inputs: Any) -> dict[str, Any]:
    started: dict[str, Any] = server.json("start", "order_fulfillment", "--input",
                                          json.dumps(order_input(**inputs)))
    return started


# -- reading ---------------------------------------------------------------------------------------


def test_flows_are_listed_and_shown_with_their_diagram(server: Server) -> None:
    table = server.baton("flows").stdout
    assert "order_fulfillment" in table and "order.placed" in table
    assert "order_fulfillment" in [f["name"] for f in server.json("flows")["items"]]
    one = server.baton("flows", "order_fulfillment").stdout
    assert one.startswith("order_fulfillment v1"), one
    assert server.json("flows", "order_fulfillment")["mermaid"] in one


def test_start_list_and_show_with_the_timeline_as_a_table(server: Server, tmp_path: Path) -> None:
    data = order_input(customer_id=f"cust-{uuid.uuid4().hex[:6]}")
    (tmp_path / "order.json").write_text(json.dumps(data))
    human = server.baton("start", "order_fulfillment", "--input", f"@{tmp_path / 'order.json'}",
                         "--sla-seconds", "120").stdout
    cid = human.split()[0]
    assert "order_fulfillment v1" in human and "running" in human
    assert "reserve_inventory" in human and "active" in human  # the steps table

    listed = server.baton("list", "--attr", f"customer_id={data['customer_id']}").stdout
    assert cid in listed and "running" in listed
    page = server.json("list", "--attr", f"customer_id={data['customer_id']}")
    assert [w["correlation_id"] for w in page["items"]] == [cid]
    assert page["next_cursor"] is None
    assert cid in [w["correlation_id"] for w in server.json("list", "--status", "running")["items"]]
    assert server.json("list", "--status", "completed", "--attr",
                       f"customer_id={data['customer_id']}")["items"] == []

    shown = server.baton("show", cid).stdout.splitlines()
    header = next(n for n, line in enumerate(shown) if line.split()[:3] == ["#", "received", "kind"])
    assert shown[header].split() == ["#", "received", "kind", "type", "source", "caused", "by"]
    first = shown[header + 2].split()  # below the header's underline
    assert first[0] == "1" and first[2:5] == ["event", "order.placed", "controller"]
    assert first[5] == "#1", "the start event is its own cause"
    full = server.json("show", cid)
    assert full["correlation_id"] == cid and full["input"] == data
    assert [m["type"] for m in full["timeline"]] == ["order.placed"]


def test_health_ready_and_metrics_need_no_token(server: Server) -> None:
    start(server)
    assert server.baton("health", token=None).stdout == "ok\n"
    assert server.json("health", token=None) == {"status": "ok"}
    assert server.baton("ready", token=None).stdout == "ready\n"
    assert server.json("ready", token=None) == {"status": "ready"}
    text = server.baton("metrics", token=None).stdout
    assert "# TYPE baton_workflows_started_total counter" in text
    families = {f["name"]: f for f in server.json("metrics", token=None)}
    started = families["baton_workflows_started"]
    assert started["type"] == "counter" and started["help"] == "Workflows started"
    sample = next(x for x in started["samples"] if x["labels"] == {"flow": "order_fulfillment"})
    assert sample["name"] == "baton_workflows_started_total" and sample["value"] >= 1
    assert f'baton_workflows_started_total{{flow="order_fulfillment"}} {sample["value"]}' in text


def test_ready_exits_non_zero_naming_what_is_unreachable(server: Server, redis_url: str,
                                                         tmp_path: Path) -> None:
    """An API whose database is down: alive, not ready; `baton ready` says which dependency."""
    dead = f"postgresql+psycopg://baton@127.0.0.1:{free_port()}/baton?connect_timeout=2"
    settings = load_settings(environment(dead, redis_url, tmp_path, Keys(f"t{uuid.uuid4().hex[:8]}")))
    services = build_services(settings)
    web = make_server("127.0.0.1", 0, create_app(settings, services))
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{web.server_port}"
    try:
        assert server.baton("health", url=url, token=None).stdout == "ok\n"
        message = server.fails("ready", url=url, token=None)
        assert "503" in message and "database" in message and "redis" not in message
        assert server.fails("ready", "--json", url=url, token=None) == message
    finally:
        web.shutdown()
        thread.join(timeout=10)
        services.close()
    message = server.fails("ready", url=url)
    assert url in message and "unreachable" in message.lower()


def test_show_timeline_and_audit_read_every_page(server: Server, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Histories longer than a page are read whole: here, a page of one item."""
    cid = start(server)["correlation_id"]
    for n in range(2):  # each re-emits order.placed
        assert server.json("retry", cid, "--reason", f"nudge {n}")["status"] == "running"
    one_step = server.baton("retry", cid, "--reason", "nudge 2", "--step", "charge_payment").stdout
    assert one_step.startswith(cid) and "running" in one_step.splitlines()[0]
    wait_until(lambda: len(server.system.timeline(cid)) == 4, 30, "the re-emitted events")
    whole = server.system.timeline(cid)
    trail = server.system.http.get(f"{server.url}/v1/workflows/{cid}/audit", timeout=10).json()["items"]
    assert [(a["action"], a["details"]) for a in trail] == [
        ("retry", {"step": None}), ("retry", {"step": None}), ("retry", {"step": "charge_payment"})]
    monkeypatch.setattr(client, "PAGE_SIZE", 1)
    env = {"BATON_API_URL": server.url, "BATON_API_TOKEN": OPERATOR, "BATON_DATA_DIR": str(tmp_path)}

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output
    assert json.loads(run("timeline", cid, "--json")) == {"items": whole, "next_cursor": None}
    assert json.loads(run("audit", cid, "--json")) == {"items": trail, "next_cursor": None}
    assert json.loads(run("show", cid, "--json"))["timeline"] == whole
    table = run("timeline", cid).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["1", "2", "3", "4"]
    assert [line.split()[5] for line in table[2:]] == ["#1"] * 4, "each re-emission caused by the first"
    assert len(run("audit", cid).splitlines()) == 2 + 3


def test_report_sla_takes_json_like_every_command(server: Server) -> None:
    start(server)
    found = server.json("report", "sla", "--flow", "order_fulfillment")
    assert found["flow"] == "order_fulfillment"
    assert [f["flow"] for f in found["flows"]] == ["order_fulfillment"] and found["flows"][0]["started"] >= 1
    assert set(json.loads(server.baton("report", "sla", "--format", "json").stdout)) == set(found)
    clash = server.baton("report", "sla", "--json", "--format", "csv", ok=False)
    assert clash.returncode == 2 and "--json" in clash.stderr and "--format csv" in clash.stderr


# -- interventions ---------------------------------------------------------------------------------


def test_pause_resume_cancel_and_their_audit(server: Server) -> None:
    cid = start(server)["correlation_id"]
    paused = server.baton("pause", cid, "--reason", "customer called").stdout
    assert paused.startswith(cid) and "paused" in paused.splitlines()[0]
    resumed = server.json("resume", cid, "--reason", "customer confirmed")
    assert resumed["status"] == "running" and resumed["correlation_id"] == cid
    extended = server.json("deadline", cid, "--reason", "peak season", "--extend", "60")
    assert extended["deadline"] > resumed["deadline"]
    cancelled = server.json("cancel", cid, "--reason", "fraud suspected")
    assert (cancelled["status"], cancelled["reason"]) in {("compensated", "cancelled"),
                                                          ("compensating", "cancelled")}

    audit = server.json("audit", cid)["items"]
    assert [(a["actor"], a["action"], a["reason"]) for a in audit] == [
        ("olga", "pause", "customer called"), ("olga", "resume", "customer confirmed"),
        ("olga", "deadline", "peak season"), ("olga", "cancel", "fraud suspected")]
    table = server.baton("audit", cid).stdout
    for word in ("olga", "pause", "customer called", "fraud suspected"):
        assert word in table


def steps(wf: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in wf["steps"]}


def test_skip_completes_a_workflow_whose_work_was_done_out_of_band(server: Server) -> None:
    cid = start(server)["correlation_id"]
    one = server.json("skip", cid, "reserve_inventory", "--reason", "reserved by hand")
    assert one["status"] == "running" and steps(one)["reserve_inventory"] == "skipped"
    human = server.baton("skip", cid, "schedule_shipment", "--reason", "sent by courier").stdout
    assert human.splitlines()[0].split()[-1] == "completed"
    wf = server.system.workflow(cid)
    assert wf["status"] == "completed" and wf["finished_at"]
    assert {k: steps(wf)[k] for k in ("reserve_inventory", "schedule_shipment")} == {
        "reserve_inventory": "skipped", "schedule_shipment": "skipped"}
    assert [(a["action"], a["details"], a["result"]) for a in server.json("audit", cid)["items"]] == [
        ("skip", {"step": "reserve_inventory"}, "applied: running -> running"),
        ("skip", {"step": "schedule_shipment"}, "applied: running -> completed")]
    assert "409" in server.fails("skip", cid, "charge_payment", "--reason", "too late")


def test_approvals_are_answered_and_a_publish_compensated_from_the_terminal(server: Server) -> None:
    """price_change: a soft violation waits in its approval step; one is approved, published by the
    pricing participant, then compensated (pricing reverts it); the other is rejected."""
    def propose(**prices: Any) -> str:
        cid: str = server.json("start", "price_change", "--input", json.dumps(change(**prices)))[
            "correlation_id"]
        return cid
    approved, rejected = propose(current=10.0, proposed=12.5), propose(
        current=10.0, proposed=11.5, competitor_price=10.0)
    wait_until(lambda: all(steps(server.system.workflow(c))["approve"] == "active"
                           for c in (approved, rejected)), 30, "both changes to wait for approval")

    answer = server.json("signal", approved, "approve", "--reason", "checked with the category manager")
    assert answer["status"] == "running" and steps(answer)["approve"] == "done"
    wait_until(lambda: steps(server.system.workflow(approved))["publish_price"] == "done", 30,
               "pricing to publish")
    compensating = server.json("compensate", approved, "--reason", "wrong price list")
    assert (compensating["status"], compensating["reason"]) in {
        ("compensating", "cancelled"), ("compensated", "cancelled")}
    wf = server.system.wait_status(approved, "compensated")
    assert [(c["step"], c["command"], c["status"]) for c in wf["compensations"]] == [
        ("publish_price", "price.revert", "done")]
    assert [a["action"] for a in server.json("audit", approved)["items"]] == ["signal", "compensate"]

    no = server.json("signal", rejected, "reject", "--reason", "too far above the competitor")
    assert steps(no)["approve"] == "failed"
    wf = server.system.wait_status(rejected, "compensated")
    assert wf["reason"] == "step_failed" and steps(wf)["publish_price"] == "pending"
    said = next(m for m in server.json("timeline", rejected)["items"] if m["type"] == "price.rejected")
    assert said["data"]["reason"] == "too far above the competitor"
    assert "price.rejected" in server.baton("timeline", rejected).stdout
    assert "409" in server.fails("signal", rejected, "approve", "--reason", "changed my mind")


def test_show_says_why_each_failed_step_failed(server: Server) -> None:
    """An approval rejected with a reason, and a proposal the rules reject (the done event matched
    the step's `fails_when`): `baton show` prints the reason next to the failed step."""
    def propose(**prices: Any) -> str:
        cid: str = server.json("start", "price_change", "--input", json.dumps(change(**prices)))[
            "correlation_id"]
        return cid
    waiting, below_cost = propose(current=10.0, proposed=12.5), propose(current=10.0, proposed=5.0)
    wait_until(lambda: steps(server.system.workflow(waiting))["approve"] == "active", 30,
               "the change to wait for approval")
    server.json("signal", waiting, "reject", "--reason", "too far above the competitor")
    for cid, step, why in ((waiting, "approve", "too far above the competitor"),
                           (below_cost, "evaluate_rules", "price.evaluated with verdict=reject")):
        wf = server.system.wait_status(cid, "compensated")
        assert {s["name"]: s["reason"] for s in wf["steps"] if s["reason"]} == {step: why}
        shown = server.baton("show", cid).stdout.splitlines()
        header = next(line for line in shown if line.startswith("step "))
        assert header.split() == ["step", "kind", "participant", "status", "started", "finished",
                                  "reason"]
        row = next(line for line in shown if line.startswith(f"{step} "))
        assert row.split()[3] == "failed" and row.endswith(why), row
        assert server.json("show", cid)["steps"] == wf["steps"]
    ok = start(server)
    assert "reason" not in next(line for line in server.baton("show", ok["correlation_id"])
                                .stdout.splitlines() if line.startswith("step "))


def test_bulk_dry_run_lists_and_touches_nothing(server: Server) -> None:
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    cids = [start(server, customer_id=customer)["correlation_id"] for _ in range(2)]
    before = [server.json("show", c) for c in cids]
    result = server.json("bulk", "pause", "--reason", "maintenance", "--flow", "order_fulfillment",
                         "--status", "running", "--dry-run")
    assert result["dry_run"] is True and set(cids) <= set(result["matched"])
    human = server.baton("bulk", "pause", "--reason", "maintenance", "--status", "running",
                         "--dry-run", "--limit", "1").stdout
    assert human.splitlines()[0] == "would touch 1 workflows"
    assert [server.json("show", c) for c in cids] == before
    assert all(server.json("audit", c)["items"] == [] for c in cids)


def test_bulk_acts_on_exactly_what_its_filters_match(server: Server) -> None:
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    ours = [start(server, customer_id=customer)["correlation_id"] for _ in range(3)]
    bystander = start(server)["correlation_id"]
    server.json("cancel", ours[2], "--reason", "duplicate order")
    mine = ("--attr", f"customer_id={customer}")

    cancelled = server.json("bulk", "pause", "--reason", "r", *mine, "--workflow-reason", "cancelled",
                            "--dry-run")
    assert cancelled["matched"] == [ours[2]]
    paused = server.json("bulk", "pause", "--reason", "maintenance", *mine, "--status", "running")
    assert paused["dry_run"] is False and set(paused["matched"]) == set(ours[:2])
    assert [(r["status"], r["detail"]) for r in paused["results"]] == [
        (200, "applied: running -> paused")] * 2
    assert [server.system.workflow(c)["status"] for c in ours[:2]] == ["paused", "paused"]
    assert server.system.workflow(bystander)["status"] == "running"

    human = server.baton("bulk", "resume", "--reason", "maintenance over", *mine, "--status", "paused")
    assert human.stdout.splitlines()[0] == "touched 2 workflows"
    assert [server.system.workflow(c)["status"] for c in ours[:2]] == ["running", "running"]
    # --step reaches the API: schedule_shipment is not active yet, so nothing is retried
    refused = server.json("bulk", "retry", "--reason", "r", *mine, "--status", "running",
                          "--step", "schedule_shipment")
    assert [r["status"] for r in refused["results"]] == [409, 409]
    assert "schedule_shipment" in refused["results"][0]["detail"]
    retried = server.json("bulk", "retry", "--reason", "nudge payment", *mine, "--status", "running",
                          "--step", "charge_payment")
    assert [r["status"] for r in retried["results"]] == [200, 200]
    for cid in ours[:2]:
        trail = server.json("audit", cid)["items"]
        assert [(a["action"], a["reason"]) for a in trail] == [
            ("pause", "maintenance"), ("resume", "maintenance over"), ("retry", "nudge payment")]
        assert trail[-1]["details"] == {"step": "charge_payment"}


# -- errors ----------------------------------------------------------------------------------------


def test_a_conflict_says_why_and_exits_non_zero(server: Server) -> None:
    cid = start(server)["correlation_id"]
    message = server.fails("resume", cid, "--reason", "not paused")
    assert "409" in message and "running" in message
    assert "409" in server.fails("signal", cid, "approve", "--reason", "no approval step")
    assert server.json("show", cid)["status"] == "running"


def test_an_unknown_workflow_or_step_is_404(server: Server) -> None:
    assert "404" in server.fails("show", "no-such-workflow")
    cid = start(server)["correlation_id"]
    message = server.fails("skip", cid, "no_such_step", "--reason", "r")
    assert "404" in message and "no_such_step" in message


def test_invalid_input_lists_every_field_at_fault(server: Server) -> None:
    message = server.fails("start", "order_fulfillment", "--input",
                           json.dumps({"order_id": "o-1", "currency": "euro"}))
    assert "422" in message
    for field in ("input.customer_id", "input.items", "input.total_amount", "input.currency"):
        assert field in message, message


def test_a_missing_token_is_401_and_a_wrong_role_403(server: Server) -> None:
    assert "401" in server.fails("list", token=None)
    assert "401" in server.fails("list", token="not-a-token")
    cid = start(server)["correlation_id"]
    assert "403" in server.fails("cancel", cid, "--reason", "r", token=VIEWER)
    assert server.json("show", cid, token=VIEWER)["status"] == "running"


def test_an_unreachable_server_is_said_plainly(server: Server) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    message = server.fails("list", url=url)
    assert url in message and "unreachable" in message.lower()
    assert "Connection refused" in message and "BATON_API_URL" in message
    assert "HTTPConnectionPool" not in message, "the cause, not urllib3's wrapping of it"
    assert time.monotonic() - started < 30


def test_usage_errors_exit_2_without_calling_the_server(server: Server) -> None:
    missing_reason = server.baton("cancel", "some-id", ok=False)
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    bad_json = server.baton("start", "order_fulfillment", "--input", "{not json", ok=False)
    assert bad_json.returncode == 2 and "--input" in bad_json.stderr
    for bulk in (("bulk", "pause", "--reason", "r", "--attr", "customer_id"),
                 ("bulk", "explode", "--reason", "r")):
        refused = server.baton(*bulk, ok=False)
        assert refused.returncode == 2 and bulk[-1] in refused.stderr
