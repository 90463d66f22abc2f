"""Meta-World's Sawyer tasks behind the robot interface (issue 11 §4): the adapter module.

A lab runs the published benchmark tasks through the whole pipeline (agents, reward jobs,
learner, history) and compares with the suite's own figures. USER's task names map to
Meta-World v3 environments (``reach`` → ``reach-v3``, ``push`` → ``push-v3``,
``pick_place_air`` → ``pick-place-v3``: its goal may be in the air, so its success rule is
not USER's ``pick_place`` into a bin); the observation is Meta-World's 39-vector, the action
its 4-vector (end-effector delta + gripper, in [-1, 1]); each step is Meta-World's own
12.5 ms of simulated time (frame skip 5 of 2.5 ms), and the agent paces steps at
``control_hz`` (default 20, like the other simulated types: the simulation then runs
slower than real time); an episode is its 500 steps.

``info`` carries ``ee_pos``, ``goal_pos`` and (push, pick-place) ``cube_pos`` read from the
observation, so USER's reward jobs score these episodes with the same rules as the
built-in tasks; ``scripted_policy`` is Meta-World's own scripted policy for the task.
Meta-World 3.1.1 pins ``mujoco==3.3.0`` and USER runs MuJoCo 4.0.0, so the suite lives in a
virtual environment of its own (``make suites``; or give its interpreter as ``python=`` /
``USER_SUITES_PYTHON``) and the environment runs there, in a child process
(``agents.sim.suites``). Without it, building this type fails in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from agents.registry import RobotType
from agents.sim import suites
from schemas import tasks as rules

#: USER task -> Meta-World v3 environment.
ENVS = {"reach": "reach-v3", "push": "push-v3", "pick_place_air": "pick-place-v3"}
_OBS = 39
_HAND, _OBJ, _GOAL = slice(0, 3), slice(4, 7), slice(36, 39)
#: The rate the agent paces steps at (Meta-World's own period is 12.5 ms of sim time).
CONTROL_HZ = 20.0
MAX_EPISODE_STEPS = 500


class MetaWorldSawyer(suites.SuiteRobot):
    """One Meta-World v3 task environment (a Sawyer arm) as a USER robot."""

    def __init__(self, task: str = "reach", seed: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, python: str | None = None,
                 control_hz: float = CONTROL_HZ) -> None:
        if task not in ENVS:
            raise robot_mod.RobotError(f"metaworld: no task {task!r}; it can do "
                                       f"{', '.join(ENVS)}")
        python = suites.suite_python(python)
        if python is None:
            raise robot_mod.RobotError(
                "metaworld: the Meta-World suite is not installed: run `make suites` (a Python "
                "3.12 venv with 'metaworld==3.1.1', which pins mujoco==3.3.0) or set "
                "USER_SUITES_PYTHON to the python of a venv that has it")
        keys = rules.INFO_KEYS["reach"] if task == "reach" else rules.INFO_KEYS["push"]
        spec = suites.ee_spec("metaworld_sawyer", _OBS, task, keys, control_hz,
                              max_episode_steps)
        env = suites.ChildEnv("metaworld", python, "metaworld", ENVS[task], seed,
                              max_episode_steps)
        super().__init__("metaworld", env, spec, seed)

    def _step(self, obs: npt.NDArray[np.floating], *, truncated: bool = False) -> robot_mod.Step:
        self._obs = np.asarray(obs, np.float32)
        info = {rules.EE_POS: self._obs[_HAND].copy(), rules.GOAL_POS: self._obs[_GOAL].copy()}
        if rules.CUBE_POS in self._spec.info:
            info[rules.CUBE_POS] = self._obs[_OBJ].copy()
        self._info = info
        return robot_mod.Step(self._obs.copy(), dict(info), self._index, truncated=truncated)

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        reply = self._live().reset(seed=self._draw(seed))
        self._index, self._done = 0, False
        return self._step(np.asarray(reply.obs, np.float32))

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        reply = self._step_child(np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0))
        truncated = reply.truncated or self._index >= self._spec.max_episode_steps
        self._done = truncated
        return self._step(np.asarray(reply.obs, np.float32), truncated=truncated)

    def hold(self) -> robot_mod.Step:
        # Zero end-effector motion with the gripper command unchanged.
        if self._done:
            return self._last()
        held = np.zeros(4)
        held[3] = float(self._obs[3] * 2.0 - 1.0)
        return self.step(held)

    def scripted_policy(self) -> Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]:
        """Meta-World's own scripted policy for the task (``metaworld.policies``, run in the
        suite's process on its current observation; the argument is ignored)."""
        env = self._live()

        def act(_obs: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
            return np.clip(env.expert(), -1.0, 1.0).astype(np.float32)

        return act


def make(**options: Any) -> MetaWorldSawyer:
    """Factory for ``make_robot("metaworld_sawyer", task=...)``."""
    return MetaWorldSawyer(**options)


#: The ``user.robots`` entry point: Meta-World's Sawyer tasks.
SAWYER = RobotType(make, tuple(ENVS))
