"""The SLA report on a known data set, inserted straight into the tables, on SQLite and PostgreSQL:
its figures against Python's own, its CSV against its JSON (its HTML in headless Chromium:
tests/e2e/test_reports.py)."""

from __future__ import annotations

import csv
import io
import statistics
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import Connection, Engine, insert, select
from werkzeug.serving import make_server

from contracts.timefmt import format_ts
from controller.cli.main import main
from controller.cli.procfile import ROOT
from controller.cli.report import write_demo_report
from controller.db import migrate, store
from controller.db.tables import compensations, messages, report_facts, steps, workflows
from controller.reporting import render_csv as report_csv
from controller.reporting import render_html as report_html
from controller.reporting import render_text as report_text
from controller.reporting import store as report_store
from controller.reporting.definitions import DEFINITIONS, JUDGED, SLA_MET_PCT
from controller.reporting.render_csv import COLUMNS
from controller.reporting.sla import ReportQuery, sla_report
from tests.harness import running_app

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)
FLOW = "known"
TOKENS = "vera:viewer:t-vera,otto:operator:t-otto,sam:starter:t-sam"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def percentile(values: list[float], q: float) -> float:
    """percentile_cont's definition, written out: linear between the ranks around q*(n-1)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def python_stats(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 from statistics.quantiles (it needs two values), max from max()."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values)}


# -- a data set written straight into the tables ----------------------------------------------------


@dataclass
class Data:
    conn: Connection
    flow: str = FLOW
    rows: list[str] = field(default_factory=list)

    def workflow(self, status: str, start: float, end: float | None, sla: float = 10.0,
                 reason: str | None = None, flow: str | None = None) -> str:
        cid = f"wf-{uuid.uuid4().hex[:12]}"
        self.conn.execute(insert(workflows).values(
            correlation_id=cid, flow=flow or self.flow, flow_version=1, status=status, reason=reason,
            started_at=at(start), deadline=at(start + sla),
            finished_at=None if end is None else at(end), started_by="test", input={},
            start_message_id=f"{cid}-m0"))
        self.message(cid, 0, "order.placed", start, cause=0)
        self.rows.append(cid)
        return cid

    def step(self, cid: str, name: str, status: str, start: float | None, end: float | None,
             sla: float = 5.0) -> None:
        self.conn.execute(insert(steps).values(
            correlation_id=cid, name=name, status=status, attempts=0,
            started_at=None if start is None else at(start),
            finished_at=None if end is None else at(end),
            deadline=None if start is None else at(start + sla)))

    def message(self, cid: str, n: int, message_type: str, when: float, cause: int,
                source: str = "test") -> None:
        self.conn.execute(insert(messages).values(
            id=f"{cid}-m{n}", correlation_id=cid, kind="event", type=message_type, version=1,
            source=source, causation_id=f"{cid}-m{cause}", occurred_at=at(when),
            received_at=at(when + 0.5), data={}))

    def compensation(self, cid: str, step: str, status: str, sent: float) -> None:
        self.conn.execute(insert(compensations).values(
            correlation_id=cid, step=step, position=0, command="x.undo", status=status, attempts=1,
            command_id=f"{cid}-c-{step}", sent_at=at(sent)))

    def completed(self, start: float, a: float, total: float) -> str:
        """Step `a` for `a` seconds, then step `b` until the end; each a message caused by the last."""
        cid = self.workflow("completed", start, start + total)
        self.step(cid, "a", "done", start, start + a)
        self.step(cid, "b", "done", start + a, start + total)
        self.message(cid, 1, "a.done", start + a, cause=0, source="alpha")
        self.message(cid, 2, "b.done", start + total, cause=1, source="beta")
        return cid


# (step a, whole) in seconds: ties (2.0 three times, a=0.5 twice), two completed after the 10 s SLA
COMPLETED = [(0.5, 1.5), (0.5, 2.0), (1.0, 2.0), (1.0, 2.0), (1.25, 3.25), (2.0, 4.0), (6.0, 7.5),
             (1.0, 12.0), (2.5, 30.0), (0.25, 0.75)]


def known_data(data: Data, still_open: bool = True) -> dict[str, str]:
    """`still_open=False`: only finished workflows, whose figures do not move with the clock."""
    named = {}
    for i, (a, total) in enumerate(COMPLETED):
        named[f"done{i}"] = data.completed(60.0 * i, a, total)
    failed = data.workflow("compensated", 1000, 1003, reason="step_failed")
    data.step(failed, "a", "failed", 1000, 1001)
    data.workflow("compensated", 1100, 1102, reason="cancelled")
    late = named["late"] = data.workflow("compensated", 1200, 1211.5, reason="sla_breached")
    data.step(late, "a", "compensated", 1200, 1201)
    data.step(late, "b", "active", 1201, None)  # never answered; the controller gave up at 1210.5
    data.compensation(late, "a", "done", 1210.5)
    stuck = data.workflow("needs_attention", 1300, None, reason="step_failed")
    data.step(stuck, "a", "done", 1300, 1302)
    data.step(stuck, "b", "failed", 1302, 1303)
    data.compensation(stuck, "a", "failed", 1303)
    if not still_open:
        return named
    data.workflow("running", 7000, None, sla=3600)  # its deadline is after NOW: not judged yet
    named["overdue"] = data.workflow("running", 1400, None)  # past its deadline: judged, breached
    data.workflow("paused", 1500, None)  # its SLA clock stopped: not judged
    return named


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    from participants.runtime.db import make_engine

    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@contextmanager
def written(engine: Engine) -> Iterator[Connection]:
    """A transaction for rows written straight into the tables, then the report's facts of them,
    as the store would have written them (not folded into the rollup: the report reads both)."""
    with engine.begin() as conn:
        yield conn
        report_store.rebuild(conn, fold=False)


def report(engine: Engine, **query: Any) -> dict[str, Any]:
    with engine.begin() as conn:
        return sla_report(conn, ReportQuery(now=NOW, **query), {FLOW: ["a", "b"]})


def test_flow_figures_agree_with_python(engine: Engine) -> None:
    with written(engine) as conn:
        named = known_data(Data(conn))
    found = report(engine)
    [flow] = found["flows"]
    assert {k: flow[k] for k in ("flow", "started", "completed", "compensated", "needs_attention",
                                 "in_flight", "breached", "sla_met", "sla_judged")} == {
        "flow": FLOW, "started": 17, "completed": 10, "compensated": 3, "needs_attention": 1,
        "in_flight": 3, "breached": 4, "sla_met": 8, "sla_judged": 15}
    assert flow["sla_met_pct"] == pytest.approx(100 * 8 / 15, abs=1e-3)
    durations = [total for _, total in COMPLETED]
    expected = python_stats(durations)
    assert flow["duration_seconds"]["count"] == 10
    assert {k: flow["duration_seconds"][k] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert {k: percentile(durations, q) for k, q in (("p50", .5), ("p95", .95), ("p99", .99))} \
        == pytest.approx({k: expected[k] for k in ("p50", "p95", "p99")}, abs=1e-9)
    assert found["breaches"]["total"] == 4
    assert {b["correlation_id"] for b in found["breaches"]["items"]} == {
        named["done7"], named["done8"], named["late"], named["overdue"]}


def test_step_figures_agree_with_python(engine: Engine) -> None:
    with written(engine) as conn:
        known_data(Data(conn))
    rows = {r["step"]: r for r in report(engine)["steps"]}
    assert list(rows) == ["a", "b"]
    a, b = rows["a"], rows["b"]
    a_done = [x for x, _ in COMPLETED] + [1.0, 2.0]  # + the compensated one and the stuck one
    assert a["duration_seconds"] == pytest.approx({"count": 12, **python_stats(a_done)}, abs=1e-6)
    # started: 12 done + 1 failed; late: the completed step that took 6.0 s of its 5
    assert {k: a[k] for k in ("started", "completed", "compensated", "failed", "needs_attention",
                              "breached", "sla_met", "sla_judged")} == {
        "started": 13, "completed": 12, "compensated": 1, "failed": 1, "needs_attention": 1,
        "breached": 1, "sla_met": 11, "sla_judged": 13}
    assert a["sla_met_pct"] == pytest.approx(100 * 11 / 13, abs=1e-3)
    b_done = [total - x for x, total in COMPLETED]
    assert b["duration_seconds"] == pytest.approx({"count": 10, **python_stats(b_done)}, abs=1e-6)
    late_b = sum(d > 5 for d in b_done) + 1  # + the step the controller gave up on
    on_time = sum(d <= 5 for d in b_done)
    assert (b["breached"], b["sla_met"], b["sla_judged"]) == (late_b, on_time, 10 + 1 + 1)
    histogram = a["histogram"]
    assert histogram["count"] == 12
    assert histogram["cumulative"] == [sum(d <= le for d in a_done) for le in histogram["le"]]


def test_transitions_are_timed_between_cause_and_effect(engine: Engine) -> None:
    with written(engine) as conn:
        known_data(Data(conn))
    rows = {(t["from_type"], t["to_type"]): t for t in report(engine)["transitions"]}
    assert set(rows) == {("order.placed", "a.done"), ("a.done", "b.done")}
    first, second = rows[("order.placed", "a.done")], rows[("a.done", "b.done")]
    assert (first["participant"], second["participant"]) == ("alpha", "beta")
    expected = python_stats([a for a, _ in COMPLETED])
    assert first["duration_seconds"] == pytest.approx({"count": 10, **expected}, abs=1e-6)
    expected = python_stats([total - a for a, total in COMPLETED])
    assert second["duration_seconds"] == pytest.approx({"count": 10, **expected}, abs=1e-6)


def test_breaches_name_the_late_step_and_by_how_much(engine: Engine) -> None:
    with written(engine) as conn:
        named = known_data(Data(conn))
    items = {b["correlation_id"]: b for b in report(engine)["breaches"]["items"]}
    late = items[named["late"]]  # b was due at 1206 and still waited for at 1210.5
    assert (late["step"], late["deadline_of"], late["late_by_seconds"]) == ("b", "step", 4.5)
    assert late["deadline"] == format_ts(at(1206)) and late["link"] == f"/v1/workflows/{named['late']}"
    slow = items[named["done8"]]  # b from 482.5 s, due 5 s later, done at 510 s
    assert (slow["step"], slow["deadline_of"], slow["late_by_seconds"]) == ("b", "step", 22.5)
    overdue = items[named["overdue"]]  # no step at all: the workflow's own deadline, until NOW
    assert (overdue["step"], overdue["deadline_of"]) == (None, "workflow")
    assert overdue["late_by_seconds"] == (NOW - at(1410)).total_seconds()
    assert next(iter(items)) == named["overdue"]  # the latest first


def test_slowest_lists_completed_workflows_longest_first(engine: Engine) -> None:
    with written(engine) as conn:
        named = known_data(Data(conn))
    slowest = report(engine, limit=3)["slowest"]
    assert [s["correlation_id"] for s in slowest] == [named["done8"], named["done7"], named["done6"]]
    assert [s["duration_seconds"] for s in slowest] == [30.0, 12.0, 7.5]


def test_ties_only(engine: Engine) -> None:
    with written(engine) as conn:
        data = Data(conn)
        for i in range(7):
            data.completed(10.0 * i, 1.0, 2.0)
    [flow] = report(engine)["flows"]
    assert flow["duration_seconds"] == {"count": 7, "p50": 2.0, "p95": 2.0, "p99": 2.0, "max": 2.0}
    assert flow["sla_met_pct"] == 100.0


def test_a_single_workflow(engine: Engine) -> None:
    with written(engine) as conn:
        Data(conn).completed(0.0, 0.125, 4.2)
    found = report(engine)
    [flow] = found["flows"]
    assert flow["duration_seconds"] == {"count": 1, "p50": 4.2, "p95": 4.2, "p99": 4.2, "max": 4.2}
    assert percentile([4.2], 0.99) == 4.2
    assert (flow["started"], flow["completed"], flow["sla_met_pct"]) == (1, 1, 100.0)
    assert [s["duration_seconds"]["p95"] for s in found["steps"]] == [0.125, 4.075]
    assert [p["started"] for p in found["series"]["items"]] == [1]


def test_a_declared_step_no_workflow_started_is_listed_with_nothing_counted(engine: Engine) -> None:
    """A step not started has no fact (`facts.of_workflow`); the report lists it all the same."""
    with written(engine) as conn:
        data = Data(conn)
        cid = data.workflow("running", 0.0, None)
        data.step(cid, "a", "active", 0.0, None)
        data.step(cid, "b", "pending", None, None)
    found = report(engine)
    assert [s["step"] for s in found["steps"]] == ["a", "b"]
    b = found["steps"][1]
    assert {k: b[k] for k in ("started", "completed", "breached", "sla_judged", "sla_met_pct")} == {
        "started": 0, "completed": 0, "breached": 0, "sla_judged": 0, "sla_met_pct": None}
    assert b["duration_seconds"]["count"] == 0 and b["histogram"]["count"] == 0
    assert found["steps"][0]["started"] == 1
    with engine.begin() as conn:
        items = {r.item for r in conn.execute(select(report_facts).where(
            report_facts.c.correlation_id == cid))}
    assert items == {"", "a"}  # the workflow's fact and the started step's: none for "b"


def test_no_workflow_at_all_and_empty_ranges(engine: Engine) -> None:
    empty = report(engine)
    assert (empty["flows"], empty["steps"], empty["transitions"], empty["slowest"]) == ([], [], [], [])
    assert empty["breaches"] == {"total": 0, "items": []} and empty["series"]["items"] == []
    assert 'id="empty"' in report_html.render(empty)
    assert report_csv.render(empty).count("\r\n") == 1 + len(DEFINITIONS)  # header, definitions
    with written(engine) as conn:
        known_data(Data(conn))
    assert report(engine, start=at(100), end=at(100))["flows"] == []
    assert report(engine, flow="no_such_flow")["flows"] == []
    assert report(engine, start=NOW + timedelta(days=1))["flows"] == []


def test_the_range_is_start_inclusive_end_exclusive_and_filters_the_flow(engine: Engine) -> None:
    with written(engine) as conn:
        data = Data(conn)
        for i in range(4):
            data.completed(60.0 * i, 1.0, 2.0)
        data.workflow("running", 30, None, flow="other")
    [flow] = report(engine, start=at(60), end=at(180), flow=FLOW)["flows"]
    assert flow["started"] == 2
    found = report(engine, end=at(61))
    assert [(f["flow"], f["started"]) for f in found["flows"]] == [(FLOW, 2), ("other", 1)]
    assert found["series"]["bucket_seconds"] == 10
    assert sum(p["started"] for p in found["series"]["items"]) == 3


def test_ranges_cut_through_hours_and_deltas_add_to_the_rollup(engine: Engine) -> None:
    """Whole hours come from the rollup (folded or not), the partial hours at the edges from the
    facts: any range gives what Python computes over the workflows started in it."""
    spread = [(417.0 * i + 0.125 * (i % 7), 0.25 + (i * 37 % 23) / 8, 1.0 + (i * 53 % 31) / 4)
              for i in range(48)]  # (start, step a, whole): about five hours,
    spread += [(60000.0 + 999 * i, 1.0, 2.0 + i) for i in range(3)]  # and later: charted by hour
    with written(engine) as conn:
        data = Data(conn)
        for start, a, total in spread[:30]:
            data.completed(start, a, total)
    with engine.begin() as conn:
        report_store.fold_deltas(conn)
        data = Data(conn)  # written as the store writes: deltas after the folded rollup
        for start, a, total in spread[30:]:
            store_facts(conn, data.completed(start, a, total))
    for lo, hi in [(None, None), (1800, None), (1234.5, 3 * 3600 + 77), (None, 2 * 3600 + 1), (3601, None),
                   (3600, 4 * 3600), (100, 200), (7200.001, 7300)]:
        found = report(engine, start=None if lo is None else at(lo), end=None if hi is None else at(hi))
        chosen = [x for x in spread if (lo is None or x[0] >= lo) and (hi is None or x[0] < hi)]
        if not chosen:
            assert found["flows"] == []
            continue
        [flow] = found["flows"]
        assert (flow["started"], flow["completed"]) == (len(chosen), len(chosen)), (lo, hi)
        wholes, steps = [t for _, _, t in chosen], [a for _, a, _ in chosen]
        for got, values in ((flow, wholes), (found["steps"][0], steps)):
            expected = {"p50": percentile(values, .5), "p95": percentile(values, .95),
                        "p99": percentile(values, .99), "max": max(values)}
            assert got["duration_seconds"] == pytest.approx(
                {"count": len(values), **expected}, abs=1e-6), (lo, hi)
        if hi is None or at(hi) <= NOW:  # the chart stops at now
            assert sum(p["started"] for p in found["series"]["items"]) == len(chosen), (lo, hi)


def store_facts(conn: Connection, cid: str) -> None:
    """The report's facts of a workflow written by hand, as the store writes them at insert."""
    wf = store.load(conn, cid)
    assert wf is not None
    report_store.workflow_inserted(conn, wf)


