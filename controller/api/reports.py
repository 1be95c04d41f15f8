"""`GET /v1/reports/sla`: the SLA report as JSON, CSV or HTML, chosen by the Accept header."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask_smorest import Blueprint
from marshmallow import RAISE

from contracts.reports_api import SlaQuery, SlaReport
from contracts.timefmt import utcnow
from controller.api.auth import OPERATOR, VIEWER, requires
from controller.api.problems import may_answer, problem
from controller.reporting import render_csv as report_csv
from controller.reporting import render_html as report_html
from controller.reporting.sla import ReportQuery, progress_on, sla_report, step_order
from controller.service.bootstrap import Services

blp = Blueprint("reports", __name__, url_prefix="/v1/reports", description="SLA reports")
JSON, CSV, HTML = "application/json", "text/csv", "text/html"
_TEXT = {"schema": {"type": "string"}}
_DESCRIPTION = (
    "Per flow, step and transition: outcomes, SLA met % and p50/p95/p99/max durations; the "
    "breaches and the slowest workflows. `Accept: text/csv` gives one table for a spreadsheet, "
    "`text/html` a page with charts.")


@blp.route("/sla", methods=["GET"])
@requires(VIEWER, OPERATOR)
@blp.arguments(SlaQuery, location="query", unknown=RAISE)
@blp.response(200, SlaReport, description=_DESCRIPTION)
@blp.doc(responses={"200": {"description": _DESCRIPTION, "content": {
    JSON: {"schema": {"$ref": "#/components/schemas/SlaReport"}}, CSV: _TEXT, HTML: _TEXT}}})
@may_answer(blp, 401, 403, 406, 503)
def sla(query: dict[str, Any]) -> Any:
    accept = request.accept_mimetypes
    kind = accept.best_match((JSON, CSV, HTML)) if accept else JSON
    if kind is None:
        return problem(406, "Not Acceptable", f"this report is served as {JSON}, {CSV} or {HTML}")
    services: Services = current_app.extensions["baton"]
    report_query = ReportQuery(now=utcnow(), flow=query.get("flow"), start=query.get("start"),
                               end=query.get("end"), limit=query["limit"])
    with services.engine.begin() as conn:  # one transaction: one snapshot, and SET LOCAL
        report = sla_report(conn, report_query, step_order(services.catalog),
                            progress_on(services.catalog))
    if kind == CSV:
        return Response(report_csv.render(report), mimetype=CSV, headers={
            "Content-Disposition": 'attachment; filename="sla-report.csv"'})
    if kind == HTML:
        return Response(report_html.render(report, request.host_url), mimetype=HTML)
    return report
