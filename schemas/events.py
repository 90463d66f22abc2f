"""Every control event USER writes to Kafka: frozen, versioned pydantic models.

Each event is one model named in the past tense with a version suffix
(``HeartbeatV1``) on the common :class:`Envelope`: event id, schema name and version,
site, robot, experiment, produced-at.  The schema name and version are ``Literal``
fields, so a payload that claims to be something else does not validate, and
:func:`schema_id` reads them back from a model class.

Evolution: a changed event is a *new* model (``HeartbeatV2``) plus an upcaster from the
old payload, registered in :mod:`schemas.registry`; readers accept every version ever
written.  Transition batches (Arrow, not JSON) live in :mod:`schemas.transitions`; their
per-batch header models are defined here because they share the envelope.

JSON text is the wire form (``model_dump_json``); floats must be finite, since JSON has
no NaN.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator

from schemas.spaces import DType, RobotSpec

#: Identifiers (robot, site, experiment, episode, lease): no '/' because keys join them.
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", max_length=128)]

#: A reward function's identity as it appears in data: ``"name@version"``.
RewardFnId = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=128)
]

#: A lowercase hex SHA-256 digest.
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """What every event carries, whatever it says.

    ``site``/``robot_id``/``experiment_id`` are optional here; each event makes the ones
    it is about required.  ``produced_at`` is the producer's wall clock (UTC).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    schema_name: str
    schema_version: int
    site: Ident | None = None
    robot_id: Ident | None = None
    experiment_id: Ident | None = None
    produced_at: AwareDatetime = Field(default_factory=_now)


def schema_id(model: type[Envelope]) -> tuple[str, int]:
    """``(schema name, version)`` of an event class, read from its ``Literal`` defaults."""
    name = model.model_fields["schema_name"].default
    version = model.model_fields["schema_version"].default
    if not isinstance(name, str) or not isinstance(version, int):
        raise TypeError(f"{model.__name__} does not pin schema_name and schema_version")
    return name, version


# -- reasons a record is refused (carried by DeadLetterV1) ------------------------------


class RejectReason(StrEnum):
    """Why a consumer refused a record; the ``reason`` of a :class:`DeadLetterV1`."""

    EMPTY = "empty"
    OVERSIZE = "oversize"
    BAD_HEADERS = "bad_headers"
    CONTENT_TYPE = "content_type"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    NO_SCHEMA = "no_schema"
    UNKNOWN_SCHEMA = "unknown_schema"
    UNKNOWN_VERSION = "unknown_version"
    HEADER_MISMATCH = "header_mismatch"
    WRONG_TOPIC = "wrong_topic"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    INVALID_FIELD = "invalid_field"
    UPCAST_FAILED = "upcast_failed"
    KEY_MISMATCH = "key_mismatch"
    NOT_ARROW = "not_arrow"
    ARROW_SCHEMA = "arrow_schema"
    NULL_VALUES = "null_values"
    EMPTY_BATCH = "empty_batch"
    LENGTH_MISMATCH = "length_mismatch"
    NON_FINITE = "non_finite"
    OUT_OF_BOUNDS = "out_of_bounds"
    SPEC_MISMATCH = "spec_mismatch"
    UNKNOWN_ROBOT = "unknown_robot"
    INCONSISTENT = "inconsistent"
    HASH_MISMATCH = "hash_mismatch"
    #: Rows that break the intervention contract (``policy_action`` only and always
    #: where ``intervention``) or the episode-end contract (``end_reason``).
    CONTRACT = "contract"
    DECODER_ERROR = "decoder_error"
    #: the broker refused the record when it was produced (a permanent delivery error)
    REFUSED = "refused"
    #: a weights manifest without a valid signature of a trusted, unexpired key
    SIGNATURE = "signature"
    #: a weights version at or below the one already applied (a replay)
    REPLAYED = "replayed"


