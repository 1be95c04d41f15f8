"""The SLA report's HTML page in a real browser: headless Chromium, run as a process, shows its
charts without console errors (the report itself: tests/integration/test_reports.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from tests.integration import test_reports as inproc
from tests.integration.test_reports import Data, get, known_data, written

client = inproc.client  # the API in-process on a migrated database, as for the report's other tests


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: scripts/test.sh installs Debian's package",
                    pytrace=False)
    return found


def browse(html: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         "--window-size=1280,2000", "--enable-logging=stderr", "--v=0", *extra, html.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def test_html_shows_its_charts_in_chromium_without_console_errors(
        client: tuple[FlaskClient, Engine], tmp_path: Path) -> None:
    http, engine = client
    with written(engine) as conn:
        named = known_data(Data(conn))
    response = get(http, "text/html")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = tmp_path / "sla-report.html"
    page.write_bytes(response.get_data())
    shot = tmp_path / "sla-report.png"
    shown = browse(page, tmp_path, f"--screenshot={shot}")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    errors = [line for line in shown.stderr.splitlines()
              if "Uncaught" in line or ("CONSOLE" in line and "ERROR" in line)]
    assert not errors, errors
    dom = browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 3 + 2  # three charts over time, one per step
    for table in ("flows", "steps", "transitions", "breaches", "slowest"):
        assert f'<table id="{table}">' in dom.stdout
    assert f'href="http://localhost/v1/workflows/{named["done8"]}"' in dom.stdout
    assert "<script" not in dom.stdout
