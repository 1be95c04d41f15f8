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


def test_the_cluster_harness_runs_single_and_cluster_in_one_run(tmp_path: Path) -> None:
    """`python -m bench.cluster`: the whole system on one Redis, then on a 3-primary cluster."""
    out = tmp_path / "cluster.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--seconds", "1.5", "--warmup", "0.5",
         "--window", "10", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "cluster / single throughput" in proc.stdout, proc.stdout
    results = {r["scenario"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"single-0", "cluster-0"}
    for name, r in results.items():
        assert r["completed_in_window"] > 0 and r["unfinished_after_drain"] == 0, (name, r)
        assert r["failed"] == 0, (name, r)