class SchemaError(ValueError):
    """A record that is not an acceptable event; ``reason`` says which way it fails."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# -- robots -------------------------------------------------------------------------------


class RobotState(StrEnum):
    """Where a robot stands, as the fleet registry sees it."""

    IDLE = "idle"
    LEASED = "leased"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ESTOPPED = "estopped"
    LOST = "lost"
    OFFLINE = "offline"


class RobotAnnouncedV1(Envelope):
    """A robot came online at a site and describes what it observes and accepts."""

    schema_name: Literal["robot.announced"] = "robot.announced"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    spec: RobotSpec
    driver: str = Field("sim", max_length=64, description="'sim' (MuJoCo) or a driver name")
    agent_version: str = Field("", max_length=64)


class RobotStateChangedV1(Envelope):
    """The fleet registry moved a robot from one state to another."""

    schema_name: Literal["robot.state_changed"] = "robot.state_changed"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    state: RobotState
    previous: RobotState | None = None
    reason: str = Field("", max_length=1000)


class HeartbeatV1(Envelope):
    """A robot is alive; sent about once a second by its agent."""

    schema_name: Literal["heartbeat"] = "heartbeat"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    seq: int = Field(ge=0, description="increases by one per heartbeat of this agent run")
    state: RobotState
    policy_version: int | None = Field(None, ge=0)
    steps_total: int = Field(0, ge=0, description="control steps taken by this agent run")
    uptime_s: float = Field(0.0, ge=0)
    spool_bytes: int = Field(0, ge=0, description="recorded bytes not yet confirmed by Kafka")
    spool_full: bool = Field(
        False, description="the spool's budget is spent: episodes are held until it drains")
    dead_letters: int = Field(
        0, ge=0, description="records this agent run dead-lettered: refused by the broker, or "
        "unreadable commands and weights")
    incarnation: Ident | None = Field(
        None, description="the agent's current hold on the robot (TransitionBatchV2); two "
        "alternating here mean two agents drive one robot id")


# -- experiments and leases ---------------------------------------------------------------


class ExperimentState(StrEnum):
    SUBMITTED = "submitted"
    #: Waits for compute (learner / inference hosts); ``detail`` shows its place in line.
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExperimentSubmittedV1(Envelope):
    """Someone asked for an experiment; ``spec`` is the experiment file as JSON.

    The spec is kept as plain JSON here: its schema belongs to the scheduler, which
    validates it when it places the experiment.
    """

    schema_name: Literal["experiment.submitted"] = "experiment.submitted"
    schema_version: Literal[1] = 1
    experiment_id: Ident
    spec: dict[str, JsonValue]
    submitted_by: str = Field("", max_length=128)


class ExperimentStatusV1(Envelope):
    """An experiment's state changed (placed, running, finished, …)."""

    schema_name: Literal["experiment.status"] = "experiment.status"
    schema_version: Literal[1] = 1
    experiment_id: Ident
    state: ExperimentState
    robots: tuple[Ident, ...] = ()
    detail: str = Field("", max_length=1000)


class LeaseGrantedV1(Envelope):
    """The scheduler gave a robot to an experiment."""

    schema_name: Literal["lease.granted"] = "lease.granted"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    lease_id: Ident
    expires_at: AwareDatetime | None = None
    instruction: str = Field("", max_length=1000, description="the task in words the robot "
                             "runs for the experiment (its request's; empty: the agent's own)")


class LeaseReleaseReason(StrEnum):
    COMPLETED = "completed"
    ROBOT_LOST = "robot_lost"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class LeaseReleasedV1(Envelope):
    """A robot's lease ended; the robot is free for another experiment."""

    schema_name: Literal["lease.released"] = "lease.released"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    lease_id: Ident
    reason: LeaseReleaseReason


# -- transition batch headers (the rows travel as Arrow, see schemas.transitions) --------


class TransitionBatchV1(Envelope):
    """Header of a batch of raw steps of one robot (``transitions.raw``)."""

    schema_name: Literal["transition_batch"] = "transition_batch"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    robot_type: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    n_steps: int = Field(gt=0)


