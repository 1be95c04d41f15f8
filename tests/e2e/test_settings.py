"""Settings refused at a process's start: `baton migrate`, the tracker and gunicorn's app exit
naming the variable, without a traceback (real processes; the rest is in tests/unit/test_settings.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DATABASE_URL", "notaurl", "DATABASE_URL: not a SQLAlchemy URL"),
    ("BATON_FLOWS_DIRS", "/no/such/flows", "BATON_FLOWS_DIRS: /no/such/flows is not a directory"),
])
def test_baton_migrate_exits_2_naming_the_variable(tmp_path: Path, name: str, value: str,
                                                   says: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_") and k != "DATABASE_URL"}
    root = Path(__file__).resolve().parents[2]  # this checkout's code, whatever is installed
    env.update({"BATON_DATA_DIR": str(tmp_path), "PYTHONPATH": str(root), name: value})
    baton = Path(sys.executable).parent / "baton"
    done = subprocess.run([str(baton), "migrate"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith(f"baton: configuration error: {says}"), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "baton.db").exists(), "nothing was opened"



def test_a_bad_flow_file_or_variable_stops_the_tracker_and_the_web_with_a_message(tmp_path: Path) -> None:
    """The processes that load flows (the controller's, gunicorn's app) say what is wrong and
    stop, without a traceback."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "broken.yaml").write_text("name: broken\nversion: 1\nsteps: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_") and k != "DATABASE_URL"}
    root = Path(__file__).resolve().parents[2]
    env.update({"BATON_DATA_DIR": str(tmp_path), "PYTHONPATH": str(root),
                "BATON_FLOWS_DIRS": str(flows), "REDIS_URL": "redis://127.0.0.1:1/0"})
    bin_dir = Path(sys.executable).parent
    tracker = subprocess.run([str(bin_dir / "baton"), "tracker"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert tracker.returncode == 2, (tracker.stdout, tracker.stderr)
    assert tracker.stderr.startswith(f"baton: configuration error: flow definition {flows / 'broken.yaml'}")
    assert "start_event" in tracker.stderr and "Traceback" not in tracker.stderr
    env.update({"DATABASE_URL": "notaurl", "BATON_FLOWS_DIRS": ""})
    web = subprocess.run([str(bin_dir / "gunicorn"), "--workers", "1", "--bind", "127.0.0.1:0",
                          "controller.api.app:create_app()"], env=env, capture_output=True, text=True,
                         timeout=60, check=False, cwd=root)
    assert web.returncode != 0
    assert "baton web: configuration error: DATABASE_URL: not a SQLAlchemy URL" in web.stderr, web.stderr
    assert "Traceback" not in web.stderr, web.stderr
