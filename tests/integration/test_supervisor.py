"""`userctl up|down|status`: the supervisor restarts a crashed role and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _userctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def _wait(check, what: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_crashed_role_is_restarted_and_reported_and_down_stops_everything(
    tmp_path: Path, kafka: object,
) -> None:
    marker = tmp_path / "crashes"
    crashy = ("import pathlib,sys,time; p=pathlib.Path(sys.argv[1]); "
              "n=int(p.read_text()) if p.exists() else 0; p.write_text(str(n+1)); "
              "sys.exit(3) if n < 2 else time.sleep(3600)")
    topology = tmp_path / "topo.yaml"
    topology.write_text(yaml.safe_dump({
        "name": f"t-{os.getpid()}",
        "backoff_s": 0.1,
        "roles": {
            "steady": {"command": [sys.executable, "-c", "import time; time.sleep(3600)"]},
            "crashy": {"command": [sys.executable, "-c", crashy, str(marker)]},
            "robots": {"userctl": ["robots"], "restart": "never"},
        },
    }))
    env = {**os.environ, "USER_HOME": str(tmp_path / "home")}
    up = _userctl("up", str(topology), "--detach", env=env)
    assert up.returncode == 0, up.stderr
    try:
        def restarted_twice() -> dict | None:  # type: ignore[type-arg]
            state = json.loads((tmp_path / "home" / "topologies" / f"t-{os.getpid()}"
                                / "state.json").read_text())
            roles = {r["name"]: r for r in state["roles"]}
            settled = (roles["crashy"]["restarts"] == 2 and roles["crashy"]["running"]
                       and roles["robots"]["gave_up"])
            return roles if settled else None

        roles = _wait(restarted_twice, "two restarts of the crashing role, one clean exit")
        assert roles["steady"]["restarts"] == 0 and roles["steady"]["running"]
        assert roles["robots"]["last_exit"] == 0 and roles["robots"]["gave_up"]
        assert "crashed (exit code 3)" in roles["crashy"]["history"][0]
        status = _userctl("status", str(topology), env=env)
        assert status.returncode == 0
        assert "crashy" in status.stdout and "crashed (exit code 3)" in status.stdout
        again = _userctl("up", str(topology), "--detach", env=env)
        assert "already up" in again.stdout
    finally:
        down = _userctl("down", str(topology), env=env)
    assert down.returncode == 0 and "is down" in down.stdout
    pids = [r["pid"] for r in roles.values() if r["pid"]]
    for pid in pids:
        _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists()
              or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], f"pid {pid} to end")
    assert _userctl("status", str(topology), env=env).returncode == 3