class RewardedTransitionBatchV1(Envelope):
    """Header of a batch of rewarded steps (``transitions``): one reward function's view."""

    schema_name: Literal["rewarded_transition_batch"] = "rewarded_transition_batch"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    robot_type: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    n_steps: int = Field(gt=0)
    reward_fn: RewardFnId
    raw_event_id: uuid.UUID | None = Field(None, description="the raw batch it was computed from")


#: The incarnation every V1 batch is read as: V1 rows had no step identity but their
#: observation time, which the upcast makes their ``seq``.
V1_INCARNATION = "v1"


class TransitionBatchV2(Envelope):
    """Header of a batch of raw steps of one robot (``transitions.raw``).

    A step's identity is ``(robot_id, incarnation, seq)``: ``incarnation`` is minted by
    the agent each time it takes the robot (a new lease, a new agent process), the rows'
    ``seq`` counts steps within it from 0.  Timestamps are data, never identity.
    """

    schema_name: Literal["transition_batch"] = "transition_batch"
    schema_version: Literal[2] = 2
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    robot_type: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    n_steps: int = Field(gt=0)
    incarnation: Ident = Field(description="the agent's hold on the robot the steps come from")
    instruction: str = Field("", max_length=1000, description="the task in words the robot "
                             "ran these steps under (empty: the experiment's default)")


class RewardedTransitionBatchV2(Envelope):
    """Header of a batch of rewarded steps (``transitions``): one reward function's view
    of a raw batch's steps, with the raw batch's step identity."""

    schema_name: Literal["rewarded_transition_batch"] = "rewarded_transition_batch"
    schema_version: Literal[2] = 2
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    robot_type: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    n_steps: int = Field(gt=0)
    incarnation: Ident = Field(description="the agent's hold on the robot the steps come from")
    reward_fn: RewardFnId
    raw_event_id: uuid.UUID | None = Field(None, description="the raw batch it was computed from")
    instruction: str = Field("", max_length=1000, description="the raw batch's instruction")



# -- episodes -----------------------------------------------------------------------------


class EpisodeEndReason(StrEnum):
    TIME_LIMIT = "time_limit"
    TASK_DONE = "task_done"
    STOPPED = "stopped"
    ESTOPPED = "estopped"
    ROBOT_ERROR = "robot_error"
    #: The simulator went unstable (a MuJoCo warning such as ``mjWARN_BADQACC``, a
    #: non-finite state): the episode ends there instead of being reset silently.
    SIM_UNSTABLE = "sim_unstable"


class EpisodeStartedV1(Envelope):
    """A robot reset and began an episode."""

    schema_name: Literal["episode.started"] = "episode.started"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    episode_id: Ident
    policy_version: int = Field(ge=0)
    task: str = Field("", max_length=1000, description="task or language instruction")


class EpisodeEndedV1(Envelope):
    """A robot's episode ended; a summary (rewards are the reward jobs' business)."""

    schema_name: Literal["episode.ended"] = "episode.ended"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    episode_id: Ident
    steps: int = Field(ge=0)
    reason: EpisodeEndReason
    detail: str = Field("", max_length=1000, description="what ended it, for a person")
    duration_s: float = Field(ge=0)
    interventions: int = Field(0, ge=0, description="steps a human overrode")
    takeovers: int = Field(0, ge=0, description="takeovers (a human took control, however "
                                                "long) in this episode")
    first_policy_version: int = Field(ge=0)
    last_policy_version: int = Field(ge=0)
    success: bool | None = Field(None, description="if the robot itself can tell")


class EpisodeLabeledV1(Envelope):
    """A person's verdict on an episode: did it succeed, and from which step on does a
    camera frame show success?  Labels a learned reward trains on (``userctl rewards
    train --labels human``); a later label of the same episode replaces an earlier one."""

    schema_name: Literal["episode.labeled"] = "episode.labeled"
    schema_version: Literal[1] = 1
    robot_id: Ident
    experiment_id: Ident
    episode_id: Ident
    success: bool
    success_from_step: int | None = Field(
        None, ge=0, description="with success: the first step whose frame shows it (every "
                                "later step too); None: the episode's last step only")
    labeled_by: str = Field(min_length=1, max_length=200, description="who labelled it")
    note: str = Field("", max_length=1000)

    @model_validator(mode="after")
    def _from_step_only_with_success(self) -> EpisodeLabeledV1:
        if not self.success and self.success_from_step is not None:
            raise ValueError("success_from_step is for successful episodes only")
        return self


