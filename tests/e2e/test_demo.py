"""The README's first command, smaller: `baton demo` on embedded defaults (SQLite, a private Redis it
starts itself) drives every kind of outcome, ends with the SLA report and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli.procfile import ROOT

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def processes_with(marker: str) -> list[str]:
    """Processes whose environment mentions `marker`: what the demo started and left behind."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def test_the_demo_drives_every_outcome_and_stops_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "BATON_DATA_DIR": str(data)}
    # 16 orders: 10 from the demo's seeded mix (every kind of failure among them), 6 that breach
    done = subprocess.run([str(BIN / "baton"), "demo", "--orders", "16"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    orders = out.split("Outcome of the demo's workflows")[1].split("Outcome of the price changes")[0]
    for line in ("completed", "compensated (step_failed at reserve_inventory)",
                 "compensated (step_failed at charge_payment)",
                 "compensated (step_failed at schedule_shipment)", "compensated (sla_breached)"):
        assert line in orders, orders
    assert "total                                             16" in orders, orders
    prices = out.split("Outcome of the price changes")[1].split("SLA report:")[0]
    for line in ("completed", "compensated (step_failed at evaluate_rules)",
                 "compensated (step_failed at approve)", "compensated (step_failed at update_catalog)"):
        assert line in prices, prices
    report = out.split("SLA report:")[1]
    assert "order_fulfillment         16" in report and "price_change" in report, report
    assert (data / "demo" / "sla-report.html").read_text().startswith("<!DOCTYPE html>")
    assert processes_with(str(data)) == []
