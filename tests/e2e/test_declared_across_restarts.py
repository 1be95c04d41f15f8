"""A controller process started on flow files whose declared message type changed incompatibly
since the last load stops at once with the reason (exit 2), as for a malformed variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.flows import load_registry
from contracts.timefmt import utcnow
from controller.cli.procfile import ROOT
from controller.db import declared, migrate
from participants.runtime.db import make_engine
from tests.integration.test_declared_across_restarts import _flows

pytestmark = pytest.mark.slow


def test_a_controller_process_refuses_to_start_on_an_incompatible_change(
        tmp_path: Path, redis_url: str) -> None:
    """`baton relay` (any controller process) stops with a configuration error, no traceback."""
    sqlite_url = f"sqlite:///{tmp_path}/baton.db"
    engine = make_engine(sqlite_url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            declared.record(conn, load_registry((_flows(tmp_path, "email: {type: string}"),)), utcnow())
    finally:
        engine.dispose()
    _flows(tmp_path, "email: {type: integer}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update({"DATABASE_URL": sqlite_url, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
                "BATON_FLOWS_DIRS": str(tmp_path / "flows"), "BATON_DATA_DIR": str(tmp_path / "d")})
    done = subprocess.run([str(Path(sys.executable).with_name("baton")), "relay"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "configuration error" in done.stderr and "declare version 2" in done.stderr
    assert "Traceback" not in done.stderr
