"""The README's "Processes (Procfile)" commands, as written: honcho runs the Procfile from the
checkout with only `.venv/bin/activate` for PATH, on embedded defaults (SQLite and a private Redis
in a BATON_DATA_DIR of its own); a workflow goes through; Ctrl-C stops every process; `baton redis
stop` stops the Redis they left. And `honcho export systemd` with config/systemd's templates makes
units whose release line runs once and whose commands reach the shell intact.

(The `.venv/` itself is the one scripts/test.sh made, as the README says scripts/demo.sh does.)"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from controller.cli.procfile import ROOT, descendants, procfile_lines
from participants.runtime.redis_server import server_status, stop_server
from tests.system import free_port, order_input, wait_until

pytestmark = pytest.mark.slow

START = ". .venv/bin/activate && baton migrate && honcho start -c release=0"
STATUS = ". .venv/bin/activate && baton redis status"
STOP = ". .venv/bin/activate && baton redis stop"
EXPORT = (". .venv/bin/activate && honcho export -t config/systemd -a baton -u \"$USER\" systemd "
          "/etc/systemd/system")
TOKEN = "my-secret-token"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Processes (`Procfile`)"):text.index("## Configuration")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]


def test_the_readme_gives_these_commands() -> None:
    commands = readme_commands()
    for command in (START, STATUS, STOP, EXPORT):
        assert command in commands, command
    assert "export PORT=8000 BATON_TOKENS=me:operator:my-secret-token" in commands
    assert next(iter(procfile_lines())) == "web"  # the line honcho gives $PORT itself


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_with(marker: str) -> list[int]:
    """Processes whose environment mentions `marker` (the data dir): whatever honcho's lines, or
    a server one of them started, left behind."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes() and alive(int(environ.parent.name)):
                found.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return found


def shell(command: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, **kwargs)


@pytest.fixture
def environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    """What the README exports, a data dir of this test's own, and a PATH without the venv."""
    data = tmp_path / "data"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PORT": str(free_port()), "BATON_TOKENS": f"me:operator:{TOKEN}",
           "BATON_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    try:
        yield env
    finally:  # never leave a process behind, whatever failed
        stop_server(data)
        for pid in processes_with(str(data)):
            os.kill(pid, signal.SIGKILL)


