"""LeRobot's HIL-SERL simulation (``gym-hil``) behind the robot interface (issue 11 §4).

``gym_hil/PandaPickCubeBase-v0``: a Franka Panda with a Robotiq 2F-85 picks a cube up —
the task LeRobot's HIL-SERL users run in simulation — as USER's task ``lift``. The action is
USER's end-effector space ``[dx, dy, dz, gripper]`` in [-1, 1]: the position part moves the
suite's operational-space target by up to ``STEP_M`` (2.5 cm, LeRobot's
``EEActionWrapper`` default) per step, orientation held; the gripper part is the suite's
grasp command (+1 closes, -1 opens; the finger target moves by it, clipped to [0, 1]).
Each step is the suite's own 20 ms of simulated time (10 physics steps of 2 ms), paced by
the agent at ``control_hz`` (default 20); an episode is 100 steps, or ends (``terminated``)
when the cube is lifted and held, or leaves the table's sampling area. The cube starts
anywhere in the suite's sampling area (``random_block=True``, the suite's
``random_block_position``; off, it always starts under the gripper's home).

The observation is the suite's ``agent_pos`` (joint positions 7, joint velocities 7,
gripper command 1 — 0 open … 255 closed —, pinch point 3) followed by
``environment_state`` (the cube, 3): 21 float32. ``info``: ``ee_pos`` (the pinch point),
``cube_pos`` and ``goal_pos`` (the cube's start raised by ``schemas.tasks.LIFT_HEIGHT``),
so ``schemas.tasks.lift_success`` is the suite's own success rule and the ``lift_dense`` and
``lift_sparse`` reward jobs score it.

gym-hil wants ``mujoco < 3.9`` and USER runs 4.0.0, so it runs in the suites' virtualenv
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

__all__ = ["ENVS", "PANDA_PICK_CUBE", "GymHilPanda", "make"]

#: USER task -> gym-hil environment id.
ENVS = {"lift": "gym_hil/PandaPickCubeBase-v0"}
#: End-effector motion per step at action 1 (m).
STEP_M = 0.025
CONTROL_HZ = 20.0
MAX_EPISODE_STEPS = 100
_AGENT, _CUBE = 18, 3
_PINCH = slice(15, 18)
_GRIP = 14
#: The gripper actuator's command at fully closed (the observation's gripper value).
GRIPPER_MAX = 255.0


class GymHilPanda(suites.SuiteRobot):
    """gym-hil's Panda pick-cube environment as a USER robot."""

    def __init__(self, task: str = "lift", seed: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, python: str | None = None,
                 control_hz: float = CONTROL_HZ, random_block: bool = True) -> None:
        if task not in ENVS:
            raise robot_mod.RobotError(f"gym_hil: no task {task!r}; it can do "
                                       f"{', '.join(ENVS)}")
        python = suites.suite_python(python)
        if python is None:
            raise robot_mod.RobotError(
                "gym_hil: the gym-hil suite is not installed: run `make suites` or set "
                "USER_SUITES_PYTHON to the python of a venv with 'gym-hil' (mujoco < 3.9)")
        spec = suites.ee_spec("gym_hil_panda", _AGENT + _CUBE, task, rules.INFO_KEYS[task],
                              control_hz, max_episode_steps)
        env = suites.ChildEnv("gym_hil", python, "gymnasium", ENVS[task], seed,
                              max_episode_steps, {"random_block_position": bool(random_block)})
        super().__init__("gym_hil", env, spec, seed)
        self._goal = np.zeros(3, np.float32)

    def _step(self, reply: suites.Reply, *, terminated: bool = False,
              truncated: bool = False) -> robot_mod.Step:
        obs = reply.obs
        assert isinstance(obs, dict)
        agent, cube = obs["agent_pos"], obs["environment_state"]
        self._obs = np.concatenate([agent, cube]).astype(np.float32)
        self._info = {rules.EE_POS: agent[_PINCH].astype(np.float32),
                      rules.CUBE_POS: cube.astype(np.float32), rules.GOAL_POS: self._goal.copy()}
        return robot_mod.Step(self._obs.copy(), dict(self._info), self._index,
                              terminated=terminated, truncated=truncated)

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        reply = self._live().reset(seed=self._draw(seed))
        assert isinstance(reply.obs, dict)
        self._goal = (reply.obs["environment_state"]
                      + np.array([0.0, 0.0, rules.LIFT_HEIGHT])).astype(np.float32)
        self._index, self._done = 0, False
        return self._step(reply)

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        a = np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0)
        suite_action = np.zeros(7)
        suite_action[:3] = a[:3] * STEP_M
        suite_action[6] = a[3]
        reply = self._step_child(suite_action)
        truncated = (reply.truncated or self._index >= self._spec.max_episode_steps) \
            and not reply.terminated
        self._done = reply.terminated or truncated
        return self._step(reply, terminated=reply.terminated, truncated=truncated)

    def hold(self) -> robot_mod.Step:
        # No end-effector motion and no change to the grasp.
        return self._last() if self._done else self.step(np.zeros(4))

    def scripted_policy(self) -> Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]:
        """Hover over the cube, descend open, close, lift (a proportional controller on the
        pinch point; reads only the observation)."""

        def act(obs: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
            o = np.asarray(obs, np.float64)
            pinch, cube = o[_PINCH], o[_AGENT:]
            closed = o[_GRIP] / GRIPPER_MAX             # 0 open … 1 closed
            out = np.zeros(4, np.float32)
            gap = cube - pinch
            if np.linalg.norm(gap) > 0.012:
                # Open, over the cube first, then down onto it.
                above = np.linalg.norm(gap[:2]) > 0.01 and gap[2] < -0.03
                target = cube + np.array([0.0, 0.0, 0.06]) if above else cube
                out[3] = -1.0
            else:
                # Close; once the fingers hold it, lift.
                target = cube + np.array([0.0, 0.0, 0.2]) if closed > 0.6 else pinch
                out[3] = 1.0
            out[:3] = np.clip((target - pinch) / STEP_M, -1.0, 1.0)
            return out

        return act


def make(**options: Any) -> GymHilPanda:
    """Factory for ``make_robot("gym_hil_panda", task="lift")``."""
    return GymHilPanda(**options)


#: The ``user.robots`` entry point: gym-hil's Panda pick-cube as task ``lift``.
PANDA_PICK_CUBE = RobotType(make, tuple(ENVS))
