"""The safety layer every agent drives its robot through.

``Guarded`` wraps any ``Robot`` and enforces, independently of the driver and the policy:

* actions are finite and of the spec's shape — anything else holds the robot for that
  period and is counted, never passed on;
* actions are clipped to ``spec.action`` bounds (counted too);
* a latched emergency stop: after ``estop()`` every ``step`` holds the robot instead of
  moving it, and ``reset`` is refused until a person calls ``release()``;
* workspace limits for Cartesian arms: a robot with a ``workspace`` attribute (a
  ``Workspace``) has the position part of each action scaled back so the end effector's
  commanded target stays inside the box (counted in ``workspace_clips``).

Joint limits are the driver's: the simulated arms clamp their position targets to the
joint ranges in their MJCF, as a real controller clamps to its soft limits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from schemas import spaces

__all__ = ["Guarded", "Workspace", "clip_action"]


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Where a Cartesian arm's end effector may be commanded (world frame, metres).

    The robot's action starts with a position delta ``[dx, dy, dz]`` that moves the
    end-effector target by ``step_m`` metres per unit; ``info[ee_info]`` is the end
    effector's position after each step.
    """

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    step_m: float
    ee_info: str = "ee_pos"

    def limit(self, action: npt.NDArray[np.float32], ee: npt.ArrayLike
              ) -> npt.NDArray[np.float32]:
        """``action`` with its position part cut so ``ee + delta`` stays in the box."""
        pos = np.asarray(ee, dtype=np.float64)
        lo = (np.asarray(self.low) - pos) / self.step_m
        hi = (np.asarray(self.high) - pos) / self.step_m
        out = action.copy()
        # Outside the box already (a push, a drift): only moves back toward it are allowed.
        out[:3] = np.clip(out[:3], np.minimum(lo, 0.0), np.maximum(hi, 0.0))
        return out


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
        #: The end-effector box of a Cartesian arm (``None``: a joint-space robot).
        self.workspace: Workspace | None = getattr(robot, "workspace", None)
        #: Actions whose position part was cut to keep the end effector in the workspace.
        self.workspace_clips = 0
        self._ee: npt.NDArray[np.float32] | None = None

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
        return self._seen(self._robot.hold())

    def release(self) -> None:
        """Unlatch the e-stop; the next episode must start with ``reset``."""
        self._estopped = False

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        if self._estopped:
            raise robot_mod.RobotError(
                f"{self._spec.robot_type}: e-stop is engaged; call release() before reset()"
            )
        return self._seen(self._robot.reset(seed))

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
        if self.workspace is not None and self._ee is not None:
            inside = self.workspace.limit(safe, self._ee)
            if not np.array_equal(inside, safe):
                self.workspace_clips += 1
            safe = inside
        return self._seen(self._robot.step(safe))

    def hold(self) -> robot_mod.Step:
        return self._seen(self._robot.hold())

    def _seen(self, step: robot_mod.Step) -> robot_mod.Step:
        if self.workspace is not None:
            self._ee = step.info.get(self.workspace.ee_info)
        return step

    def close(self) -> None:
        self._robot.close()