def test_honcho_start_runs_the_procfile_and_ctrl_c_stops_it(environment: dict[str, str],
                                                            tmp_path: Path) -> None:
    env, data = environment, environment["BATON_DATA_DIR"]
    log = (tmp_path / "honcho.log").open("w")
    honcho = subprocess.Popen(["bash", "-c", START], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{env['PORT']}"
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {TOKEN}"

    def said() -> str:
        return (tmp_path / "honcho.log").read_text(errors="replace")

    def ready() -> bool:
        assert honcho.poll() is None, f"honcho exited {honcho.returncode}:\n{said()[-4000:]}"
        try:
            return http.get(f"{base}/readyz", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(ready, 180, "the API under honcho to be ready")
        assert said().startswith("database is up to date"), said()[:2000]  # the release line ran
        started = http.post(f"{base}/v1/workflows", json={"flow": "order_fulfillment",
                                                          "input": order_input()}, timeout=10)
        assert started.status_code == 201, started.text
        cid = started.json()["correlation_id"]
        wait_until(lambda: http.get(f"{base}/v1/workflows/{cid}", timeout=10).json()["status"]
                   == "completed", 90, f"{cid} to complete")
        lines = {name for name in procfile_lines() if name != "release"}
        running = set(re.findall(r"^\S+ system\s+\| (\w+)\.1 started", said(), re.M))
        assert running == lines, running
        family = descendants(honcho.pid)
        assert len(family) > 2 * len(lines)  # bash, honcho, and a shell and a process per line

        os.killpg(honcho.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert honcho.wait(timeout=60) == 130, said()[-4000:]
        assert "SIGINT received" in said()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in family if alive(p)] == []

        # the private Redis outlived them, as the README says, until `baton redis stop`
        redis = server_status(Path(data))
        assert redis is not None and alive(redis["pid"])
        assert set(processes_with(data)) <= {redis["pid"]}  # (redis-server rewrites its environ)
        status = shell(STATUS, env)
        assert status.returncode == 0 and status.stdout.startswith(
            f"{redis['url']} (pid {redis['pid']}"), status
        stopped = shell(STOP, env)
        assert (stopped.returncode, stopped.stdout) == (0, "stopped\n"), stopped
        assert not alive(int(redis["pid"])) and processes_with(data) == []
        assert shell(STATUS, env).stdout == "not running\n"
        assert shell(STOP, env).stdout == "not running\n"
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        log.close()
        http.close()


def unit(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", "[")):
            found.setdefault(key, []).append(value)
    return found


def exec_start(value: str) -> list[str]:
    """ExecStart as systemd reads this template's: `%%` is `%`, `$$` is `$`, then words in double
    quotes with `\\"` and `\\\\` escaped (POSIX shlex reads the same)."""
    return shlex.split(value.replace("%%", "%").replace("$$", "$"))


def test_honcho_export_systemd_makes_units_that_run(environment: dict[str, str],
                                                    tmp_path: Path) -> None:
    env = {**environment, "USER": pwd.getpwuid(os.getuid()).pw_name}
    units = tmp_path / "units"
    exported = shell(EXPORT.replace("/etc/systemd/system", str(units)), env)
    assert exported.returncode == 0, exported.stderr
    lines = procfile_lines()
    assert {p.name for p in units.glob("*.service")} == {f"baton-{n}-1.service" for n in lines}
    for name, command in lines.items():
        found = unit(units / f"baton-{name}-1.service")
        argv = exec_start(found["ExecStart"][0])
        assert argv == ["/bin/sh", "-c", f"exec {command}"], argv  # quotes and $PORT intact
        unit_env = dict(shlex.split(e)[0].split("=", 1) for e in found["Environment"])
        assert unit_env["PATH"].split(":")[0] == f"{ROOT}/.venv/bin"
        program = shlex.split(command)[0]
        where = subprocess.run(["/bin/sh", "-c", f"command -v {program}"], env=unit_env,
                               capture_output=True, text=True, check=False)
        assert where.stdout.strip() == f"{ROOT}/.venv/bin/{program}", (name, where)
        if name == "release":
            assert (found["Type"], found["RemainAfterExit"]) == (["oneshot"], ["yes"])
            assert "Restart" not in found and "Requires" not in found
            # run it as systemd would: the unit's environment only (and this test's data dir)
            ran = subprocess.run(argv, env={**unit_env, "BATON_DATA_DIR": env["BATON_DATA_DIR"]},
                                 cwd=found["WorkingDirectory"][0], capture_output=True, text=True,
                                 timeout=120, check=False)
            assert (ran.returncode, ran.stdout) == (0, "database is up to date\n"), ran
        else:
            assert found["Restart"] == ["always"]
            assert found["Requires"] == found["After"] == ["baton-release-1.service"]
    assert unit(units / "baton-web-1.service")["Environment"][-1] == f"PORT={env['PORT']}"
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", "--man=no",
                                   *map(str, sorted(units.iterdir()))], capture_output=True,
                                  text=True, timeout=120, check=False, cwd=units)
        assert verified.returncode == 0 and not verified.stderr.strip(), verified


def test_honcho_export_of_replicas_gives_each_copy_its_port_and_consumer_name(
        environment: dict[str, str], tmp_path: Path) -> None:
    """`honcho export -c tracker=3,web=2` (README, "Running at scale"): one unit per copy, each
    with its own HONCHO_PROCESS_NAME, hence a consumer name of its own that its restarts keep,
    and the web's copies on consecutive ports."""
    from config.settings import load_settings

    env = {**environment, "USER": pwd.getpwuid(os.getuid()).pw_name}
    units = tmp_path / "units"
    exported = shell(EXPORT.replace(" systemd /etc/systemd/system",
                                    f" -c tracker=3,web=2 systemd {units}"), env)
    assert exported.returncode == 0, exported.stderr
    names = {}
    for n in (1, 2, 3):
        unit_env = dict(shlex.split(e)[0].split("=", 1)
                        for e in unit(units / f"baton-tracker-{n}.service")["Environment"])
        assert unit_env["HONCHO_PROCESS_NAME"] == f"tracker.{n}"
        names[n] = load_settings(unit_env).consumer_name
    assert len(set(names.values())) == 3 and names[2].endswith("-tracker.2"), names
    ports = [dict(shlex.split(e)[0].split("=", 1) for e in
                  unit(units / f"baton-web-{n}.service")["Environment"])["PORT"] for n in (1, 2)]
    assert ports == [env["PORT"], str(int(env["PORT"]) + 1)]