# -- weights ------------------------------------------------------------------------------


class TensorInfo(BaseModel):
    """One tensor of a safetensors blob: where its bytes lie in the whole blob."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    dtype: DType | Literal["float16", "bfloat16"]
    shape: tuple[int, ...]
    begin: int = Field(ge=0)
    end: int = Field(ge=0)


class ManifestSignature(BaseModel):
    """An Ed25519 signature over a manifest's canonical JSON (every field but this one;
    ``topics.signing`` signs and verifies)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="SHA-256 of the public key, "
                        "first 16 hex digits")
    ed25519: str = Field(pattern=r"^[0-9a-f]{128}$", description="the 64-byte signature, hex")


class WeightsManifestV1(Envelope):
    """A complete weights version: its tensors, whole-blob hash and where its chunks are.

    An agent applies a version only after every chunk arrived and each chunk's SHA-256
    equals its ``chunk_sha256`` entry (the signed manifest pins every byte through them;
    agents compare the whole blob with ``sha256`` too when asked to, and replay and
    lineage use it).  ``chunk_offsets[i]`` is the ``weights`` topic offset of chunk i.
    """

    schema_name: Literal["weights.manifest"] = "weights.manifest"
    schema_version: Literal[1] = 1
    experiment_id: Ident
    version: int = Field(ge=0, description="policy version")
    learner_step: int = Field(ge=0)
    policy: str = Field(max_length=128, description="policy kind, e.g. mlp_gaussian")
    format: Literal["safetensors"] = "safetensors"
    total_bytes: int = Field(ge=0)
    sha256: Sha256
    chunk_bytes: int = Field(gt=0)
    chunk_sha256: tuple[Sha256, ...]
    chunk_offsets: tuple[int, ...] = Field(description="weights-topic offsets, one per chunk")
    tensors: tuple[TensorInfo, ...] = ()
    trained_on: dict[str, int] = Field(
        default_factory=dict, description="'topic:partition' -> last offset the learner used"
    )
    lineage: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="what this version trained on, enough to replay it (learners.lineage): "
                    "run, seed, Delta warm start, the live offsets ingested before each "
                    "update since the stream's previous manifest; {} from older learners",
    )
    signature: ManifestSignature | None = Field(
        None, description="the learner's Ed25519 signature (issue 16); None: unsigned")

    @model_validator(mode="after")
    def _chunks_agree(self) -> WeightsManifestV1:
        if len(self.chunk_offsets) != len(self.chunk_sha256):
            raise ValueError("chunk_offsets and chunk_sha256 must have one entry per chunk")
        return self


class WeightsChunkV1(Envelope):
    """One slice of a weights blob.  On the wire ``data`` is the record value itself and
    the other fields travel as JSON in a header, so no bytes are base64-inflated."""

    schema_name: Literal["weights.chunk"] = "weights.chunk"
    schema_version: Literal[1] = 1
    experiment_id: Ident
    version: int = Field(ge=0)
    index: int = Field(ge=0)
    n_chunks: int = Field(gt=0)
    sha256: Sha256
    data: bytes = Field(exclude=True)

    @model_validator(mode="after")
    def _hash_and_index(self) -> WeightsChunkV1:
        if self.index >= self.n_chunks:
            raise ValueError(f"chunk index {self.index} is not below n_chunks {self.n_chunks}")
        if hashlib.sha256(self.data).hexdigest() != self.sha256:
            raise ValueError("chunk data does not match its sha256")
        return self


# -- commands, metrics, dead letters ------------------------------------------------------


