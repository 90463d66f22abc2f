"""A small process supervisor for a USER topology (``userctl up|down|status``).

A topology YAML names the roles to run — each a ``userctl`` subcommand or any command —
and the supervisor starts them, restarts a role that dies (saying so, with its exit
code, and backing off), writes its state to ``<home>/topologies/<name>/state.json`` for
``userctl status``, and stops every role on SIGTERM/SIGINT (gracefully, then forcefully).

Example::

    name: demo
    env: {USER_AGENT_FLUSH_MS: "200"}
    roles:
      controller: {userctl: [controller]}
      agent-lab-a: {userctl: [agent, --robot-type, reacher2d, --site, lab-a, --count, "2"]}
      monitor: {command: [python3, -c, "print('any command works')"], restart: never}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from infra._yaml import load_model
from infra.broker import REPO

log = logging.getLogger("userctl.supervisor")


class RoleSpec(BaseModel):
    """One role: a ``userctl`` subcommand or a plain command, and its restart policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    userctl: list[str] | None = Field(None, description="arguments to `userctl`")
    command: list[str] | None = Field(None, description="any command, argv form")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment")
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    stop_timeout_s: float = Field(20.0, gt=0)

    @model_validator(mode="after")
    def _one_command(self) -> RoleSpec:
        if (self.userctl is None) == (self.command is None):
            raise ValueError("give exactly one of `userctl` or `command`")
        return self

    def argv(self) -> list[str]:
        if self.userctl is not None:
            return [sys.executable, "-m", "infra.cli", *self.userctl]
        assert self.command is not None
        return list(self.command)


class Topology(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    env: dict[str, str] = Field(default_factory=dict)
    roles: dict[str, RoleSpec] = Field(min_length=1)
    max_restarts: int = Field(20, ge=0, description="per role, before giving up on it")
    backoff_s: float = Field(1.0, ge=0, description="first restart delay; doubles, max 30 s")


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file; errors name the field and the file."""
    return load_model(path, Topology, "topology")


@dataclass
class _Role:
    name: str
    spec: RoleSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    next_start: float = 0.0
    gave_up: bool = False
    history: list[str] = field(default_factory=list)


def state_dir(home: Path, name: str) -> Path:
    return home / "topologies" / name


class Supervisor:
    """Runs a topology's roles until :meth:`stop`; restarts the ones that die."""

    def __init__(self, topology: Topology, home: Path, *, base_env: dict[str, str] | None = None
                 ) -> None:
        self.topology = topology
        self.dir = state_dir(home, topology.name)
        self.logs = home / "logs" / topology.name
        self.env = {**(base_env if base_env is not None else os.environ), **topology.env}
        self.roles = [_Role(name, spec) for name, spec in topology.roles.items()]
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def _start(self, role: _Role) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{role.name}.log").open("ab")
        role.proc = subprocess.Popen(
            role.spec.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**self.env, **role.spec.env}, cwd=REPO, start_new_session=True,
        )
        out.close()
        role.started_at = time.time()
        log.info("started %s (pid %d)", role.name, role.proc.pid)

    def _reap(self, role: _Role, now: float) -> None:
        assert role.proc is not None
        code = role.proc.poll()
        if code is None:
            return
        role.last_exit, role.proc = code, None
        wanted = {"always": True, "on-failure": code != 0, "never": False}[role.spec.restart]
        if not wanted or self._stopping:
            log.info("%s exited with code %d; not restarting (%s)", role.name, code,
                     role.spec.restart)
            role.gave_up = True
            return
        if role.restarts >= self.topology.max_restarts:
            log.error("%s exited with code %d and has been restarted %d times; giving up "
                      "(see %s)", role.name, code, role.restarts,
                      self.logs / f"{role.name}.log")
            role.gave_up = True
            return
        delay = min(30.0, self.topology.backoff_s * (2 ** min(role.restarts, 5)))
        uptime = now - role.started_at
        if uptime > 60:  # it ran fine for a while: start the backoff over
            delay = self.topology.backoff_s
        role.restarts += 1
        role.next_start = now + delay
        msg = (f"{role.name} crashed (exit code {code}) after {uptime:.0f} s; "
               f"restarting in {delay:.0f} s (restart {role.restarts})")
        role.history.append(f"{time.strftime('%H:%M:%S')} {msg}")
        log.warning("%s", msg)

    def write_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "name": self.topology.name, "supervisor_pid": os.getpid(),
            "updated_at": time.time(), "stopping": self._stopping,
            "roles": [{
                "name": r.name, "pid": r.proc.pid if r.proc else None,
                "running": r.proc is not None, "started_at": r.started_at,
                "restarts": r.restarts, "last_exit": r.last_exit, "gave_up": r.gave_up,
                "history": r.history[-5:],
            } for r in self.roles],
        }
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.dir / "state.json")

    def run(self, *, poll_s: float = 0.2) -> int:
        """Supervise until stopped; returns 0 after a clean stop."""
        (self.dir).mkdir(parents=True, exist_ok=True)
        (self.dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        try:
            for role in self.roles:
                self._start(role)
            last_write = 0.0
            while not self._stopping:
                now = time.time()
                for role in self.roles:
                    if role.proc is not None:
                        self._reap(role, now)
                    elif not role.gave_up and now >= role.next_start:
                        self._start(role)
                if now - last_write >= 1.0:
                    self.write_state()
                    last_write = now
                time.sleep(poll_s)
            return 0
        finally:
            self._stop_all()
            self.write_state()
            (self.dir / "supervisor.pid").unlink(missing_ok=True)

    def _stop_all(self) -> None:
        self._stopping = True
        live = [r for r in self.roles if r.proc is not None and r.proc.poll() is None]
        for role in live:
            assert role.proc is not None
            log.info("stopping %s (pid %d)", role.name, role.proc.pid)
            _signal_group(role.proc.pid, signal.SIGTERM)
        for role in live:
            assert role.proc is not None
            try:
                role.proc.wait(timeout=role.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", role.name,
                            role.spec.stop_timeout_s)
                _signal_group(role.proc.pid, signal.SIGKILL)
                role.proc.wait(timeout=10)
            role.last_exit = role.proc.returncode
            role.proc = None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def read_state(home: Path, name: str) -> dict[str, object] | None:
    path = state_dir(home, name) / "state.json"
    try:
        data: dict[str, object] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def supervisor_pid(home: Path, name: str) -> int | None:
    try:
        pid = int((state_dir(home, name) / "supervisor.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid
