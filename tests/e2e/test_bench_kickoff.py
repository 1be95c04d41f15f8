"""`python -m bench.kickoff` works (a smoke check, no timing asserted): the Procfile's web on a
private Redis and PostgreSQL answers every POST 201, and the run reports its CPU and transactions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_kickoff_bench_runs_the_procfile_web_and_every_post_is_accepted() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.kickoff", "-n", "40", "--warmup", "5", "--connections", "8",
         "--rounds", "1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"\s*web: .* req/s  web .* CPU ms/req .* commits/req [0-9.]+  errors 0$", line), line
