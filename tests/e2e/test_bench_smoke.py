"""The benchmark harness works (issue 6: CI runs `--quick` as a smoke check, with no timing asserted).

`python -m bench.throughput --quick` with the bare choreography and Baton on PostgreSQL, each with
every Procfile line as a real process, its own Redis (AOF) and PostgreSQL: the table and the JSON
come out, and nothing Baton accepted is missing from its database or dead-lettered. The peers
(Celery, DBOS) need the `bench` extra and are left to the benchmark's own runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_throughput_harness_runs_quick_and_baton_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.throughput", "--quick", "--only", "bare,baton-pg",
         "--seconds", "1.5", "--open-seconds", "1.5", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "wf/s" in proc.stdout and "x bare" in proc.stdout, proc.stdout  # the table was printed
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"bare", "baton-pg"}
    for name, r in results.items():
        assert "error" not in r, (name, r.get("error"))
        closed = r["phases"][0]
        assert closed["mode"] == "closed"
        assert r["completed_total"] > 0, (name, r)
        for column in ("workflows_per_s", "latency_ms", "cpu_s_per_1k_by_kind"):
            assert column in closed, (name, column, sorted(closed))
    checks = results["baton-pg"]["checks"]
    assert checks["accepted_missing_in_db"] == 0, checks
    assert not any(checks["dead_letters"].values()), checks
    assert results["baton-pg"]["failed_total"] == 0, results["baton-pg"]
