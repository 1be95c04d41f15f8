"""The README's tutorial, followed as a reader would: its three files written to a fresh directory
outside the checkout, its commands typed into one shell, block after block.

The only liberty taken: the API's port 8000 becomes a free one, so that the test can run beside
others. The files must also be the ones in `examples/tutorial/`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from controller.cli.procfile import ROOT
from tests.system import free_port, wait_until

pytestmark = pytest.mark.slow

SECTION = re.compile(r"^## Tutorial: .*?(?=^## )", re.S | re.M)
FILE = re.compile(r"^`([\w/.]+)`:\n\n```\w+\n(.*?)^```", re.S | re.M)
BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
TOKEN = "my-secret-token"


def tutorial() -> str:
    found = SECTION.search((ROOT / "README.md").read_text())
    assert found, "README.md has no '## Tutorial: ...' section"
    return found.group(0)


@dataclass
class Shell:
    """One bash, fed the tutorial's blocks through files it sources, as typing them would."""

    proc: subprocess.Popen[str]
    work: Path
    count: int = 0

    def run(self, block: str, timeout: float = 120) -> str:
        self.count += 1
        script, out, rc = (self.work / f"block-{self.count}{s}" for s in (".sh", ".out", ".rc"))
        script.write_text(block)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"source {script} > {out} 2>&1; echo $? > {rc}.tmp; mv {rc}.tmp {rc}\n")
        self.proc.stdin.flush()
        wait_until(rc.exists, timeout, f"block {self.count} to finish:\n{block}")
        output = out.read_text()
        assert rc.read_text().strip() == "0", f"block {self.count} failed:\n{block}\n{output}"
        return output


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "baton").symlink_to(ROOT)  # "your clone of Baton", at ~/baton as the tutorial says
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(["bash"], stdin=subprocess.PIPE, cwd=home, env=env, text=True,
                            start_new_session=True)
    try:
        yield Shell(proc, tmp_path)
    finally:
        with_logs = home / "loyalty"
        _stop(proc)
        for log in sorted(with_logs.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen[str]) -> None:
    """Whatever the tutorial left running in the shell's session, and the shell."""
    if proc.stdin is not None:
        proc.stdin.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


def _session_processes(sid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != sid:
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def test_the_readme_tutorial_runs_as_written(shell: Shell) -> None:
    section = tutorial()
    files = dict(FILE.findall(section))
    assert set(files) == {"flows/loyalty_signup.yaml", "accounts.py", "mailer.py"}
    for name, text in files.items():
        assert text == (ROOT / "examples" / "tutorial" / name).read_text(), \
            f"README's {name} differs from examples/tutorial/{name}"
    port = str(free_port())
    setup, start, kick, look, stop = [b.replace("8000", port) for b in BASH.findall(section)]

    shell.run(setup)
    project = shell.work / "home" / "loyalty"  # ~/loyalty, made by the first block
    assert project.is_dir() and not str(project).startswith(str(ROOT)), "outside the checkout"
    for name, text in files.items():
        (project / name).write_text(text)

    shell.run(start, timeout=180)
    shell.run(kick)

    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        _check_the_outcomes(shell, api, port, look, stop)
    finally:
        api.close()


def _check_the_outcomes(shell: Shell, api: requests.Session, port: str, look: str, stop: str) -> None:
    base = f"http://127.0.0.1:{port}/v1/workflows"

    def statuses() -> dict[str, str]:
        found = {}
        for i in range(1, 11):
            answer = api.get(f"{base}/signup-{i}", timeout=10)
            assert answer.status_code == 200, answer.text
            found[f"signup-{i}"] = answer.json()["status"]
        return found

    wait_until(lambda: all(s in ("completed", "compensated", "needs_attention")
                           for s in statuses().values()), 120, "the ten workflows to finish")
    final = statuses()
    assert [c for c, s in final.items() if s == "completed"] == [f"signup-{i}" for i in range(1, 9)]
    assert [c for c, s in final.items() if s == "compensated"] == ["signup-9", "signup-10"]

    bounced = api.get(f"{base}/signup-9", timeout=10).json()
    steps = {s["name"]: s for s in bounced["steps"]}
    assert steps["send_welcome"]["status"] == "failed"
    assert steps["send_welcome"]["reason"] == "member9@bounce.example bounced"
    assert steps["create_account"]["status"] == "compensated"
    assert [(c["command"], c["status"]) for c in bounced["compensations"]] == [("account.delete", "done")]

    shown = shell.run(look)
    print(f"--- what step 6 printed\n{shown}")
    assert shown.count("completed") >= 8 and "member9@bounce.example bounced" in shown, shown
    assert "account.delete" in shown, shown

    shell.run(stop, timeout=60)
    deadline = time.monotonic() + 20
    while _session_processes(shell.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _session_processes(shell.proc.pid)
    assert not left, f"still running after the tutorial's stop: {left}"
