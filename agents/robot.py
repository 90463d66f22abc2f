"""The robot interface: what a real driver and a simulation both implement.

A robot is a hardware resource. It describes itself (``spec``), starts an episode
(``reset``), applies one action per control period (``step``) and, on an emergency stop,
stops moving and holds its configuration (``hold``). Everything else — clipping to
limits, the e-stop latch, pacing to the control rate, probing at start — is built on
these four methods in ``agents.safety``, ``agents.pacing`` and ``agents.validation``.

Usage::

    robot = registry.make_robot("reacher2d", seed=0)   # validated and guarded
    step = robot.reset(seed=7)
    pacer = pacing.Pacer(robot.spec.control_hz)
    while not step.done:
        action = policy(step.observation)
        step = robot.step(action)          # observation, info, images, flags
        pacer.wait()                       # real time; counts missed deadlines
    robot.close()
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from schemas import spaces

__all__ = ["Robot", "RobotError", "Step"]


class RobotError(RuntimeError):
    """A robot cannot be used as asked; the message is one line a person can act on."""


@dataclasses.dataclass(frozen=True)
class Step:
    """What a robot reports after ``reset`` or one ``step``.

    ``observation`` matches ``spec.observation``; ``info`` has exactly the keys and shapes of
    ``spec.info`` (privileged task state such as end-effector and goal positions, read by
    reward jobs, never by the policy); ``images`` has one ``uint8`` (H, W, 3) array per
    camera in ``spec.cameras`` (empty when the robot was built without cameras).
    ``terminated`` means the task reached a terminal state; ``truncated`` means the episode
    hit ``spec.max_episode_steps``. ``index`` is the step's position in its episode
    (0 for the observation returned by ``reset``).

    ``unstable`` (a one-line reason, '' when all is well) says the simulation broke during
    this step — a physics-instability warning, a non-finite state: the episode ends here,
    ``truncated``, and ``observation``/``info``/``images`` repeat the last valid state
    (the broken one is not data).  A simulator never resets itself mid-episode instead.
    """

    observation: npt.NDArray[np.float32]
    info: Mapping[str, npt.NDArray[np.float32]]
    index: int
    images: Mapping[str, npt.NDArray[np.uint8]] = dataclasses.field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False
    unstable: str = ""

    @property
    def done(self) -> bool:
        """The episode is over: the next call must be ``reset``."""
        return self.terminated or self.truncated


class Robot(abc.ABC):
    """One robot, real or simulated. See the module docstring for the control loop.

    Implementations need not be thread-safe; one agent thread owns a robot.
    """

    @property
    @abc.abstractmethod
    def spec(self) -> spaces.RobotSpec:
        """The robot's announced spec; constant for the robot's lifetime."""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> Step:
        """Start a new episode (new goal, start configuration) and return its first step.

        The same ``seed`` gives the same episode. ``None`` draws from the robot's own
        random stream. Raises ``RobotError`` when the robot cannot start an episode.
        """

    @abc.abstractmethod
    def step(self, action: npt.NDArray[np.floating]) -> Step:
        """Apply ``action`` (shape ``spec.action.shape``) for one control period.

        Returns as soon as the action is applied and the state is read — pacing to the
        control rate is the caller's (``agents.pacing``). Out-of-range values are clipped
        to ``spec.action`` bounds. Raises ``RobotError`` after the episode is done.
        """

    @abc.abstractmethod
    def hold(self) -> Step:
        """Stop all motion and hold the current configuration for one control period.

        This is the emergency stop's effect: it ignores any goal, must work in every
        state, including after the episode is done, and never raises for task reasons.
        During an episode the period counts toward it (time passes while held).
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most robots hold nothing
        """Release what the robot holds (renderers, device handles). Idempotent."""
