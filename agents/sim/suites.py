"""The child-process side shared by the third-party suite adapters (issue 11 §4).

Meta-World, gymnasium-robotics and gym-hil pin older MuJoCo versions than USER's 4.0.0
(Meta-World 3.1.1: ``mujoco==3.3.0``), so they live in a Python 3.12 virtualenv of their own
— ``make suites`` makes it at ``<venv>/suites`` from ``infra/suites/requirements.txt`` — and
each suite robot runs its environment in a child process of that interpreter
(``agents/sim/_suite_server.py``, JSON lines over pipes, no pickle). One adapter module per
suite (``metaworld``, ``fetch``, ``gym_hil``) maps the suite's observation to USER's task
``info`` arrays and success rule.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from schemas import spaces

__all__ = ["ChildEnv", "Reply", "SuiteRobot", "suite_python"]

#: ``obs`` as the server sends it: a flat float vector, or named vectors.
Obs = npt.NDArray[np.float32] | dict[str, npt.NDArray[np.float32]]


def suite_python(python: str | None = None) -> str | None:
    """The suites' interpreter: ``python``, else ``USER_SUITES_PYTHON``, else the one
    ``make suites`` installs beside USER's venv (``<sys.prefix>/suites/bin/python``) where it
    exists, else None."""
    if python:
        return python
    if os.environ.get("USER_SUITES_PYTHON"):
        return os.environ["USER_SUITES_PYTHON"]
    made = pathlib.Path(sys.prefix) / "suites" / "bin" / "python"
    return str(made) if made.exists() else None


def ee_spec(robot_type: str, observation_dim: int, task: str, info_keys: Any,
            control_hz: float, max_episode_steps: int) -> spaces.RobotSpec:
    """The spec every suite arm shares: ``observation_dim`` float32 values, USER's
    end-effector action ``[dx, dy, dz, grip]`` in [-1, 1] and a 3-D position per info key."""
    return spaces.RobotSpec(
        robot_type=robot_type,
        observation=spaces.ArraySpec(shape=(observation_dim,), dtype="float32"),
        action=spaces.ArraySpec(shape=(4,), dtype="float32", low=-1.0, high=1.0),
        info={k: spaces.ArraySpec(shape=(3,), dtype="float32") for k in info_keys},
        control_hz=control_hz,
        max_episode_steps=max_episode_steps,
        task=task,
    )


class Reply:
    """One ``reset``/``step`` answer: the observation, the suite's own end flags and its
    success flag."""

    __slots__ = ("obs", "success", "terminated", "truncated")

    def __init__(self, raw: dict[str, Any]) -> None:
        obs = raw["obs"]
        self.obs: Obs = ({k: np.asarray(v, np.float32) for k, v in obs.items()}
                         if isinstance(obs, dict) else np.asarray(obs, np.float32))
        self.terminated = bool(raw.get("terminated", False))
        self.truncated = bool(raw.get("truncated", False))
        self.success = bool(raw.get("success", False))


class ChildEnv:
    """A suite environment in a child process of ``python`` (``_suite_server``).

    ``kwargs`` go to the suite's ``gym.make`` (gymnasium suites). ``name`` prefixes every
    error (``RobotError``, one line): the interpreter cannot start, the suite is not
    installed there, the environment does not build, the child died.
    """

    def __init__(self, name: str, python: str, suite: str, env: str, seed: int | None,
                 max_episode_steps: int, kwargs: dict[str, Any] | None = None) -> None:
        self._name = name
        server = pathlib.Path(__file__).with_name("_suite_server.py")
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                [python, str(server)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as exc:
            raise robot_mod.RobotError(f"{name}: cannot start {python}: {exc}") from exc
        try:
            reply = self.call({"op": "make", "suite": suite, "env": env, "seed": seed,
                               "max_episode_steps": max_episode_steps,
                               "kwargs": kwargs or {}})
        except robot_mod.RobotError:
            self.close()
            raise
        #: The MuJoCo version the suite runs on.
        self.mujoco = str(reply.get("mujoco", "?"))

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request, one reply; ``RobotError`` for an error reply or a dead child."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise robot_mod.RobotError(f"{self._name}: the suite process is closed")
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError as exc:
            raise robot_mod.RobotError(f"{self._name}: the suite process died: {exc}") from exc
        if not line:
            raise robot_mod.RobotError(
                f"{self._name}: the suite process exited (code {proc.poll()}); is the suite "
                "installed in USER_SUITES_PYTHON's environment (`make suites`)?")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise robot_mod.RobotError(f"{self._name}: {request['op']}: {reply['error']}")
        return reply

    def reset(self, seed: int | None = None) -> Reply:
        return Reply(self.call({"op": "reset", "seed": seed}))

    def step(self, action: npt.NDArray[np.floating]) -> Reply:
        return Reply(self.call({"op": "step", "action": [float(a) for a in action]}))

    def expert(self) -> npt.NDArray[np.float32]:
        """The suite's own scripted policy's action for the current observation."""
        return np.asarray(self.call({"op": "expert"})["action"], np.float32)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None and proc.poll() is None:
                proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                proc.stdin.flush()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


class SuiteRobot(robot_mod.Robot):
    """What the suite adapters share: the child environment, the announced spec, the
    per-episode seed draw, the episode counters and ``close``. Subclasses build the spec and
    map the suite's observation in ``reset``/``step``."""

    def __init__(self, name: str, env: ChildEnv, spec: spaces.RobotSpec,
                 seed: int | None) -> None:
        self._name = name
        self._env: ChildEnv | None = env
        self._spec = spec
        self._rng = np.random.default_rng(seed)
        self._obs = np.zeros(spec.observation.shape, np.float32)
        self._info: dict[str, npt.NDArray[np.float32]] = {}
        self._index = 0
        self._done = True

    @property
    def spec(self) -> spaces.RobotSpec:
        return self._spec

    def _live(self) -> ChildEnv:
        if self._env is None:
            raise robot_mod.RobotError(f"{self._name}: the robot is closed")
        return self._env

    def _draw(self, seed: int | None) -> int:
        """The seed an episode resets with: ``seed``, else the next of this robot's own."""
        return int(self._rng.integers(2**31)) if seed is None else seed

    def _step_child(self, action: npt.NDArray[np.floating]) -> Reply:
        """One suite step; ``RobotError`` after the episode ended."""
        if self._done:
            raise robot_mod.RobotError(f"{self._name}: step after the episode ended; reset "
                                       "first")
        reply = self._live().step(action)
        self._index += 1
        return reply

    def _last(self) -> robot_mod.Step:
        """The last state again, as the end of its episode (``hold`` after it ended)."""
        return robot_mod.Step(self._obs.copy(), dict(self._info), self._index, truncated=True)

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()