class CommandKind(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    ESTOP = "estop"


class CommandV1(Envelope):
    """An operator's order to one robot; ``estop`` must be obeyed before anything else."""

    schema_name: Literal["command"] = "command"
    schema_version: Literal[1] = 1
    robot_id: Ident
    command: CommandKind
    reason: str = Field("", max_length=1000)
    issued_by: str = Field("", max_length=128)


class LearnerMetricsV1(Envelope):
    """A learner's namespaced statistics (``losses/critic``) at one learner step.

    A non-finite value (a diverged loss) is sent as ``null``: JSON has no NaN.
    """

    schema_name: Literal["learner.metrics"] = "learner.metrics"
    schema_version: Literal[1] = 1
    experiment_id: Ident
    learner_step: int = Field(ge=0)
    policy_version: int = Field(ge=0)
    metrics: dict[str, float | None]


class DeadLetterV1(Envelope):
    """A record some consumer could not accept, kept with everything needed to replay it.

    ``value_b64`` is the original value (base64), cut to the first ``value_bytes_kept``
    bytes when it would not fit the ``dlq`` topic (``truncated``).
    """

    schema_name: Literal["dead_letter"] = "dead_letter"
    schema_version: Literal[1] = 1
    source_topic: str
    source_partition: int = Field(ge=-1, description="-1: refused when produced, never written")
    source_offset: int = Field(ge=-1, description="-1: refused when produced, never written")
    source_timestamp_ms: int | None = None
    consumer: str = Field("", max_length=256, description="group id or tool that refused it")
    reason: RejectReason
    detail: str = Field(max_length=4000)
    key_b64: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="headers as text")
    value_b64: str
    value_size: int = Field(ge=0, description="size of the original value in bytes")
    truncated: bool = False

    def original_value(self) -> bytes:
        """The (possibly truncated) original record value."""
        return base64.b64decode(self.value_b64)

    def original_key(self) -> bytes | None:
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


class GapDetectedV1(Envelope):
    """Records a consumer expected to read no longer exist (retention, deleted records,
    a truncated partition): offsets ``first_missing`` to ``last_missing`` of
    ``topic[partition]`` were never read by ``consumer``.  ``experiment_id`` is set when
    the consumer serves one experiment (a learner), unset for shared ones (the sink).
    """

    schema_name: Literal["gap_detected"] = "gap_detected"
    schema_version: Literal[1] = 1
    consumer: str = Field(min_length=1, max_length=256, description="group id, sink or learner")
    topic: str = Field(min_length=1, max_length=249)
    partition: int = Field(ge=0)
    first_missing: int = Field(ge=0, description="first offset that was expected and is gone")
    last_missing: int = Field(ge=0, description="last offset that is gone (inclusive)")
    detected_at: AwareDatetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _ordered(self) -> GapDetectedV1:
        if self.last_missing < self.first_missing:
            raise ValueError(f"last_missing {self.last_missing} is before first_missing "
                             f"{self.first_missing}")
        return self

    @property
    def missing(self) -> int:
        """How many offsets are gone."""
        return self.last_missing - self.first_missing + 1


# -- compute hosts, placements and remote inference (issue 14) ----------------------------


