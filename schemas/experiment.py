"""The experiment spec: what a researcher submits (``userctl experiments submit FILE.yaml``).

One frozen pydantic model, validated with field-level errors, shared by the controller
(which places the resource requests), the learner (algorithm, policy, buffer, weight
sync, stop conditions) and the reward jobs.  On the wire it travels as the JSON ``spec``
of an ``ExperimentSubmittedV1`` event.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", max_length=128)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RobotRequest(_Frozen):
    """``count`` robots of one type, at any of ``sites`` (every site when empty)."""

    robot_type: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="registered robot type")
    count: int = Field(1, ge=1, le=10_000, description="how many robots of this type")
    sites: tuple[Name, ...] = Field((), description="allowed sites; empty means any site")


class LearnerRequest(_Frozen):
    """The compute the experiment's learner needs."""

    slots: int = Field(1, ge=0, le=64, description="learner slots (processes) to reserve")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="where to train")


class AlgorithmSpec(_Frozen):
    name: Literal["sac", "rlpd"] = Field("sac", description="learning algorithm")
    hyperparameters: dict[str, JsonValue] = Field(
        default_factory=dict, description="overrides of the algorithm's config fields"
    )
    utd_ratio: float = Field(1.0, gt=0, le=64, description="gradient updates per new env step")
    batch_size: int = Field(256, ge=1, le=65_536)
    warmup_steps: int = Field(1000, ge=0, description="env steps collected before learning")
    seed: int = 0


class PolicySpec(_Frozen):
    kind: str = Field("mlp_gaussian", description="registered policy kind")
    hidden: tuple[int, ...] = Field((256, 256), description="hidden layer widths")


class BufferSpec(_Frozen):
    memory_budget_mb: int = Field(1024, ge=1, description="hot in-memory buffer budget")
    prior_experiments: tuple[Name, ...] = Field(
        (), description="earlier experiments whose history warm-starts this one (RLPD prior)"
    )
    prior_ratio: float = Field(
        0.5, ge=0, le=1, description="fraction of each batch from prior data"
    )


class WeightSyncSpec(_Frozen):
    every_updates: int = Field(200, ge=1, description="publish after this many updates…")
    every_s: float = Field(5.0, gt=0, description="…or this many seconds, whichever first")
    bandwidth_mb_s: float = Field(50.0, gt=0, description="cap on publishing bandwidth")
    chunk_bytes: int = Field(1 << 20, ge=1024, le=8 << 20, description="weights chunk size")


class StopSpec(_Frozen):
    target_success: float = Field(0.8, ge=0, le=1, description="stop at this success rate…")
    success_window: int = Field(50, ge=1, description="…over the last N episodes")
    max_env_steps: int | None = Field(None, ge=1, description="stop after this many env steps")
    max_wall_s: float | None = Field(None, gt=0, description="stop after this long")
    target_robot_types: tuple[str, ...] = Field(
        (), description="robot types that must reach the target (empty: every type)"
    )


class ExperimentSpec(_Frozen):
    """One learning run: task, robots requested, algorithm, policy, reward and limits."""

    name: Name = Field(description="experiment id; unique per fleet")
    task: str = Field("reach", pattern=r"^[a-z][a-z0-9_-]*$", description="task the robots run")
    robots: tuple[RobotRequest, ...] = Field(min_length=1, description="robots requested")
    learner: LearnerRequest = Field(default_factory=LearnerRequest)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    reward: str = Field(
        "reach_dense@1",
        pattern=r"^[a-z][a-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9._+-]*$",
        description="reward function name@version",
    )
    buffer: BufferSpec = Field(default_factory=BufferSpec)
    weight_sync: WeightSyncSpec = Field(default_factory=WeightSyncSpec)
    stop: StopSpec = Field(default_factory=StopSpec)

    @model_validator(mode="after")
    def _robot_types_once(self) -> ExperimentSpec:
        types = [(r.robot_type, r.sites) for r in self.robots]
        if len(types) != len(set(types)):
            raise ValueError("robots: the same robot type and sites are requested twice; "
                             "merge them into one entry with a larger count")
        return self

    @property
    def robot_count(self) -> int:
        return sum(r.count for r in self.robots)
