"""The SLA report as one self-contained HTML page: tables and inline SVG charts, no script, no
external resource, so that it opens anywhere, offline, as a file or from the API."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from controller.reporting.definitions import PROGRESS, PROGRESS_COUNTS
from controller.reporting.render_svg import PALETTE, Series, bar_chart, line_chart

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta, .note { color: #5b6475; } .note { font-size: 12px; max-width: 900px; }
table { border-collapse: collapse; margin: 4px 0 12px; }
th, td { border-bottom: 1px solid #dde2ea; padding: 4px 10px; text-align: right; }
td { white-space: nowrap; }
th { background: #f2f4f8; } td.name, th.name { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
svg.chart { background: #fafbfd; border: 1px solid #e3e7ee; }
.chart-title { font-size: 13px; font-weight: 600; fill: #1d2330; }
.tick { font-size: 10px; fill: #5b6475; } .grid { stroke: #e3e7ee; }
"""
_OUTCOMES = ("started", "completed", "compensated", "needs_attention", "breached")


def render(report: dict[str, Any], base_url: str = "") -> str:
    """`base_url` prefixes the links to workflows (none: links relative to the API's host)."""
    scope = ", ".join(f"{k} {report[k]}" for k in ("flow", "from", "to") if report.get(k))
    body = [
        "<h1>SLA report</h1>",
        f'<p class="meta">{escape(scope or "every flow, all time")}; generated '
        f'{escape(report["generated_at"])}; times in UTC</p>',
    ]
    if not report["flows"]:
        body.append('<p id="empty">No workflow started in this range.</p>')
    else:
        body += _sections(report, base_url.rstrip("/"))
    body.append(_definitions())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\">"
            f"<title>Baton SLA report</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _sections(report: dict[str, Any], base: str) -> list[str]:
    return [
        "<h2>Flows</h2>", _outcome_table("flows", report["flows"], ("flow",), ("in_flight",)),
        "<h2>Over time</h2>", _time_charts(report["series"]),
        "<h2>Steps</h2>", _outcome_table("steps", report["steps"], ("flow", "step"), ("failed",)),
        "<h2>Step durations</h2>", _step_charts(report["steps"]),
        "<h2>Transitions</h2>",
        '<p class="note">Between a message and each message it caused, by their occurred_at: '
        "the time the participant that emitted the later one took.</p>",
        _transition_table(report["transitions"]),
        f'<h2>Breaches ({report["breaches"]["total"]})</h2>', _breach_table(report["breaches"], base),
        "<h2>Slowest completed workflows</h2>", _slow_table(report["slowest"], base),
        *_progress(report.get("progress") or []),
    ]


def _progress(rows: list[dict[str, Any]]) -> list[str]:
    """The flows that report progress (bulk_repricing's SKUs), in flight or finished."""
    if not rows:
        return []
    head = ["flow", "workflows", *PROGRESS_COUNTS]
    body = [[_name(r["flow"]), *(_num(r.get(k, 0)) for k in head[1:])] for r in rows]
    return ["<h2>Progress</h2>", f'<p class="note">{escape(PROGRESS)}</p>',
            _table("progress", head, body, 1)]


def _outcome_table(name: str, rows: list[dict[str, Any]], names: Sequence[str],
                   extra: Sequence[str]) -> str:
    head = [*names, *(k.replace("_", " ") for k in (*_OUTCOMES, *extra)), "SLA met %",
            "p50", "p95", "p99", "max"]
    body = [[*(_name(r[n]) for n in names), *(_num(r[k]) for k in (*_OUTCOMES, *extra)),
             _num(_pct(r["sla_met_pct"])), *_durations(r["duration_seconds"])] for r in rows]
    return _table(name, head, body, len(names))


def _transition_table(rows: list[dict[str, Any]]) -> str:
    head = ["flow", "transition", "participant", "count", "p50", "p95", "p99", "max"]
    body = [[_name(r["flow"]), _name(f'{r["from_type"]} → {r["to_type"]}'), _name(r["participant"]),
             _num(r["count"]), *_durations(r["duration_seconds"])] for r in rows]
    return _table("transitions", head, body, 3)


