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
    instruction: str = Field(
        "", max_length=1000, description="the task in words these robots run with a "
        "language-conditioned policy (handed to them with their lease; empty: the agent's "
        "own, else the policy's default)")


class LearnerRequest(_Frozen):
    """The compute the experiment's learner needs."""

    slots: int = Field(1, ge=0, le=64, description="learner slots (processes) to reserve")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="where to train")
    gpus: int | None = Field(
        None, ge=0, le=16, description="place the learner(s) on a compute host with this many "
        "free GPUs each (0: any host); None: not placed, run `userctl learn` yourself")


class InferenceRequest(_Frozen):
    """Remote inference: replicas of the policy served from compute hosts (issue 14)."""

    replicas: int = Field(0, ge=0, le=64, description="inference replicas to place; 0: the "
                          "policy runs on the robots")
    gpus: int = Field(0, ge=0, le=16, description="GPUs each replica needs")
    max_batch: int = Field(64, ge=1, le=4096, description="most requests run as one batch")
    chunk: int = Field(10, ge=1, le=256, description="actions per reply (action chunk)")


class AlgorithmSpec(_Frozen):
    name: str = Field(
        "sac", pattern=r"^[a-z][a-z0-9_]*$",
        description="registered algorithm (learners.registry: sac, rlpd, plug-ins); checked "
                    "against the registry when the experiment is submitted")
    hyperparameters: dict[str, JsonValue] = Field(
        default_factory=dict, description="overrides of the algorithm's config fields"
    )
    utd_ratio: float = Field(1.0, gt=0, le=64, description="gradient updates per new env step")
    batch_size: int = Field(256, ge=1, le=65_536)
    warmup_steps: int = Field(1000, ge=0, description="env steps collected before learning")
    seed: int = 0


class PolicySpec(_Frozen):
    kind: str = Field("mlp_gaussian", pattern=r"^[a-z][a-z0-9_]*$",
                      description="registered policy kind (learners.policies); checked against "
                                  "the registry when the experiment is submitted")
    hidden: tuple[int, ...] = Field((256, 256), description="hidden layer widths")
    options: dict[str, JsonValue] = Field(
        default_factory=dict, description="kind-specific options robots build the policy with "
        "(e.g. cnn_gaussian's channels, feature_dim)")
    shared_across_types: bool = Field(
        False, description="one policy for all the experiment's robot types (co-training: "
        "observations zero-padded to the longest plus a robot-type one-hot; the types must "
        "share an action space, e.g. the manipulators' end-effector action) instead of one "
        "policy per type")


class ObservationSpec(_Frozen):
    """What the policy sees of each step: which elements of the robot's flat state
    observation and which of its cameras, at which size.

    Cameras are rendered by the agents (``USER_AGENT_CAMERAS`` / ``USER_AGENT_CAMERA_SIZE``:
    the robot announces them in its spec); the learner refuses a robot type whose announced
    cameras lack one named here or have another size (one log line), so the mismatch is
    found at the first step, not in a shape error deep in a network.
    """

    state_indices: tuple[int, ...] | None = Field(
        None, description="elements of the flat state observation the policy sees (robots "
        "do not name their state elements yet); None: all of them, (): none")
    cameras: tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], ...] = Field(
        (), description="cameras the policy sees, as the robot names them (e.g. overhead)")
    image_size: tuple[int, int] = Field(
        (64, 64), description="(height, width) of every camera's uint8 RGB frame")

    @model_validator(mode="after")
    def _valid(self) -> ObservationSpec:
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError("cameras: a camera is named twice")
        if not all(1 <= d <= 1024 for d in self.image_size):
            raise ValueError(f"image_size: {self.image_size} must lie in 1..1024 per side")
        if self.state_indices is not None and any(i < 0 for i in self.state_indices):
            raise ValueError("state_indices: indices are non-negative")
        return self


class BufferSpec(_Frozen):
    memory_budget_mb: int = Field(1024, ge=1, description="hot in-memory buffer budget")
    prior_experiments: tuple[Name, ...] = Field(
        (), description="earlier experiments whose history warm-starts this one (RLPD prior)"
    )
    prior_ratio: float = Field(
        0.5, ge=0, le=1, description="fraction of each batch from prior data"
    )
    image_codec: Literal["lz4", "zstd"] | None = Field(
        "lz4", description="lossless codec for camera frames held in host memory (none: raw)"
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


class TakeoverSpec(_Frozen):
    """Who may override the robots' policy (``agents.takeover``): nobody (``none``), the
    scripted operator (the simulated human of tests and benchmarks), a terminal keyboard,
    or a gamepad / 3-D mouse (``gamepad``, Linux evdev)."""

    kind: Literal["none", "scripted", "keyboard", "gamepad"] = Field(
        "none", description="takeover device")
    threshold: float = Field(
        0.5, le=10, description="scripted: take over (action rule) / hand back once within "
                                "(both rules) this distance of the expert's action (action "
                                "units); <= 0: always drive (demos)")
    patience: int = Field(2, ge=1, description="scripted: …for this many steps in a row")
    min_steps: int = Field(10, ge=0, description="scripted: hold control at least this long")
    agree_steps: int = Field(
        3, ge=1, description="scripted: hand back after the policy agrees this many steps")
    rule: Literal["auto", "progress", "action"] = Field(
        "auto", description="scripted: take over when the robot fails (progress: the task "
                            "got worse or stalled), or when its action differs from the "
                            "expert's (action); auto: progress where the expert measures it")
    stall_steps: int = Field(
        25, ge=1, description="scripted, progress: take over after this many steps without "
                              "progress_m of progress")
    progress_m: float = Field(0.01, ge=0, description="scripted, progress: what counts as "
                                                       "progress (m)")
    regress_m: float = Field(
        0.1, gt=0, description="scripted, progress: take over when the task is this much "
                               "worse than the best reached (m), patience steps in a row")
    speed: float = Field(0.6, gt=0, le=1, description="keyboard: action per key press")
    device: str | None = Field(None, description="gamepad: /dev/input/eventN (default: first)")


class ExperimentSpec(_Frozen):
    """One learning run: task, robots requested, algorithm, policy, reward and limits."""

    name: Name = Field(description="experiment id; unique per fleet")
    task: str = Field("reach", pattern=r"^[a-z][a-z0-9_-]*$", description="task the robots run")
    robots: tuple[RobotRequest, ...] = Field(min_length=1, description="robots requested")
    learner: LearnerRequest = Field(default_factory=LearnerRequest)
    inference: InferenceRequest = Field(default_factory=InferenceRequest)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    observation: ObservationSpec = Field(default_factory=ObservationSpec,
                                         description="state elements and cameras the policy sees")
    reward: str = Field(
        "reach_dense@1",
        pattern=r"^[a-z][a-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9._+-]*$",
        description="reward function name@version",
    )
    buffer: BufferSpec = Field(default_factory=BufferSpec)
    weight_sync: WeightSyncSpec = Field(default_factory=WeightSyncSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    takeover: TakeoverSpec = Field(default_factory=TakeoverSpec,
                                   description="takeover device the robots' agents run")

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
