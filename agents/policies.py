"""Policies that need no learner: random and scripted, for demos, tests and warm-up.

A policy here is any callable ``observation -> action``; learned policies arrive later
through ``learners.policies``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from agents import safety
from schemas import spaces

__all__ = ["PolicyFn", "RandomPolicy", "scripted"]

#: observation -> action, shaped as the robot's spec says.
PolicyFn = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]


class RandomPolicy:
    """Uniform random actions within the spec's bounds (±1 where a bound is missing)."""

    def __init__(self, action: spaces.ArraySpec, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._low = np.broadcast_to(
            np.asarray(-1.0 if action.low is None else action.low), action.shape
        )
        self._high = np.broadcast_to(
            np.asarray(1.0 if action.high is None else action.high), action.shape
        )

    def __call__(self, observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        return self._rng.uniform(self._low, self._high).astype(np.float32)


def scripted(robot: robot_mod.Robot) -> PolicyFn:
    """The robot type's scripted policy (the simulated arms: Jacobian reach).

    Raises ``RobotError`` when the robot's driver offers none.
    """
    inner = robot.inner if isinstance(robot, safety.Guarded) else robot
    make = getattr(inner, "scripted_policy", None)
    if make is None:
        raise robot_mod.RobotError(
            f"robot type {robot.spec.robot_type!r} has no scripted policy; use a random one"
        )
    policy: PolicyFn = make()
    return policy
