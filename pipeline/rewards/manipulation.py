"""Built-in rewards for the contact tasks ``push``, ``pick_place``, ``lift``, ``pick_place_air``.

They read the ``info`` arrays the manipulators send with every step — ``ee_pos``,
``cube_pos`` and ``goal_pos`` (float32 (3,), world frame, metres, the state after the
step's action) — and decide success with the task's rule from ``schemas.tasks``, the one
the robots' experts and the learner use too. Push and pick-place episodes end by truncation
(time limit), so ``terminated`` is all false, as for reach; a lift (gym-hil's pick-cube)
ends on success, as the suite's own episodes do.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.rewards._registry import Rewards, register
from schemas import tasks as rules
from schemas.transitions import TransitionBatch

_NEEDS = (rules.EE_POS, rules.CUBE_POS, rules.GOAL_POS)


def _info(batch: TransitionBatch, key: str) -> npt.NDArray[np.float64]:
    return np.asarray(batch.info[key], np.float64).reshape(len(batch), 3)


def _no_end(batch: TransitionBatch) -> npt.NDArray[np.bool_]:
    return np.zeros(len(batch), np.bool_)


@register("push_dense", "1", needs=_NEEDS)
def push_dense_v1(batch: TransitionBatch) -> Rewards:
    """Minus (hand-to-cube distance + 2 × cube-to-target distance in the table plane), in
    metres; success when the cube rests within 5 cm of the target."""
    ee, cube, goal = (_info(batch, k) for k in _NEEDS)
    reach = np.linalg.norm(cube - ee, axis=1)
    place = np.linalg.norm(goal[:, :2] - cube[:, :2], axis=1)
    success = rules.push_success({rules.CUBE_POS: cube, rules.GOAL_POS: goal})
    return Rewards(reward=-(reach + 2.0 * place), success=success, terminated=_no_end(batch))


#: push_dense@2: the push point lies this far behind the cube's centre, on the
#: target→cube line (half the cube + a finger's clearance), at the expert's push height.
_PUSH_BEHIND = rules.CUBE_HALF + 0.02
_PUSH_HEIGHT = rules.CUBE_HALF + 0.012


@register("push_dense", "2", needs=_NEEDS)
def push_dense_v2(batch: TransitionBatch) -> Rewards:
    """Shaped as the scripted expert pushes: minus the hand's distance to the push point
    (behind the cube, on the far side from the target, at the cube's mid-height), minus
    5 × the cube-to-target distance in the table plane, plus 1 while the push succeeds
    (cube on the table within 5 cm of the target). Unlike v1, a hand on the target's side
    of the cube is not rewarded for pushing it the wrong way."""
    ee, cube, goal = (_info(batch, k) for k in _NEEDS)
    to_goal = goal[:, :2] - cube[:, :2]
    place = np.linalg.norm(to_goal, axis=1)
    direction = to_goal / np.maximum(place, 1e-6)[:, None]
    push_point = np.column_stack([cube[:, :2] - _PUSH_BEHIND * direction,
                                  np.full(len(place), _PUSH_HEIGHT)])
    reach = np.linalg.norm(push_point - ee, axis=1)
    success = rules.push_success({rules.CUBE_POS: cube, rules.GOAL_POS: goal})
    return Rewards(reward=-(reach + 5.0 * place) + success, success=success,
                   terminated=_no_end(batch))


@register("push_sparse", "1", needs=_NEEDS)
def push_sparse_v1(batch: TransitionBatch) -> Rewards:
    """1 while the cube rests within 5 cm of the target, else 0."""
    success = rules.push_success({k: _info(batch, k) for k in _NEEDS})
    return Rewards(reward=success.astype(np.float32), success=success,
                   terminated=_no_end(batch))


@register("pick_place_dense", "1", needs=_NEEDS)
def pick_place_dense_v1(batch: TransitionBatch) -> Rewards:
    """Staged: minus the hand-to-cube distance, plus 1 while the cube is lifted (above
    2 cm) and minus its distance to a point 10 cm above the bin, plus 5 in the bin."""
    ee, cube, goal = (_info(batch, k) for k in _NEEDS)
    reach = np.linalg.norm(cube - ee, axis=1)
    lifted = cube[:, 2] > rules.CUBE_HALF + 0.02
    above_bin = goal + np.array([0.0, 0.0, 0.1])
    carry = np.linalg.norm(above_bin - cube, axis=1)
    success = rules.pick_place_success({rules.CUBE_POS: cube, rules.GOAL_POS: goal})
    reward = -reach + lifted * (1.0 - carry) + 5.0 * success
    return Rewards(reward=reward, success=success, terminated=_no_end(batch))


@register("pick_place_sparse", "1", needs=_NEEDS)
def pick_place_sparse_v1(batch: TransitionBatch) -> Rewards:
    """1 while the cube lies in the bin, else 0."""
    success = rules.pick_place_success({k: _info(batch, k) for k in _NEEDS})
    return Rewards(reward=success.astype(np.float32), success=success,
                   terminated=_no_end(batch))


def _lift_parts(batch: TransitionBatch) -> tuple[npt.NDArray[np.float64],
                                                 npt.NDArray[np.float64],
                                                 npt.NDArray[np.bool_]]:
    ee, cube, goal = (_info(batch, k) for k in _NEEDS)
    grasp = np.linalg.norm(cube - ee, axis=1)
    lift = np.clip((cube[:, 2] - (goal[:, 2] - rules.LIFT_HEIGHT)) / rules.LIFT_HEIGHT, 0.0, 1.0)
    success = rules.lift_success({rules.EE_POS: ee, rules.CUBE_POS: cube, rules.GOAL_POS: goal})
    return grasp, lift, success


@register("lift_dense", "1", needs=_NEEDS)
def lift_dense_v1(batch: TransitionBatch) -> Rewards:
    """gym-hil's dense PandaPickCube reward: 0.3 · exp(−20 · hand-to-cube distance) + 0.7 ·
    the cube's rise as a fraction of ``LIFT_HEIGHT`` (clipped to [0, 1]); the episode ends
    (``terminated``) on success, as the suite's does."""
    grasp, lift, success = _lift_parts(batch)
    return Rewards(reward=0.3 * np.exp(-20.0 * grasp) + 0.7 * lift, success=success,
                   terminated=success)


@register("lift_sparse", "1", needs=_NEEDS)
def lift_sparse_v1(batch: TransitionBatch) -> Rewards:
    """1 on the step the cube is lifted and held (``schemas.tasks.lift_success``), which ends
    the episode, else 0."""
    _, _, success = _lift_parts(batch)
    return Rewards(reward=success.astype(np.float32), success=success, terminated=success)


@register("pick_place_air_dense", "1", needs=_NEEDS)
def pick_place_air_dense_v1(batch: TransitionBatch) -> Rewards:
    """Minus (hand-to-cube distance + 2 × cube-to-goal distance in 3-D), in metres, plus 5
    on success (``schemas.tasks.pick_place_air_success``)."""
    ee, cube, goal = (_info(batch, k) for k in _NEEDS)
    success = rules.pick_place_air_success({rules.CUBE_POS: cube, rules.GOAL_POS: goal})
    reward = -(np.linalg.norm(cube - ee, axis=1) + 2.0 * np.linalg.norm(goal - cube, axis=1))
    return Rewards(reward=reward + 5.0 * success, success=success, terminated=_no_end(batch))


@register("pick_place_air_sparse", "1", needs=_NEEDS)
def pick_place_air_sparse_v1(batch: TransitionBatch) -> Rewards:
    """1 while the cube is within 7 cm of the goal point, else 0."""
    success = rules.pick_place_air_success({k: _info(batch, k) for k in _NEEDS})
    return Rewards(reward=success.astype(np.float32), success=success,
                   terminated=_no_end(batch))
