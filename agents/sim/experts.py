"""Scripted experts for the manipulator tasks — the simulated human operators.

Each is a function of the observation alone (no hidden phase state, no access to the
simulator), so it drives any robot with the manipulator observation layout and the
Cartesian action space of ``agents.sim.manipulators`` — a real arm behind the same
driver included, and a policy can take over from it at any step::

    observation = [ee (3), ee_velocity (3), gripper_opening (1), task part...]
    action      = [dx, dy, dz, (droll, dpitch, dyaw,) gripper]   in [-1, 1]

``gripper_opening`` is 1 fully open, 0 fully closed; a gripper action of +1 closes,
-1 opens. A position action of 1 moves the end-effector target ``max_step_m``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from schemas import tasks as rules

__all__ = ["EE", "GRIP", "TASK", "VEL", "PickPlace", "Policy", "Push", "Reach"]

#: Where the manipulator observation keeps what (module docstring).
EE = slice(0, 3)
VEL = slice(3, 6)
GRIP = 6
TASK = 7

Policy = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]
Vec = npt.NDArray[np.float64]


class _Expert:
    def __init__(self, max_step_m: float, action_size: int = 4) -> None:
        self.max_step_m = max_step_m
        self.action_size = action_size

    def _act(self, ee: Vec, target: Vec, gripper: float, speed: float = 1.0
             ) -> npt.NDArray[np.float32]:
        move = np.clip((target - ee) / self.max_step_m, -speed, speed)
        action = np.zeros(self.action_size, np.float32)
        action[:3] = move
        action[-1] = gripper
        return action


class Reach(_Expert):
    """Straight to the goal with the gripper open."""

    def remaining(self, observation: npt.NDArray[np.floating]) -> float:
        """Metres still to go (0 once the task's success rule holds): how a watching
        person judges progress (``agents.takeover.ScriptedOperator``'s progress rule)."""
        obs = np.asarray(observation, np.float64)
        gap = float(np.linalg.norm(obs[TASK:TASK + 3] - obs[EE]))
        return 0.0 if gap < rules.REACH_RADIUS else gap

    def __call__(self, observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        obs = np.asarray(observation, np.float64)
        return self._act(obs[EE], obs[TASK:TASK + 3], -1.0)


class Push(_Expert):
    """Closed fingers as a paddle: hover behind the cube (on the far side from the
    target), go down to the cube's mid-height, push it along the cube→target line,
    correcting sideways drift; back off and realign when it drifts too far."""

    standoff = rules.CUBE_HALF + 0.035
    hover = 0.1

    def remaining(self, observation: npt.NDArray[np.floating]) -> float:
        """Metres still to go (0 once the task's success rule holds): the cube's distance
        to the target plus the fingers' distance to the pushing spot behind the cube —
        what a watching person sees shrink while the robot gets somewhere
        (``agents.takeover.ScriptedOperator``'s progress rule)."""
        obs = np.asarray(observation, np.float64)
        ee, cube, goal = obs[EE], obs[TASK:TASK + 3], obs[TASK + 3:TASK + 6]
        if bool(rules.push_success({rules.CUBE_POS: cube, rules.GOAL_POS: goal})):
            return 0.0
        to_goal = goal[:2] - cube[:2]
        dist = float(np.linalg.norm(to_goal))
        behind = cube[:2] - to_goal / max(dist, 1e-9) * self.standoff
        spot = np.array([*behind, rules.CUBE_HALF + 0.012])
        return dist + float(np.linalg.norm(ee - spot))

    def __call__(self, observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        obs = np.asarray(observation, np.float64)
        ee = obs[EE]
        cube, goal = obs[TASK:TASK + 3], obs[TASK + 3:TASK + 6]
        to_goal = goal[:2] - cube[:2]
        dist = float(np.linalg.norm(to_goal))
        if dist < 0.015:
            return self._act(ee, ee, 1.0)  # there: stop
        u = to_goal / dist
        rel = ee[:2] - cube[:2]
        along = float(rel @ u)
        lateral = float(np.linalg.norm(rel - along * u))
        # Push a little above the cube's middle: long fingers then clear the table.
        low = rules.CUBE_HALF + 0.012
        if along < -(rules.CUBE_HALF + 0.005) and lateral < 0.025 and ee[2] < low + 0.02:
            # Aligned behind the cube: push along the line, steering back onto it.
            aim = cube[:2] + u * min(dist, 0.04)
            back_on_line = along * u - rel
            target = np.array([*(aim + 2.0 * back_on_line), low])
            return self._act(ee, target, 1.0, speed=0.6)
        behind = cube[:2] - u * self.standoff
        if float(np.linalg.norm(ee[:2] - behind)) > 0.012:
            if ee[2] < self.hover - 0.02 and float(np.linalg.norm(rel)) < 0.1:
                return self._act(ee, np.array([ee[0], ee[1], self.hover]), 1.0)  # up first
            return self._act(ee, np.array([*behind, max(self.hover, low)]), 1.0)
        return self._act(ee, np.array([*behind, low]), 1.0)


class PickPlace(_Expert):
    """Hover over the cube with the gripper open, go down around it, close, lift, carry
    it over the bin and let go."""

    hover = 0.12
    carry = 0.17
    release = 0.12
    #: Below this opening the fingers have closed on the cube (a 5 cm cube leaves both
    #: grippers about 0.55–0.62 open).
    closed = 0.66
    #: The grasp point above the cube's centre (m).
    grasp_above = 0.01

    def remaining(self, observation: npt.NDArray[np.floating]) -> float:
        """Metres still to go (0 once the task's success rule holds), along the expert's
        own path: while the cube is away from the bin, the fingers' distance to the grasp
        point, the gripper still to close on it (its opening above ``closed``, at 0.1 m a
        unit), the height still to lift it to the carry height, and the cube's horizontal
        distance to the bin; over the bin, that distance and the cube's height above the
        bin's floor — so letting it drop in counts as progress, not a setback
        (``agents.takeover.ScriptedOperator``'s progress rule)."""
        obs = np.asarray(observation, np.float64)
        ee, grip = obs[EE], float(obs[GRIP])
        cube, goal = obs[TASK:TASK + 3], obs[TASK + 3:TASK + 6]
        if bool(rules.pick_place_success({rules.CUBE_POS: cube, rules.GOAL_POS: goal})):
            return 0.0
        across = float(np.linalg.norm(goal[:2] - cube[:2]))
        drop = max(0.0, cube[2] - goal[2])
        if across < 0.03:  # over the bin: only the fall is left
            return across + drop
        grasp = cube + np.array([0.0, 0.0, self.grasp_above])
        reach = float(np.linalg.norm(grasp - ee))
        close = 0.1 * max(0.0, grip - self.closed)
        lift = max(0.0, self.carry - cube[2])
        return reach + close + lift + across + (self.carry - goal[2])

    def __call__(self, observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        obs = np.asarray(observation, np.float64)
        ee, grip = obs[EE], float(obs[GRIP])
        cube, goal = obs[TASK:TASK + 3], obs[TASK + 3:TASK + 6]
        info = {rules.CUBE_POS: cube, rules.GOAL_POS: goal}
        if bool(rules.pick_place_success(info)):
            return self._act(ee, np.array([ee[0], ee[1], self.carry]), -1.0)  # let go, leave
        gap = cube - ee
        xy_err = float(np.linalg.norm(gap[:2]))
        # In the hand (a linkage gripper draws the cube up toward its palm as it closes).
        near = xy_err < 0.03 and -0.03 < gap[2] < 0.06
        if near and self.closed <= grip < 0.97:
            return self._act(ee, ee, 1.0)  # closing on it: keep closing, stay put
        if near and grip < self.closed:
            # Holding it: up, over the bin, let go.
            above_bin = np.array([goal[0], goal[1], self.carry])
            if float(np.linalg.norm(ee[:2] - goal[:2])) < 0.015:
                if ee[2] > self.release + 0.01:
                    return self._act(ee, np.array([goal[0], goal[1], self.release]), 1.0)
                return self._act(ee, ee, -1.0)  # low over the bin: let go
            if ee[2] < self.carry - 0.03:
                return self._act(ee, np.array([ee[0], ee[1], self.carry]), 1.0)
            return self._act(ee, above_bin, 1.0)
        # Grasp the cube's upper half: long fingers then stay clear of the table.
        grasp = cube + np.array([0.0, 0.0, self.grasp_above])
        # Low enough: at the grasp height, or as low as the fingers go (they stopped).
        low = abs(grasp[2] - ee[2]) < 0.006 or (gap[2] > -0.02 and abs(obs[VEL][2]) < 0.03)
        if xy_err < 0.015 and low:
            return self._act(ee, grasp, 1.0)  # around the cube: close
        if xy_err > 0.01:
            if ee[2] < self.hover - 0.03 and xy_err > 0.02:
                return self._act(ee, np.array([ee[0], ee[1], self.hover]), -1.0)  # up first
            z = max(ee[2], self.hover) if xy_err > 0.02 else ee[2]
            return self._act(ee, np.array([cube[0], cube[1], z]), -1.0)
        return self._act(ee, grasp, -1.0, speed=0.7)  # straight down, fingers open
