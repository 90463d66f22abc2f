"""The safety layer every agent drives its robot through.

``Guarded`` wraps any ``Robot`` and enforces, independently of the driver and the policy:

* actions are finite and of the spec's shape — anything else holds the robot for that
  period and is counted, never passed on;
* actions are clipped to ``spec.action`` bounds (counted too);
* a latched emergency stop: after ``estop()`` every ``step`` holds the robot instead of
  moving it, and ``reset`` is refused until a person calls ``release()``.

Joint limits are the driver's: the simulated arms clamp their position targets to the
joint ranges in their MJCF, as a real controller clamps to its soft limits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from schemas import spaces

__all__ = ["Guarded", "clip_action"]


def clip_action(spec: spaces.ArraySpec, action: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``action`` as float32 in ``spec``'s shape, clipped to its bounds.

    Raises ``RobotError`` when the shape differs or a value is not finite.
    """
    a = np.asarray(action, dtype=np.float32)
    if a.shape != tuple(spec.shape):
        raise robot_mod.RobotError(
            f"action has shape {a.shape} but the robot takes {tuple(spec.shape)}"
        )
    if not np.all(np.isfinite(a)):
        raise robot_mod.RobotError(f"action has non-finite values: {a.tolist()}")
    low = -np.inf if spec.low is None else np.asarray(spec.low, dtype=np.float32)
    high = np.inf if spec.high is None else np.asarray(spec.high, dtype=np.float32)
    return np.clip(a, low, high).astype(np.float32, copy=False)


class Guarded(robot_mod.Robot):
    """``robot`` behind action checks, clipping and a latched e-stop (module docstring)."""

    def __init__(self, robot: robot_mod.Robot) -> None:
        self._robot = robot
        self._spec = robot.spec
        self._estopped = False
        #: Actions that had to be clipped to the bounds.
        self.clipped_actions = 0
        #: Actions refused (wrong shape, NaN, inf); the robot held instead.
        self.rejected_actions = 0
        #: The last rejection's reason, for the agent's log.
        self.last_rejection: str | None = None

    @property
    def spec(self) -> spaces.RobotSpec:
        return self._spec

    @property
    def inner(self) -> robot_mod.Robot:
        """The wrapped driver (for driver-specific tools such as scripted policies)."""
        return self._robot

    @property
    def estopped(self) -> bool:
        """The e-stop is latched: the robot holds until ``release()``."""
        return self._estopped

    def estop(self) -> robot_mod.Step:
        """Latch the e-stop and hold the robot now. Idempotent."""
        self._estopped = True
        return self._robot.hold()

    def release(self) -> None:
        """Unlatch the e-stop; the next episode must start with ``reset``."""
        self._estopped = False

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        if self._estopped:
            raise robot_mod.RobotError(
                f"{self._spec.robot_type}: e-stop is engaged; call release() before reset()"
            )
        return self._robot.reset(seed)

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        if self._estopped:
            return self._robot.hold()
        try:
            safe = clip_action(self._spec.action, action)
        except robot_mod.RobotError as exc:
            self.rejected_actions += 1
            self.last_rejection = str(exc)
            return self._robot.hold()
        if not np.array_equal(safe, np.asarray(action, dtype=np.float32)):
            self.clipped_actions += 1
        return self._robot.step(safe)

    def hold(self) -> robot_mod.Step:
        return self._robot.hold()

    def close(self) -> None:
        self._robot.close()
