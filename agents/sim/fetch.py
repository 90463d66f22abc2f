"""gymnasium-robotics' Fetch tasks behind the robot interface (issue 11 §4): the adapter module.

``reach`` → ``FetchReach-v4``, ``push`` → ``FetchPush-v4`` (Plappert et al. 2018,
"Multi-Goal Reinforcement Learning: Challenging Robotics Environments and Request for
Research"): a 7-DoF Fetch arm with a parallel gripper, the action ``[dx, dy, dz, gripper]``
in [-1, 1] (the suite's own mocap end-effector control, 5 cm per step at most), 50-step
episodes, each step the suite's own 40 ms of simulated time, paced by the agent at
``control_hz`` (default 20). The observation is the suite's ``observation`` vector (10
values for reach, 25 for push) followed by its ``desired_goal`` (3), float32.

``info`` carries ``ee_pos`` (the gripper), ``goal_pos`` (the desired goal) and, for push,
``cube_pos`` (the object), shifted so the table top is at z = 0 like USER's own scenes
(Fetch's table top is at z = 0.4 m): USER's success rules (``schemas.tasks``) then agree
with the suite's own (a 5 cm distance) and its reward jobs score these episodes unchanged.

The suite pins an older MuJoCo than USER's, so it runs in the suites' virtualenv
(``make suites``) in a child process (``agents.sim.suites``).
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

__all__ = ["ENVS", "FETCH", "FetchArm", "make"]

#: USER task -> gymnasium-robotics environment id.
ENVS = {"reach": "FetchReach-v4", "push": "FetchPush-v4"}
#: Length of the suite's ``observation`` vector per task.
_OBS = {"reach": 10, "push": 25}
#: Fetch's table top height (m); info arrays are shifted down by it.
TABLE_Z = 0.4
CONTROL_HZ = 20.0
MAX_EPISODE_STEPS = 50


class FetchArm(suites.SuiteRobot):
    """One Fetch task environment as a USER robot."""

    def __init__(self, task: str = "reach", seed: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, python: str | None = None,
                 control_hz: float = CONTROL_HZ) -> None:
        if task not in ENVS:
            raise robot_mod.RobotError(f"fetch: no task {task!r}; it can do {', '.join(ENVS)}")
        python = suites.suite_python(python)
        if python is None:
            raise robot_mod.RobotError(
                "fetch: the gymnasium-robotics suite is not installed: run `make suites` or "
                "set USER_SUITES_PYTHON to the python of a venv with 'gymnasium-robotics'")
        self._task = task
        spec = suites.ee_spec("fetch", _OBS[task] + 3, task, rules.INFO_KEYS[task],
                              control_hz, max_episode_steps)
        env = suites.ChildEnv("fetch", python, "gymnasium", ENVS[task], seed, max_episode_steps)
        super().__init__("fetch", env, spec, seed)

    def _step(self, reply: suites.Reply, *, truncated: bool = False) -> robot_mod.Step:
        obs = reply.obs
        assert isinstance(obs, dict)
        state, goal = obs["observation"], obs["desired_goal"]
        self._obs = np.concatenate([state, goal]).astype(np.float32)
        shift = np.array([0.0, 0.0, TABLE_Z], np.float32)
        info = {rules.EE_POS: state[:3] - shift, rules.GOAL_POS: goal - shift}
        if rules.CUBE_POS in self._spec.info:
            info[rules.CUBE_POS] = obs["achieved_goal"] - shift
        self._info = {k: v.astype(np.float32) for k, v in info.items()}
        return robot_mod.Step(self._obs.copy(), dict(self._info), self._index,
                              truncated=truncated)

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        reply = self._live().reset(seed=self._draw(seed))
        self._index, self._done = 0, False
        return self._step(reply)

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        reply = self._step_child(np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0))
        truncated = reply.truncated or self._index >= self._spec.max_episode_steps
        self._done = truncated
        return self._step(reply, truncated=truncated)

    def hold(self) -> robot_mod.Step:
        # Zero end-effector motion, the gripper left as it is (Fetch's mocap holds).
        return self._last() if self._done else self.step(np.zeros(4))

    def scripted_policy(self) -> Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]:
        """A proportional reach to the goal (``reach`` only): the action's position part is
        10 × (goal − gripper), clipped to [-1, 1]; the gripper command 0."""
        if self._task != "reach":
            raise robot_mod.RobotError(f"fetch: no scripted policy for {self._task!r}")
        size = _OBS["reach"]

        def act(obs: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
            o = np.asarray(obs, np.float64)
            out = np.zeros(4, np.float32)
            out[:3] = np.clip(10.0 * (o[size:size + 3] - o[:3]), -1.0, 1.0)
            return out

        return act


def make(**options: Any) -> FetchArm:
    """Factory for ``make_robot("fetch", task=...)``."""
    return FetchArm(**options)


#: The ``user.robots`` entry point: gymnasium-robotics' Fetch reach and push.
FETCH = RobotType(make, tuple(ENVS))