def _breach_table(breaches: dict[str, Any], base: str) -> str:
    head = ["workflow", "flow", "status", "late step", "deadline of", "deadline", "late by"]
    body = [[_link(b, base), _name(b["flow"]), _name(b["status"]), _name(b["step"] or "—"),
             _name(b["deadline_of"]), _name(b["deadline"] or ""), _num(_secs(b["late_by_seconds"]))]
            for b in breaches["items"]]
    shown = len(body)
    note = (f'<p class="note">The {shown} late by the most, of {breaches["total"]}.</p>'
            if shown < breaches["total"] else "")
    return _table("breaches", head, body, 6) + note


def _slow_table(rows: list[dict[str, Any]], base: str) -> str:
    head = ["workflow", "flow", "started", "finished", "duration"]
    body = [[_link(r, base), _name(r["flow"]), _name(r["started_at"]), _name(r["finished_at"]),
             _num(_secs(r["duration_seconds"]))] for r in rows]
    return _table("slowest", head, body, 4)


def _time_charts(series: dict[str, Any]) -> str:
    items, width = series["items"], series["bucket_seconds"]
    cut = slice(11, 19) if width < 60 else slice(11, 16) if width < 86400 else slice(0, 10)
    labels = [p["start"][cut] for p in items]
    per = _per(width)
    return '<div class="charts">' + "".join([
        line_chart("SLA met % (by start time)", labels,
                   [Series("SLA met %", [p["sla_met_pct"] for p in items], PALETTE[3])], 100.0),
        bar_chart(f"Breaches per {per}", labels,
                  [Series("breached", [p["breached"] for p in items], PALETTE[2])]),
        bar_chart(f"Throughput per {per}", labels,
                  [Series("started", [p["started"] for p in items], PALETTE[0]),
                   Series("completed", [p["completed"] for p in items], PALETTE[1])]),
    ]) + "</div>"


def _step_charts(steps: list[dict[str, Any]]) -> str:
    charts = []
    for step in steps:
        hist = step["histogram"]
        cumulative = [*hist["cumulative"], hist["count"]]
        counts = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)]
        labels = [f"≤{le:g}s" for le in hist["le"]] + [f'>{hist["le"][-1]:g}s']
        charts.append(bar_chart(f'{step["flow"]} / {step["step"]}: duration of done steps', labels,
                                [Series("steps", counts, PALETTE[0])]))
    return '<div class="charts">' + "".join(charts) + "</div>"


def _table(name: str, head: Sequence[str], rows: list[list[str]], left: int) -> str:
    ths = "".join(f'<th{" class=name" if i < left else ""}>{escape(h)}</th>' for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(rows_) + "</tr>" for rows_ in rows)
    empty = f'<tr><td class="name" colspan="{len(head)}">none</td></tr>' if not rows else ""
    return f'<table id="{name}"><thead><tr>{ths}</tr></thead><tbody>{trs}{empty}</tbody></table>'


def _name(text: str) -> str:
    return f'<td class="name">{escape(str(text))}</td>'


def _num(text: Any) -> str:
    return f"<td>{escape(str(text))}</td>"


def _link(row: dict[str, Any], base: str) -> str:
    return (f'<td class="name"><a href="{escape(base + row["link"])}">'
            f'{escape(row["correlation_id"])}</a></td>')


def _durations(d: dict[str, Any]) -> list[str]:
    return [_num(_secs(d[k])) for k in ("p50", "p95", "p99", "max")]


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.3f} s"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _per(width: int) -> str:
    names = {10: "10 s", 60: "minute", 300: "5 min", 900: "15 min", 3600: "hour", 21600: "6 h",
             86400: "day", 604800: "week", 2592000: "30 days"}
    return names.get(width, f"{width // 86400} days")


def _definitions() -> str:
    return """<h2>How to read it</h2><p class="note">
A workflow counts in the range when it <b>started</b> in it. Durations: a workflow's from its
start to its end, of completed workflows; a step's from the moment its prerequisites were met to
its done event. p50/p95/p99 interpolate linearly between ranks (PostgreSQL's percentile_cont).
<b>SLA met</b>: completed at or before its deadline. <b>SLA met %</b>: met out of those judged,
that is finished or past their deadline. <b>Breached</b>: stopped for its SLA, completed late, or
running past its deadline; a step, when it ended after its own deadline.</p>"""
