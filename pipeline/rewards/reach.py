"""Built-in reach rewards: how far the end effector is from the goal.

Both read the ``info`` arrays ``ee_pos`` and ``goal_pos`` (float32 (3,), world frame,
metres) that the reach robots send with every step, and score each step by where its
action took the end effector (``info`` is the state after the action).  A reach never
ends early: ``terminated`` is all false and episodes end by truncation (time limit).

This module is also the template for a plug-in: one function per version, one
``@rewards.register`` line each.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.rewards._registry import Rewards, register
from schemas.transitions import TransitionBatch

#: ``info`` names the reach robots send (agents/sim/arm.py documents them).
EE_POS = "ee_pos"
GOAL_POS = "goal_pos"
#: A goal within this distance (metres) counts as reached, as the simulated arms define it.
SUCCESS_RADIUS = 0.05


def distance(batch: TransitionBatch) -> npt.NDArray[np.float32]:
    """(n,) Euclidean distance from end effector to goal, metres."""
    gap = batch.info[GOAL_POS] - batch.info[EE_POS]
    out: npt.NDArray[np.float32] = np.linalg.norm(gap.reshape(len(batch), -1), axis=1
                                                  ).astype(np.float32)
    return out


@register("reach_dense", "1", needs=(EE_POS, GOAL_POS))
def reach_dense_v1(batch: TransitionBatch) -> Rewards:
    """Minus the end-effector-to-goal distance in metres; success within 5 cm."""
    d = distance(batch)
    return Rewards(reward=-d, success=d < SUCCESS_RADIUS,
                   terminated=np.zeros(len(batch), np.bool_))


@register("reach_sparse", "1", needs=(EE_POS, GOAL_POS))
def reach_sparse_v1(batch: TransitionBatch) -> Rewards:
    """1 while the end effector is within 5 cm of the goal, else 0."""
    success = distance(batch) < SUCCESS_RADIUS
    return Rewards(reward=success.astype(np.float32), success=success,
                   terminated=np.zeros(len(batch), np.bool_))
