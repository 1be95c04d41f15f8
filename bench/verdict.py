"""Issue 15's table and targets, from one `bench.throughput` run (its JSON `results`).

`summary(results)` gives the rows (scenario, wf/s, CPU ms per workflow, vs bare, vs Celery, vs
DBOS), the latency lines of baton-pg's open loops and each target with its measured figure and
whether it is met; `markdown(out)` prints them; `write_readme(out)` rewrites the marked block of
bench/README.md, as bench/sweep.py does for its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- throughput:results -->", "<!-- /throughput:results -->"
LABELS = {
    "bare": "bare choreography (redis-py)", "baton-pg": "**baton-pg**",
    "baton-batch": "baton-batch", "baton-core": "baton-core", "baton-sqlite": "baton-sqlite",
    "celery": "Celery chain", "dbos": "DBOS",
}


def _closed(results: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for r in results:
        if r["scenario"] == name and r.get("phases") and r["phases"][0]["mode"] == "closed":
            phase: dict[str, Any] = r["phases"][0]
            return phase
    return None


def _open(results: list[dict[str, Any]], name: str, rate: float) -> dict[str, Any] | None:
    for r in results:
        if r["scenario"] == name:
            for p in r.get("phases", []):
                if p["mode"] == "open" and p.get("target_rate") == rate:
                    return dict(p)
    return None


def _wfs(results: list[dict[str, Any]], name: str) -> float | None:
    phase = _closed(results, name)
    return phase["workflows_per_s"] if phase else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = {n: _wfs(results, n) for n in ("bare", "celery", "dbos")}
    out = []
    for r in results:
        phase = _closed(results, r["scenario"])
        if phase is None:
            out.append({"scenario": r["scenario"], "error": r.get("error", "no closed loop")})
            continue
        v = phase["workflows_per_s"]
        out.append({"scenario": r["scenario"], "wf_s": v, "cpu_ms_per_wf": phase["cpu_s_per_1k"],
                    "client_cpu_ms_per_wf": phase["client_cpu_s_per_1k"],
                    "vs_bare": _ratio(v, base["bare"]), "vs_celery": _ratio(v, base["celery"]),
                    "vs_dbos": _ratio(v, base["dbos"]), "other_load_pct": phase.get("foreign_cpu_pct")})
    return out


def latency(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        for p in r.get("phases", []):
            if p["mode"] == "open":
                out.append({"scenario": r["scenario"], "rate": p.get("target_rate"),
                            "wf_s": p["workflows_per_s"], "p50_ms": p["latency_ms"]["p50"],
                            "p99_ms": p["latency_ms"]["p99"], "post_p99_ms": p["kickoff_ms"]["p99"],
                            "not_sent": p["not_sent"], "rejected": p["rejected"]})
    return out


def _target(name: str, measured: str, met: bool | None, main: float | None = 0.0) -> dict[str, Any]:
    """`main`: the scenario's own figure; without it the target was not measured at all."""
    return {"target": name, "measured": measured if main is not None else "not measured", "met": met}


def _f(v: float | None, unit: str = "") -> str:
    if v is None:
        return "not measured"
    return (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}") + unit


def _all(*conds: bool | None) -> bool | None:
    return None if any(c is None for c in conds) else all(bool(c) for c in conds)


def _ge(v: float | None, bound: float) -> bool | None:
    return None if v is None else v >= bound


def _le(v: float | None, bound: float) -> bool | None:
    return None if v is None else v <= bound


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    w = {n: _wfs(results, n) for n in ("bare", "baton-pg", "baton-batch", "baton-core", "celery", "dbos")}
    pg = _closed(results, "baton-pg") or {}
    cpu = pg.get("cpu_s_per_1k")
    vs_c, vs_d = _ratio(w["baton-pg"], w["celery"]), _ratio(w["baton-pg"], w["dbos"])
    batch_bare = _ratio(w["baton-batch"], w["bare"])
    core_bare = _ratio(w["baton-core"], w["bare"])
    out = [
        _target("1. baton-pg ≥ 5x Celery, ≥ 5x DBOS, ≤ 4 CPU ms per workflow",
                f"{_f(w['baton-pg'], ' wf/s')}: {_f(vs_c, 'x')} Celery, {_f(vs_d, 'x')} DBOS, "
                f"{_f(cpu, ' CPU ms')} per workflow", _all(_ge(vs_c, 5), _ge(vs_d, 5), _le(cpu, 4)),
                w["baton-pg"]),
        _target("2. baton-batch ≥ 1,000 wf/s and ≥ 0.5x bare",
                f"{_f(w['baton-batch'], ' wf/s')}, {_f(batch_bare, 'x')} bare",
                _all(_ge(w["baton-batch"], 1000), _ge(batch_bare, 0.5)), w["baton-batch"]),
        _target("3. baton-core ≥ 0.5x bare", f"{_f(w['baton-core'], ' wf/s')}, {_f(core_bare, 'x')} bare",
                _ge(core_bare, 0.5), w["baton-core"]),
    ]
    o200, o300 = _open(results, "baton-pg", 200.0), _open(results, "baton-pg", 300.0)
    if o200:
        p99, post = o200["latency_ms"]["p99"], o200["kickoff_ms"]["p99"]
        out.append(_target("4a. at 200 wf/s open loop: p99 ≤ 100 ms, POST p99 ≤ 10 ms",
                           f"p99 {_f(p99, ' ms')}, POST p99 {_f(post, ' ms')}, not sent {o200['not_sent']}",
                           _all(_le(p99, 100), _le(post, 10), o200["not_sent"] == 0)))
    else:
        out.append(_target("4a. at 200 wf/s open loop: p99 ≤ 100 ms, POST p99 ≤ 10 ms", "not measured", None))
    if o300:
        p99 = o300["latency_ms"]["p99"]
        out.append(_target("4b. at 300 wf/s open loop: nothing not sent, p99 ≤ 250 ms",
                           f"not sent {o300['not_sent']}, rejected {o300['rejected']}, p99 {_f(p99, ' ms')}",
                           _all(o300["not_sent"] == 0, o300["rejected"] == 0, _le(p99, 250))))
    else:
        out.append(_target("4b. at 300 wf/s open loop: nothing not sent, p99 ≤ 250 ms", "not measured", None))
    out.append(_sqlite(results))
    return out


