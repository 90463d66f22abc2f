"""Meta-World's Sawyer tasks behind the robot interface (issue 11 §4): the adapter module.

A lab runs the published benchmark tasks through the whole pipeline (agents, reward jobs,
learner, history) and compares with the suite's own figures. USER's task names map to
Meta-World v3 environments (``reach`` → ``reach-v3``, ``push`` → ``push-v3``,
``pick_place`` → ``pick-place-v3``); the observation is Meta-World's 39-vector, the action
its 4-vector (end-effector delta + gripper, in [-1, 1]); each step is Meta-World's own
12.5 ms of simulated time (frame skip 5 of 2.5 ms), and the agent paces steps at
``control_hz`` (default 20, like the other simulated types: the simulation then runs
slower than real time); an episode is its 500 steps.

``info`` carries ``ee_pos``, ``goal_pos`` and (push, pick-place) ``cube_pos`` read from the
observation, so USER's reward jobs score these episodes with the same rules as the
built-in tasks. Meta-World 3.1.1 pins ``mujoco==3.3.0`` and USER runs MuJoCo 4.0.0, so
the suite usually lives in a virtual environment of its own: give its interpreter as
``python=`` (or ``USER_SUITES_PYTHON``) and the environment runs there, in a child process
(``agents/sim/_suite_server.py``, JSON lines over pipes). Where ``metaworld`` imports in
this process, it runs here. Neither: building this type fails in one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
from typing import Any

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from agents.registry import RobotType
from schemas import spaces
from schemas import tasks as rules

#: USER task -> Meta-World v3 environment.
ENVS = {"reach": "reach-v3", "push": "push-v3", "pick_place": "pick-place-v3"}
_OBS = 39
_HAND, _OBJ, _GOAL = slice(0, 3), slice(4, 7), slice(36, 39)
#: The rate the agent paces steps at (Meta-World's own period is 12.5 ms of sim time).
CONTROL_HZ = 20.0
MAX_EPISODE_STEPS = 500


class MetaWorldSawyer(robot_mod.Robot):
    """One Meta-World v3 task environment (a Sawyer arm) as a USER robot."""

    def __init__(self, task: str = "reach", seed: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, python: str | None = None,
                 control_hz: float = CONTROL_HZ) -> None:
        if task not in ENVS:
            raise robot_mod.RobotError(f"metaworld: no task {task!r}; it can do "
                                       f"{', '.join(ENVS)}")
        python = python or os.environ.get("USER_SUITES_PYTHON") or None
        self._task = task
        self._env: Any
        if python is not None:
            self._env = _ChildEnv(python, ENVS[task], seed, max_episode_steps)
        elif importlib.util.find_spec("metaworld") is not None:
            import gymnasium as gym
            import metaworld  # noqa: F401 - registers the Meta-World/ environments
            try:
                self._env = gym.make("Meta-World/MT1", env_name=ENVS[task],
                                     seed=seed, max_episode_steps=max_episode_steps)
            except Exception as exc:  # the suite's own errors, e.g. an unsupported MuJoCo
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise robot_mod.RobotError(f"metaworld: {ENVS[task]} does not build: "
                                           f"{type(exc).__name__}: {first}") from exc
        else:
            raise robot_mod.RobotError(
                "metaworld: the Meta-World package is not installed here; make a venv with "
                "pip install 'metaworld==3.1.1' (it pins mujoco==3.3.0) and set "
                "USER_SUITES_PYTHON to its python")
        self._rng = np.random.default_rng(seed)
        keys = rules.INFO_KEYS["reach"] if task == "reach" else rules.INFO_KEYS["push"]
        self._spec = spaces.RobotSpec(
            robot_type="metaworld_sawyer",
            observation=spaces.ArraySpec(shape=(_OBS,), dtype="float32"),
            action=spaces.ArraySpec(shape=(4,), dtype="float32", low=-1.0, high=1.0),
            info={k: spaces.ArraySpec(shape=(3,), dtype="float32") for k in keys},
            control_hz=control_hz,
            max_episode_steps=max_episode_steps,
            task=task,
        )
        self._obs = np.zeros(_OBS, np.float32)
        self._index = 0
        self._done = True

    @property
    def spec(self) -> spaces.RobotSpec:
        return self._spec

    def _step(self, obs: npt.NDArray[np.floating], *, truncated: bool = False) -> robot_mod.Step:
        self._obs = np.asarray(obs, np.float32)
        info = {rules.EE_POS: self._obs[_HAND].copy(), rules.GOAL_POS: self._obs[_GOAL].copy()}
        if rules.CUBE_POS in self._spec.info:
            info[rules.CUBE_POS] = self._obs[_OBJ].copy()
        return robot_mod.Step(self._obs.copy(), info, self._index, truncated=truncated)

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        draw = int(self._rng.integers(2**31)) if seed is None else seed
        obs, _ = self._env.reset(seed=draw)
        self._index, self._done = 0, False
        return self._step(obs)

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        if self._done:
            raise robot_mod.RobotError("metaworld: step after the episode ended; reset first")
        a = np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0)
        obs, _, _, truncated, _ = self._env.step(a)
        self._index += 1
        truncated = bool(truncated) or self._index >= self._spec.max_episode_steps
        self._done = truncated
        return self._step(obs, truncated=truncated)

    def hold(self) -> robot_mod.Step:
        # Zero end-effector motion with the gripper command unchanged.
        if self._done:
            return self._step(self._obs, truncated=True)
        held = np.zeros(4)
        held[3] = float(self._obs[3] * 2.0 - 1.0)
        return self.step(held)

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            env.close()


class _ChildEnv:
    """The suite's environment in a child process of another Python (``_suite_server``);
    the same ``reset``/``step``/``close`` as a gymnasium environment, observations only."""

    def __init__(self, python: str, env: str, seed: int | None, max_episode_steps: int) -> None:
        server = pathlib.Path(__file__).with_name("_suite_server.py")
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                [python, str(server)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as exc:
            raise robot_mod.RobotError(f"metaworld: cannot start {python}: {exc}") from exc
        reply = self._call({"op": "make", "suite": "metaworld", "env": env, "seed": seed,
                            "max_episode_steps": max_episode_steps})
        self.mujoco = str(reply.get("mujoco", "?"))

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise robot_mod.RobotError("metaworld: the suite process is closed")
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError as exc:
            raise robot_mod.RobotError(f"metaworld: the suite process died: {exc}") from exc
        if not line:
            raise robot_mod.RobotError(
                f"metaworld: the suite process exited (code {proc.poll()}); is metaworld "
                "installed in USER_SUITES_PYTHON's environment?")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise robot_mod.RobotError(f"metaworld: {request['op']}: {reply['error']}")
        return reply

    def reset(self, seed: int | None = None) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        reply = self._call({"op": "reset", "seed": seed})
        return np.asarray(reply["obs"], np.float32), {}

    def step(self, action: npt.NDArray[np.floating]
             ) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        reply = self._call({"op": "step", "action": [float(a) for a in action]})
        return np.asarray(reply["obs"], np.float32), 0.0, False, bool(reply["truncated"]), {}

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                proc.stdin.flush()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def make(**options: Any) -> MetaWorldSawyer:
    """Factory for ``make_robot("metaworld_sawyer", task=...)``."""
    return MetaWorldSawyer(**options)


#: The ``user.robots`` entry point: Meta-World's Sawyer tasks.
SAWYER = RobotType(make, tuple(ENVS))
