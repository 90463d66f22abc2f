"""The task contract between robots and reward jobs: ``info`` names and success rules.

A task (``reach``, ``push``, ``pick_place``; for the third-party suites ``lift``, gym-hil's
pick-cube, and ``pick_place_air``, Meta-World's pick-place) is what an experiment's ``task``
field names.
Robots set up for it send these ``info`` arrays with every step (float32, world frame,
metres; the state *after* the step's action); reward jobs, the learner's success count
and the robots' own scripted experts read the same arrays and decide success with the
same rule, from this one module (STYLE §16).

Every rule is vectorised: it takes ``info`` arrays of shape (n, 3) (or (3,) for one step)
and returns a bool array of shape (n,) (or a bool scalar array).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

__all__ = [
    "BIN_HALF_INNER",
    "BIN_WALL_HEIGHT",
    "BUILTIN_TASKS",
    "CUBE_HALF",
    "CUBE_POS",
    "EE_POS",
    "GOAL_POS",
    "INFO_KEYS",
    "LIFT_GRASP_RADIUS",
    "LIFT_HEIGHT",
    "PLACE_AIR_RADIUS",
    "PUSH_RADIUS",
    "REACH_RADIUS",
    "SUCCESS_RULES",
    "lift_success",
    "pick_place_air_success",
    "pick_place_success",
    "push_success",
    "reach_success",
]

Info = Mapping[str, npt.NDArray[np.floating]]
BoolArray = npt.NDArray[np.bool_]

#: End-effector (tool centre point) position.
EE_POS = "ee_pos"
#: reach: the point to reach; push: the cube's target on the table; pick_place: the bin's
#: centre on the table.
GOAL_POS = "goal_pos"
#: The cube's centre.
CUBE_POS = "cube_pos"

#: A reach succeeds with the end effector within this distance of the goal (m).
REACH_RADIUS = 0.05
#: A push succeeds with the cube's centre within this distance of the target, in the
#: table plane (m).
PUSH_RADIUS = 0.05
#: Half the cube's edge (m); the table top is at z = 0.
CUBE_HALF = 0.025
#: Half the bin's inner width (m) and its wall height above the table (m).
BIN_HALF_INNER = 0.08
BIN_WALL_HEIGHT = 0.07
#: lift: the cube must rise this far above where it started (m), held within
#: ``LIFT_GRASP_RADIUS`` of the end effector (m) — gym-hil's PandaPickCube rule.
LIFT_HEIGHT = 0.1
LIFT_GRASP_RADIUS = 0.05
#: pick_place_air: the cube's centre within this distance of a goal point that may be in
#: the air (m) — Meta-World's pick-place-v3 rule.
PLACE_AIR_RADIUS = 0.07

#: The ``info`` arrays each built-in task sends.
INFO_KEYS: dict[str, tuple[str, ...]] = {
    "reach": (EE_POS, GOAL_POS),
    "push": (EE_POS, CUBE_POS, GOAL_POS),
    "pick_place": (EE_POS, CUBE_POS, GOAL_POS),
    # goal_pos: the cube's start raised by LIFT_HEIGHT.
    "lift": (EE_POS, CUBE_POS, GOAL_POS),
    "pick_place_air": (EE_POS, CUBE_POS, GOAL_POS),
}
BUILTIN_TASKS = tuple(INFO_KEYS)


def _rows(a: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    return np.asarray(a, dtype=np.float64)


def reach_success(info: Info) -> BoolArray:
    """The end effector is within ``REACH_RADIUS`` of the goal."""
    gap = _rows(info[GOAL_POS]) - _rows(info[EE_POS])
    out: BoolArray = np.linalg.norm(gap, axis=-1) < REACH_RADIUS
    return out


def push_success(info: Info) -> BoolArray:
    """The cube's centre is within ``PUSH_RADIUS`` of the target in the table plane and
    the cube is still on the table (not lifted, not fallen off)."""
    cube, goal = _rows(info[CUBE_POS]), _rows(info[GOAL_POS])
    near = np.linalg.norm(goal[..., :2] - cube[..., :2], axis=-1) < PUSH_RADIUS
    out: BoolArray = near & (np.abs(cube[..., 2] - CUBE_HALF) < 0.01)
    return out


def pick_place_success(info: Info) -> BoolArray:
    """The cube lies inside the bin: its centre within the bin's inner walls and below
    their rim."""
    cube, goal = _rows(info[CUBE_POS]), _rows(info[GOAL_POS])
    inside = np.all(np.abs(cube[..., :2] - goal[..., :2]) < BIN_HALF_INNER - CUBE_HALF,
                    axis=-1)
    out: BoolArray = inside & (cube[..., 2] < BIN_WALL_HEIGHT)
    return out


def lift_success(info: Info) -> BoolArray:
    """The cube is above ``goal_pos`` (its start raised by ``LIFT_HEIGHT``) and within
    ``LIFT_GRASP_RADIUS`` of the end effector (gym-hil's ``PandaPickCube`` success)."""
    cube, goal, ee = _rows(info[CUBE_POS]), _rows(info[GOAL_POS]), _rows(info[EE_POS])
    held = np.linalg.norm(cube - ee, axis=-1) < LIFT_GRASP_RADIUS
    out: BoolArray = held & (cube[..., 2] > goal[..., 2])
    return out


def pick_place_air_success(info: Info) -> BoolArray:
    """The cube's centre is within ``PLACE_AIR_RADIUS`` of the goal point, in 3-D (Meta-World's
    pick-place, whose goal may be above the table)."""
    gap = _rows(info[GOAL_POS]) - _rows(info[CUBE_POS])
    out: BoolArray = np.linalg.norm(gap, axis=-1) < PLACE_AIR_RADIUS
    return out


#: Task name -> its success rule.
SUCCESS_RULES: dict[str, Callable[[Info], BoolArray]] = {
    "reach": reach_success,
    "push": push_success,
    "pick_place": pick_place_success,
    "lift": lift_success,
    "pick_place_air": pick_place_air_success,
}
