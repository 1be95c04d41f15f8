"""The report's CSV is safe to open in a spreadsheet: a cell a participant chose (its name, a
message type) that a spreadsheet would run as a formula is written as text (OWASP's advice)."""

from __future__ import annotations

import csv
import io
from typing import Any

from controller.reporting import render_csv


def _report(transition: dict[str, Any]) -> dict[str, Any]:
    return {"flows": [], "steps": [], "transitions": [transition], "breaches": {"items": []},
            "slowest": [], "series": {"items": []}}


def test_a_cell_that_would_be_a_formula_is_written_as_text() -> None:
    evil = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    rows = []
    for text in evil:
        transition = {"flow": "f", "from_type": "a.b", "to_type": "c.d", "participant": text,
                      "count": 1, "duration_seconds": {"count": 1, "p50": -1.5, "max": 2.0}}
        table = csv.DictReader(io.StringIO(render_csv.render(_report(transition))))
        rows.append(next(r for r in table if r["level"] == "transition"))
    assert [r["participant"] for r in rows] == ["'" + t for t in evil]
    assert rows[0]["p50_seconds"] == "-1.5", "a number stays a number"
    assert rows[0]["from_type"] == "a.b"
