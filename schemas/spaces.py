"""What a robot observes and accepts: array, camera and robot specs.

A robot announces these on the ``robots`` topic; consumers check every transition
against them (shape, dtype, bounds), and learners size their networks from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Numeric dtypes a robot may use for observations and actions.
DType = Literal["float32", "float64", "int32", "int64", "uint8"]


class ArraySpec(BaseModel):
    """A fixed-shape numeric array with optional element-wise bounds.

    ``low``/``high`` are either one number for every element, a flat list with one
    number per element, or ``None`` for unbounded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, ...] = Field(description="array shape, e.g. (32,)")
    dtype: DType = "float32"
    low: float | tuple[float, ...] | None = None
    high: float | tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _bounds_fit(self) -> ArraySpec:
        if any(d <= 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a non-positive dimension")
        for name in ("low", "high"):
            bound = getattr(self, name)
            if isinstance(bound, tuple) and len(bound) != self.size:
                raise ValueError(
                    f"{name} has {len(bound)} values but the shape {self.shape} "
                    f"has {self.size} elements"
                )
        return self

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class CameraSpec(BaseModel):
    """An RGB camera: images are ``uint8`` arrays of shape (height, width, 3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


class RobotSpec(BaseModel):
    """Everything a consumer needs to know about a robot's data.

    The hardware-abstraction layer (``agents/``) produces it from a robot; the events
    that announce a robot carry it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    robot_type: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="registered type name")
    observation: ArraySpec
    action: ArraySpec
    cameras: tuple[CameraSpec, ...] = ()
    info: dict[str, ArraySpec] = Field(
        default_factory=dict,
        description="privileged task state in each step's `info` (e.g. end-effector and "
        "goal positions) that reward jobs read; float arrays",
    )
    control_hz: float = Field(20.0, gt=0, description="control rate in steps per second")
    max_episode_steps: int = Field(100, gt=0)
    task: str = Field(
        "reach", pattern=r"^[a-z][a-z0-9_-]*$",
        description="the task the robot is set up for (its scene, resets and success rule); "
        "the scheduler leases it only to experiments with this task",
    )