# -- the REST API: negotiation, parameters, roles ---------------------------------------------------


@pytest.fixture
def client(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[FlaskClient, Engine]]:
    with running_app(database_url, redis_url, tmp_path, TOKENS) as app:
        yield app.client, app.services.engine


def get(client: FlaskClient, accept: str | None = None, token: str = "t-vera", **query: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if accept:
        headers["Accept"] = accept
    return client.get("/v1/reports/sla", headers=headers, query_string=query)


def test_csv_has_the_numbers_of_the_json(client: tuple[FlaskClient, Engine]) -> None:
    http, engine = client
    with written(engine) as conn:
        known_data(Data(conn), still_open=False)  # two requests, two nows: the same figures
    as_json = get(http, "application/json")
    assert as_json.status_code == 200 and as_json.mimetype == "application/json"
    body = as_json.get_json()
    as_csv = get(http, "text/csv")
    assert as_csv.status_code == 200 and as_csv.mimetype == "text/csv"
    table = list(csv.DictReader(io.StringIO(as_csv.get_data(as_text=True))))
    assert tuple(table[0]) == COLUMNS
    by_level: dict[str, list[dict[str, str]]] = {}
    for row in table:
        by_level.setdefault(row["level"], []).append(row)
    for level, items in (("flow", body["flows"]), ("step", body["steps"]),
                         ("transition", body["transitions"])):
        assert len(by_level[level]) == len(items)
        for row, item in zip(by_level[level], items, strict=True):
            assert row["flow"] == item["flow"]
            for key in ("p50", "p95", "p99", "max"):
                assert float(row[f"{key}_seconds"]) == item["duration_seconds"][key]
            assert int(row["count"]) == item["duration_seconds"]["count"]
            if level != "transition":
                assert float(row["sla_met_pct"]) == item["sla_met_pct"]
                assert [int(row[k]) for k in ("started", "completed", "compensated", "breached")] \
                    == [item[k] for k in ("started", "completed", "compensated", "breached")]
    assert [(r["correlation_id"], float(r["late_by_seconds"])) for r in by_level["breach"]] == [
        (b["correlation_id"], b["late_by_seconds"]) for b in body["breaches"]["items"]]
    assert [r["link"] for r in by_level["slowest"]] == [s["link"] for s in body["slowest"]]


def test_json_is_the_default_and_unknown_types_get_406(client: tuple[FlaskClient, Engine]) -> None:
    http, _ = client
    assert get(http).mimetype == "application/json"
    assert get(http, "*/*").mimetype == "application/json"
    assert get(http, "text/html,application/xhtml+xml,*/*;q=0.8").mimetype == "text/html"
    refused = get(http, "image/png")
    assert refused.status_code == 406 and refused.mimetype == "application/problem+json"


@pytest.mark.parametrize(("query", "field"), [
    ({"from": "2026-11-20"}, "from"),
    ({"from": "2026-11-20T10:00:00"}, "from"),  # no offset
    ({"to": "yesterday"}, "to"),
    ({"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T09:00:00Z"}, "to"),
    ({"limit": "0"}, "limit"),
    ({"flow": ""}, "flow"),
    ({"colour": "red"}, "colour"),
])
def test_bad_parameters_get_422_naming_the_field(client: tuple[FlaskClient, Engine],
                                                 query: dict[str, str], field: str) -> None:
    http, _ = client
    response = get(http, **query)
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert field in response.get_json()["errors"], response.get_json()


def test_offsets_are_taken_in_utc(client: tuple[FlaskClient, Engine]) -> None:
    http, engine = client
    with written(engine) as conn:
        Data(conn).completed(0.0, 1.0, 2.0)
    body = get(http, **{"from": "2026-11-20T11:00:00+01:00", "to": "2026-11-20T10:00:01Z"}).get_json()
    assert (body["from"], body["to"]) == ("2026-11-20T10:00:00.000Z", "2026-11-20T10:00:01.000Z")
    assert body["flows"][0]["started"] == 1


def test_viewers_and_operators_only(client: tuple[FlaskClient, Engine]) -> None:
    http, _ = client
    assert get(http, token="t-otto").status_code == 200
    assert get(http, token="t-sam").status_code == 403
    assert http.get("/v1/reports/sla").status_code == 401
    spec = http.get("/v1/openapi.json").get_json()
    operation = spec["paths"]["/v1/reports/sla"]["get"]
    assert {"application/json", "text/csv", "text/html"} <= set(operation["responses"]["200"]["content"])
    assert {p["name"] for p in operation["parameters"]} >= {"flow", "from", "to", "limit"}


def test_summary_table_for_a_terminal(engine: Engine) -> None:
    with written(engine) as conn:
        known_data(Data(conn))
    lines = report_text.summary(report(engine)).splitlines()
    assert lines[0].split() == ["started", "completed", "compensated", "breached", "SLA", "met",
                                "%", "p50", "s", "p95", "s", "p99", "s"]
    assert lines[1].split()[:7] == [FLOW, "17", "10", "3", "4", "53.3", "2.625"]
    assert [line.split()[0] for line in lines[2:4]] == ["a", "b"]
    assert lines[4:] == ["", SLA_MET_PCT, JUDGED]  # the footnote defines both


def test_sla_met_and_judged_are_defined_once_everywhere(client: tuple[FlaskClient, Engine]) -> None:
    """One sentence each, the same in the README, the text report and the CSV (still a table the
    csv module reads: definition rows at the end, the sentence in `reason`)."""
    http, engine = client
    with written(engine) as conn:
        known_data(Data(conn), still_open=False)
    readme = " ".join((ROOT / "README.md").read_text().split())
    for sentence in (JUDGED, SLA_MET_PCT):
        assert sentence in readme
    assert "compensated or needs_attention workflow is judged and never met" in SLA_MET_PCT
    table = list(csv.DictReader(io.StringIO(get(http, "text/csv").get_data(as_text=True))))
    assert [(r["status"], r["reason"]) for r in table if r["level"] == "definition"] == [
        ("sla_judged", JUDGED), ("sla_met_pct", SLA_MET_PCT)]
    assert table[-1]["level"] == "definition" and all(len(r) == len(COLUMNS) for r in table)


# -- `baton report sla` -----------------------------------------------------------------------------


def test_cli_computes_from_the_database_without_a_token(engine: Engine, database_url: str,
                                                        tmp_path: Path) -> None:
    with written(engine) as conn:
        known_data(Data(conn))
    env = {"DATABASE_URL": database_url, "BATON_DATA_DIR": str(tmp_path), "BATON_API_TOKEN": None}
    runner = CliRunner()
    out = tmp_path / "report.csv"
    result = runner.invoke(main, ["report", "sla", "--flow", FLOW, "--from", "2026-11-20T00:00:00Z",
                                  "--format", "csv", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}\n"
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["started"] for r in rows if r["level"] == "flow"] == ["17"]
    text = runner.invoke(main, ["report", "sla", "--format", "text"], env=env)
    assert text.exit_code == 0 and text.output.splitlines()[1].split()[:3] == [FLOW, "17", "10"]
    bad = runner.invoke(main, ["report", "sla", "--to", "soon"], env=env)
    assert bad.exit_code == 2 and "--to" in bad.output


def test_cli_asks_the_api_with_a_token(client: tuple[FlaskClient, Engine], tmp_path: Path) -> None:
    http, engine = client
    with written(engine) as conn:
        known_data(Data(conn), still_open=False)
    server = make_server("127.0.0.1", 0, http.application)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        env = {"BATON_API_URL": base, "BATON_API_TOKEN": "t-vera", "BATON_DATA_DIR": str(tmp_path)}
        out = tmp_path / "report.html"
        result = CliRunner().invoke(main, ["report", "sla", "--format", "html", "-o", str(out)],
                                    env=env)
        assert result.exit_code == 0, result.output
        assert out.read_text().startswith("<!DOCTYPE html>") and f"{base}/v1/workflows/" in out.read_text()
        refused = CliRunner().invoke(main, ["report", "sla", "--from", "today"], env=env)
        assert refused.exit_code == 1 and "from" in refused.output
        write_demo_report(base, "t-otto", tmp_path)
        assert (tmp_path / "sla-report.html").read_text().count("<svg") >= 3
    finally:
        server.shutdown()
        thread.join(timeout=10)