def _sqlite(results: list[dict[str, Any]]) -> dict[str, Any]:
    name = "5. SQLite measured, nothing lost or corrupted"
    r = next((r for r in results if r["scenario"] == "baton-sqlite"), None)
    if r is None or not r.get("phases"):
        return _target(name, r.get("error", "not measured") if r else "not measured", None)
    c = r.get("checks", {})
    integrity = c.get("sqlite_integrity", {})
    lost = c.get("accepted_missing_in_db", 0) + c.get("accepted_not_completed_in_db", 0)
    dead = sum(c.get("dead_letters", {}).values())
    ok = lost == 0 and dead == 0 and bool(integrity) and all(v == "ok" for v in integrity.values())
    return _target(name, f"{_f(_wfs(results, 'baton-sqlite'), ' wf/s')}; {r.get('accepted_total', 0):,} "
                   f"accepted, {lost} missing or not completed, {dead} dead letters, integrity_check "
                   f"{'ok' if ok else integrity} on {len(integrity)} files", ok)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": rows(results), "latency": latency(results), "targets": targets(results)}


def _x(v: float | None) -> str:
    return "-" if v is None else (f"{v:.0f}" if v >= 10 else f"{v:.2g}")


def _n(v: float | None) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def markdown(s: dict[str, Any]) -> str:
    lines = ["| scenario | wf/s | CPU ms per workflow | vs bare | vs Celery | vs DBOS |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        label = LABELS.get(r["scenario"], r["scenario"])
        if "error" in r:
            lines.append(f"| {label} | error: {r['error'][:80]} | | | | |")
            continue
        lines.append(f"| {label} | {_n(r['wf_s'])} | {_n(r['cpu_ms_per_wf'])} | {_x(r['vs_bare'])} | "
                     f"{_x(r['vs_celery'])} | {_x(r['vs_dbos'])} |")
    loads = [f"{r['scenario']} {r['other_load_pct']:.0f} %" for r in s["rows"]
             if r.get("other_load_pct") is not None]
    if loads:
        lines += ["", "Other processes' share of the machine during each closed loop (a loaded machine "
                  "skews every figure): " + ", ".join(loads) + "."]
    lines.append("")
    for lat in s["latency"]:
        lines.append(f"- {lat['scenario']} at {lat['rate']:g} wf/s open loop: sustained {_n(lat['wf_s'])}/s, "
                     f"kickoff-to-`completed` p50 {_n(lat['p50_ms'])} ms, p99 {_n(lat['p99_ms'])} ms; "
                     f"the POST alone p99 {_n(lat['post_p99_ms'])} ms; not sent {lat['not_sent']}, "
                     f"rejected {lat['rejected']}")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in s["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    return "\n".join(lines)


def write_readme(out: dict[str, Any], command: str, details: str, path: Path = README) -> None:
    """Rewrite the marked block of bench/README.md with this run."""
    m = out["machine"]
    machine = (f"{m['nproc']} x {m['cpu']}, {m['ram_gb']} GB RAM, Python {m['python']}; "
               + ", ".join(f"{k} {v}" for k, v in sorted(m.get("versions", {}).items())))
    block = "\n\n".join([f"Command: `{command}`, at {out['at']} ({out['elapsed_s']:.0f} s).",
                         f"Machine: {machine}.", markdown(out["summary"]), details])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(rewrite_block(text, block))


def rewrite_block(text: str, block: str) -> str:
    """`text` with the block between the markers replaced (or added under "Throughput and latency")."""
    block = f"{BEGIN}\n\n{block}\n\n{END}"
    if BEGIN in text and END in text:
        return text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    if "## Throughput and latency" in text:
        at = text.index("## Throughput and latency")
        nxt = text.find("\n### ", at + 1)
        at_end = len(text) if nxt < 0 else nxt
        return text[:at_end].rstrip() + "\n\n" + block + "\n" + text[at_end:]
    return text.rstrip() + "\n\n## Throughput and latency\n\n" + block + "\n"
