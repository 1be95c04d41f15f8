"""Issue 15's table and targets from a run's results (bench/verdict.py), and the bare participants'
answers to compensation commands (bench/bare.py's `Logic`, which baton-core runs beside Baton)."""

from __future__ import annotations

from typing import Any

import orjson

from bench import verdict
from bench.bare import Logic


def _closed(wfs: float, cpu: float) -> dict[str, Any]:
    return {"mode": "closed", "workflows_per_s": wfs, "cpu_s_per_1k": cpu, "client_cpu_s_per_1k": 0.1}


def _open(rate: float, p99: float, post: float, not_sent: int = 0) -> dict[str, Any]:
    return {"mode": "open", "target_rate": rate, "workflows_per_s": rate, "not_sent": not_sent,
            "rejected": 0, "latency_ms": {"p50": p99 / 2, "p99": p99}, "kickoff_ms": {"p99": post}}


def _results() -> list[dict[str, Any]]:
    return [
        {"scenario": "bare", "phases": [_closed(2000, 0.8)]},
        {"scenario": "baton-pg", "phases": [_closed(500, 3.5), _open(200, 80, 8), _open(300, 300, 20, 4)]},
        {"scenario": "baton-batch", "phases": [_closed(1200, 2.0)]},
        {"scenario": "baton-core", "phases": [_closed(900, 1.5)]},
        {"scenario": "baton-sqlite", "phases": [_closed(100, 10)], "accepted_total": 3000,
         "checks": {"accepted_missing_in_db": 0, "accepted_not_completed_in_db": 0, "dead_letters": {},
                    "sqlite_integrity": {"baton.db": "ok", "p_inventory.db": "ok"}}},
        {"scenario": "celery", "phases": [_closed(80, 15)]},
        {"scenario": "dbos", "error": "RuntimeError: the DBOS peer did not start", "phases": []},
    ]


def test_the_rows_give_each_scenario_against_bare_celery_and_dbos() -> None:
    rows = {r["scenario"]: r for r in verdict.rows(_results())}
    assert rows["baton-pg"] == {"scenario": "baton-pg", "wf_s": 500, "cpu_ms_per_wf": 3.5,
                                "client_cpu_ms_per_wf": 0.1, "vs_bare": 0.25, "vs_celery": 6.25,
                                "vs_dbos": None, "other_load_pct": None}
    assert rows["dbos"]["error"].startswith("RuntimeError")


def test_each_target_is_met_missed_or_not_measured_with_its_figure() -> None:
    met = {t["target"].split(".")[0]: t for t in verdict.targets(_results())}
    assert met["1"]["met"] is None  # DBOS failed: the ratio to it is not measured
    assert "6.25x Celery" in met["1"]["measured"] and "3.5 CPU ms" in met["1"]["measured"]
    assert met["2"]["met"] is True and "1,200 wf/s, 0.6x bare" in met["2"]["measured"]
    assert met["3"]["met"] is False  # 900 / 2000 = 0.45
    assert met["4a"]["met"] is True
    assert met["4b"]["met"] is False and "not sent 4" in met["4b"]["measured"]
    assert met["5"]["met"] is True and "integrity_check ok on 2 files" in met["5"]["measured"]


def test_the_markdown_has_the_issues_columns_and_every_target() -> None:
    text = verdict.markdown(verdict.summary(_results()))
    assert "| scenario | wf/s | CPU ms per workflow | vs bare | vs Celery | vs DBOS |" in text
    assert "| **baton-pg** | 500 | 3.5 | 0.25 | 6.2 | - |" in text
    assert "baton-pg at 300 wf/s open loop" in text and "not sent 4" in text
    assert text.count("\n| 4") == 2 and "| not measured |" in text


def test_the_readme_block_is_replaced_between_its_markers_and_nothing_else() -> None:
    head, b, e = "# B\n\n## Throughput and latency\n\nintro\n\n", verdict.BEGIN, verdict.END
    after = verdict.rewrite_block(f"{head}{b}\n\nold\n\n{e}\n\nafter\n", "new table")
    assert after == f"{head}{b}\n\nnew table\n\n{e}\n\nafter\n"
    added = verdict.rewrite_block(f"{head}### Next\n", "t")
    assert added == f"{head}{b}\n\nt\n\n{e}\n\n### Next\n"


def _fields(type_: str, data: dict[str, Any], cid: str = "c1") -> dict[bytes, bytes]:
    return {b"type": type_.encode(), b"id": b"m1", b"correlation_id": cid.encode(),
            b"data": orjson.dumps(data)}


def test_a_bare_participant_undoes_its_effect_once_when_a_compensation_command_comes() -> None:
    order = {"order_id": "o1", "customer_id": "cust", "currency": "EUR", "total_amount": 2.5,
             "items": [{"product_id": "SKU-001", "quantity": 3, "unit_price": 1.0}]}
    inventory = Logic("inventory", remember=True)
    [(reserved, made)] = inventory.handle("order.placed", _fields("order.placed", order))
    assert reserved == "inventory.reserved" and inventory.stock["SKU-001"] == 1_000_000 - 3
    release = _fields("inventory.release", {"order_id": "o1"})
    [(released, data)] = inventory.command("inventory.release", release)
    assert (released, data["released_reservations"]) == (
        "inventory.released", [r["reservation_id"] for r in made["reservations"]])
    assert inventory.stock["SKU-001"] == 1_000_000
    [(again, data)] = inventory.command("inventory.release", release)  # once: nothing left to give back
    assert (again, data["released_reservations"], inventory.stock["SKU-001"]) == (
        "inventory.released", [], 1_000_000)

    payment = Logic("payment", remember=True)
    [(_, charged)] = payment.handle("order.placed", _fields("order.placed", order))
    cmd = _fields("payment.refund", {"order_id": "o1", "reason": "r"})
    assert payment.command("payment.refund", cmd) == [
        ("payment.refunded", {"order_id": "o1", "payment_id": charged["payment_id"], "amount": 2.5})]
    assert payment.used["cust"] == 0
    assert payment.command("payment.refund", cmd)[0][0] == "payment.refund_failed"


def test_a_bare_participant_without_commands_keeps_no_effects() -> None:
    logic = Logic("payment")
    order = {"order_id": "o1", "customer_id": "c", "currency": "EUR", "total_amount": 1.0, "items": []}
    logic.handle("order.placed", _fields("order.placed", order))
    assert logic.effects == {}
