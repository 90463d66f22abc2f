"""Built-in rewards for the contact tasks ``push`` and ``pick_place`` (dense and sparse).

They read the ``info`` arrays the manipulators send with every step — ``ee_pos``,
``cube_pos`` and ``goal_pos`` (float32 (3,), world frame, metres, the state after the
step's action) — and decide success with the task's rule from ``schemas.tasks``, the one
the robots' experts and the learner use too. Episodes end by truncation (time limit), so
``terminated`` is all false, as for reach.
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
