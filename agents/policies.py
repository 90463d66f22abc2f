"""Policies that need no learner: random and scripted, for demos, tests and warm-up.

A policy here is any callable ``observation -> action``; learned policies arrive later
through ``learners.policies``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from agents import safety
from agents.chunking import Execution
from schemas import spaces

__all__ = ["FramesPolicy", "NoActionDue", "PolicyFn", "RandomPolicy", "propose", "scripted"]

#: observation -> action, shaped as the robot's spec says.
PolicyFn = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]


class NoActionDue(Exception):
    """Raised by a policy that has no action for this control period (a remote policy
    whose reply has not come): the worker holds the robot and records nothing."""


#: camera name -> (h, w, 3) uint8 frame of one step.
Frames = Mapping[str, npt.NDArray[np.uint8]]


class FramesPolicy:
    """A per-step policy that reads the step's camera frames too (a learned pixel policy,
    ``cnn_gaussian``); called with the observation alone it has no frames to read and
    raises ``ValueError``."""

    def __init__(self, act: Callable[[npt.NDArray[np.floating], Frames | None],
                                     npt.NDArray[np.float32]]) -> None:
        self._act = act

    def __call__(self, observation: npt.NDArray[np.floating],
                 images: Frames | None = None) -> npt.NDArray[np.float32]:
        return self._act(observation, images)


class ChunkPolicy:
    """A policy that plans action chunks (``flow_matching``): ``chunk(observation,
    images)`` is (H, action_dim); the worker runs them through a per-robot
    :class:`agents.chunking.ChunkExecutor` as ``execution`` says.  Called as a plain
    policy it returns each chunk's first action."""

    def __init__(self, chunk: Callable[[npt.NDArray[np.floating], Frames | None],
                                       npt.NDArray[np.float32]],
                 execution: Execution) -> None:
        self.chunk = chunk
        self.execution = execution

    def __call__(self, observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        first: npt.NDArray[np.float32] = self.chunk(observation, None)[0]
        return first


def propose(policy: PolicyFn, observation: npt.NDArray[np.floating],
            images: Frames) -> npt.NDArray[np.float32]:
    """``policy``'s action for one step; a :class:`FramesPolicy` gets the step's frames."""
    if isinstance(policy, FramesPolicy):
        return policy(observation, images)
    return policy(observation)


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