class GpuInfo(BaseModel):
    """One accelerator of a compute host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    name: str = Field(max_length=256)
    memory_mb: int = Field(ge=0)


class HostAnnouncedV1(Envelope):
    """A compute host came up and says what it has (like a robot's announcement)."""

    schema_name: Literal["host.announced"] = "host.announced"
    schema_version: Literal[1] = 1
    host_id: Ident
    site: Ident
    cpus: int = Field(ge=1)
    memory_mb: int = Field(ge=0)
    gpus: tuple[GpuInfo, ...] = ()


class HostHeartbeatV1(Envelope):
    """A compute host is alive and runs these placements (ids), about once a second."""

    schema_name: Literal["host.heartbeat"] = "host.heartbeat"
    schema_version: Literal[1] = 1
    host_id: Ident
    site: Ident
    seq: int = Field(ge=0)
    running: tuple[Ident, ...] = Field((), description="placement ids whose process runs")
    failed: dict[str, str] = Field(default_factory=dict,
                                   description="placement id -> why its process ended")


class WorkloadRole(StrEnum):
    LEARNER = "learner"
    INFERENCE = "inference"


class PlacementGrantedV1(Envelope):
    """The controller put one learner or inference replica of an experiment on a host."""

    schema_name: Literal["placement.granted"] = "placement.granted"
    schema_version: Literal[1] = 1
    placement_id: Ident
    experiment_id: Ident
    host_id: Ident
    role: WorkloadRole
    index: int = Field(ge=0, description="which learner / replica of the experiment")
    gpus: tuple[int, ...] = Field((), description="GPU indices on the host it may use")


class PlacementReleaseReason(StrEnum):
    COMPLETED = "completed"
    HOST_LOST = "host_lost"
    CANCELLED = "cancelled"


class PlacementReleasedV1(Envelope):
    """A placement ended; its host stops the process and frees the resources."""

    schema_name: Literal["placement.released"] = "placement.released"
    schema_version: Literal[1] = 1
    placement_id: Ident
    experiment_id: Ident
    host_id: Ident
    reason: PlacementReleaseReason


class InferenceRequestV1(Envelope):
    """A robot asks the experiment's inference service for its next action chunk.

    ``step`` is the robot's control step the observation was taken at: a reply's action
    ``i`` is for step ``step + i``.  ``sent_ns`` is the robot's own clock, echoed back, so
    the robot alone measures the round trip.  Images are raw ``uint8`` HxWxC, base64.
    """

    schema_name: Literal["inference.request"] = "inference.request"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    request_seq: int = Field(ge=0)
    step: int = Field(ge=0)
    sent_ns: int = Field(ge=0)
    instruction: str = Field("", max_length=1000)
    observation: tuple[float, ...]
    action_dim: int | None = Field(None, ge=1, description="the robot's action size, when "
                                   "a multi-robot policy's actions are wider")
    robot_type: str = Field("", max_length=128, description="the robot's type, so one "
                            "policy shared across types reads its observation layout "
                            "(empty: the replica's own type)")
    images_b64: dict[str, str] = Field(default_factory=dict)
    image_shapes: dict[str, tuple[int, int, int]] = Field(default_factory=dict)


class ActionChunkV1(Envelope):
    """The inference service's answer: actions for steps ``step``, ``step + 1``, …"""

    schema_name: Literal["inference.actions"] = "inference.actions"
    schema_version: Literal[1] = 1
    site: Ident
    robot_id: Ident
    experiment_id: Ident
    request_seq: int = Field(ge=0)
    step: int = Field(ge=0)
    sent_ns: int = Field(ge=0)
    actions: tuple[tuple[float, ...], ...] = Field(min_length=1)
    policy_version: int = Field(0, ge=0)
    replica: str = Field("", max_length=128)
    batch_size: int = Field(1, ge=1, description="requests run in the same forward pass")


#: Every event model of version 1, for :mod:`schemas.registry`.
ALL_V1: tuple[type[Envelope], ...] = (
    RobotAnnouncedV1,
    RobotStateChangedV1,
    HeartbeatV1,
    ExperimentSubmittedV1,
    ExperimentStatusV1,
    LeaseGrantedV1,
    LeaseReleasedV1,
    TransitionBatchV1,
    RewardedTransitionBatchV1,
    EpisodeStartedV1,
    EpisodeEndedV1,
    EpisodeLabeledV1,
    WeightsManifestV1,
    WeightsChunkV1,
    CommandV1,
    LearnerMetricsV1,
    DeadLetterV1,
    GapDetectedV1,
    HostAnnouncedV1,
    HostHeartbeatV1,
    PlacementGrantedV1,
    PlacementReleasedV1,
    InferenceRequestV1,
    ActionChunkV1,
)

#: Version-2 models; :mod:`schemas.registry` registers each with its upcaster from V1.
ALL_V2: tuple[type[Envelope], ...] = (TransitionBatchV2, RewardedTransitionBatchV2)
