"""Transition batches: many steps of one robot as numpy columns, and their Arrow form.

:class:`TransitionBatch` (raw steps, ``transitions.raw``) and
:class:`RewardedTransitionBatch` (the same steps plus one reward function's view,
``transitions``) are frozen dataclasses of numpy arrays: what agents build, what
learners and reward jobs receive.  Row ``i`` says: step ``seq[i]`` of the robot's
``incarnation`` (the step's identity is ``(robot_id, incarnation, seq)``; timestamps are
data, never identity) saw ``observation[i]`` (and ``images`` at the same instant), the
robot executed ``action[i]`` — the policy's of ``policy_version[i]``, or, where
``intervention[i]``, a human's who overrode the policy's proposal ``policy_action[i]``
(present only there) — and ``info[i]`` is the privileged task state that action led to —
the outcome a reward function scores.  The next observation of a step is the observation
of the next step of the same episode, in this batch or a later one; a step after which the
robot cut the episode off (``truncated``: time limit, stop, an unstable simulator) has no
successor, so its final observation travels in ``final_observation``/``final_images``, one
row per truncated step in order, and ``end_reason[i]`` says why the episode ended there.

Old versions: a V1 batch (``human_action``, no identity) is read as V2 by
:func:`from_arrow`: incarnation ``"v1"``, ``seq`` := ``observed_ns``, and where
``intervention`` the executed action := V1 ``human_action``, ``policy_action`` := V1
``action``.

Every column is declared once, in the dataclass fields' metadata; :func:`arrow_schema`
derives the Arrow schema from those declarations and a :class:`Layout` (shapes from the
robot's :class:`~schemas.spaces.RobotSpec`), and :func:`to_arrow`/:func:`from_arrow`
walk the same declarations.  The batch header (a pydantic event with the envelope) rides
in the Arrow schema metadata.  Decoded arrays are read-only views of Arrow buffers: no
per-step Python objects are made.

Wire dtypes are fixed: observations, actions and ``info`` are float32 whatever the
robot's native dtype, images uint8 HWC, timestamps int64 nanoseconds since the epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from schemas.events import (
    V1_INCARNATION,
    EpisodeEndReason,
    RejectReason,
    RewardedTransitionBatchV2,
    SchemaError,
    TransitionBatchV2,
)
from schemas.registry import REGISTRY, Registry
from schemas.spaces import ArraySpec, RobotSpec

#: Arrow schema metadata keys.
META_SCHEMA = b"user.schema"
META_VERSION = b"user.schema_version"
META_EVENT = b"user.event"
#: Arrow field metadata key holding a column's per-step shape as JSON, e.g. ``[84,84,3]``.
META_SHAPE = b"shape"

#: Absolute tolerance when checking actions against the announced bounds.
BOUNDS_TOLERANCE = 1e-4


class Kind(Enum):
    """How a column is laid out in numpy and in Arrow."""

    STRING = "string"  # (n,) str_          | dictionary<int32, string>
    SCALAR = "scalar"  # (n,) number/bool   | primitive (timestamps as timestamp[ns, UTC])
    VECTOR = "vector"  # (n, *shape) f32    | fixed_size_list<float32>, null where not valid
    FINAL = "final"  # (k, *shape) f32, rows where `where` | nullable fixed_size_list
    IMAGES = "images"  # cam -> (n,h,w,3) u8 | struct<cam: fixed_size_list<uint8>>
    FINAL_IMAGES = "final_images"  # cam -> (k,h,w,3) | struct<cam: nullable binary>
    INFO = "info"  # name -> (n, *shape) f32 | struct<name: fixed_size_list<float32>>


@dataclass(frozen=True)
class Column:
    """The declaration of one column (in a dataclass field's metadata)."""

    kind: Kind
    dtype: str = "float32"
    timestamp: bool = False
    shape_of: str = ""  # VECTOR/FINAL: "observation" or "action" entry of the Layout
    where: str = ""  # nullable columns: the bool column marking the rows that hold a value
    finite: bool = False  # NaN/inf is refused by check_content


def _col(
    kind: Kind,
    doc: str,
    *,
    dtype: str = "float32",
    timestamp: bool = False,
    shape_of: str = "",
    where: str = "",
    finite: bool = False,
) -> dict[str, object]:
    column = Column(kind, dtype, timestamp, shape_of, where, finite)
    return {"column": column, "doc": doc}


@dataclass(frozen=True)
class Layout:
    """The per-step shapes of a batch: what :func:`arrow_schema` needs besides the model."""

    observation: tuple[int, ...]
    action: tuple[int, ...]
    cameras: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    info: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def of_robot(cls, spec: RobotSpec) -> Layout:
        return cls(
            observation=spec.observation.shape,
            action=spec.action.shape,
            cameras={c.name: c.shape for c in spec.cameras},
            info={name: a.shape for name, a in spec.info.items()},
        )

    def shape(self, name: str) -> tuple[int, ...]:
        if name == "observation":
            return self.observation
        if name == "action":
            return self.action
        raise KeyError(name)


H = TypeVar("H", TransitionBatchV2, RewardedTransitionBatchV2)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
BOOL = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True, eq=False)
class StepColumns(Generic[H]):
    """Columns shared by raw and rewarded batches; ``n = event.n_steps`` rows.

    Construction checks lengths, shapes and dtypes (``SchemaError``); it does not look
    at values: :func:`check_content` and :func:`check_against` do that.
    """

    #: Per-batch strings written as constant columns, read from ``event``.
    LABELS: ClassVar[tuple[str, ...]] = ("robot_id", "incarnation")

    event: H
    episode_id: npt.NDArray[np.str_] = field(metadata=_col(Kind.STRING, "(n,) episode id"))
    step: npt.NDArray[np.int32] = field(
        metadata=_col(Kind.SCALAR, "(n,) step index within the episode, from 0", dtype="int32")
    )
    seq: I64 = field(
        metadata=_col(Kind.SCALAR, "(n,) step number within the incarnation, from 0; "
                      "(robot_id, incarnation, seq) identifies the step", dtype="int64")
    )
    observation: F32 = field(
        metadata=_col(Kind.VECTOR, "(n, *obs) observation", shape_of="observation",
                      finite=True)
    )
    action: F32 = field(
        metadata=_col(Kind.VECTOR, "(n, *act) action the robot executed (the human's where "
                      "intervention)", shape_of="action", finite=True)
    )
    policy_version: I64 = field(
        metadata=_col(Kind.SCALAR, "(n,) policy version that chose the action; 0 = initial",
                      dtype="int64")
    )
    intervention: BOOL = field(
        metadata=_col(Kind.SCALAR, "(n,) a human overrode the policy", dtype="bool")
    )
    policy_action: F32 = field(
        metadata=_col(Kind.VECTOR, "(n, *act) the policy's overridden proposal; present "
                      "exactly where intervention", shape_of="action", where="intervention",
                      finite=True)
    )
    truncated: BOOL = field(
        metadata=_col(Kind.SCALAR, "(n,) the robot cut the episode off after this step",
                      dtype="bool")
    )
    final_observation: F32 = field(
        metadata=_col(Kind.FINAL, "(k, *obs) observation after each truncated step",
                      shape_of="observation", where="truncated", finite=True)
    )
    end_reason: npt.NDArray[np.str_] = field(
        metadata=_col(Kind.STRING, "(n,) why the episode ended after this step (an "
                      "EpisodeEndReason); '' except on an episode's last step")
    )
    observed_ns: I64 = field(
        metadata=_col(Kind.SCALAR, "(n,) when the observation was read, ns since epoch",
                      dtype="int64", timestamp=True)
    )
    acted_ns: I64 = field(
        metadata=_col(Kind.SCALAR, "(n,) when the action was applied, ns since epoch",
                      dtype="int64", timestamp=True)
    )
    images: Mapping[str, U8] = field(
        metadata=_col(Kind.IMAGES, "camera -> (n, h, w, 3) uint8, seen with observation")
    )
    final_images: Mapping[str, U8] = field(
        metadata=_col(Kind.FINAL_IMAGES, "camera -> (k, h, w, 3) uint8 after truncated steps",
                      where="truncated")
    )
    info: Mapping[str, F32] = field(
        metadata=_col(Kind.INFO, "name -> (n, *shape) privileged task state after the action",
                      finite=True)
    )

    def __post_init__(self) -> None:
        n = self.event.n_steps
        k = -1
        for f, col in columns(type(self)):
            value = getattr(self, f.name)
            if col.kind in (Kind.IMAGES, Kind.FINAL_IMAGES, Kind.INFO):
                fixed = {
                    key: _as_array(item, "uint8" if col.kind != Kind.INFO else "float32",
                                   f"{f.name}[{key!r}]")
                    for key, item in value.items()
                }
                object.__setattr__(self, f.name, fixed)
                continue
            arr = _as_array(value, "str" if col.kind == Kind.STRING else col.dtype, f.name)
            object.__setattr__(self, f.name, arr)
            if col.kind == Kind.FINAL:
                continue
            if arr.ndim == 0 or arr.shape[0] != n:
                raise SchemaError(
                    RejectReason.LENGTH_MISMATCH,
                    f"{f.name} has {arr.shape[0] if arr.ndim else 0} rows, the batch {n}",
                )
            if col.kind == Kind.VECTOR and arr.ndim < 2:
                raise SchemaError(RejectReason.INCONSISTENT, f"{f.name} must be (n, *shape)")
            if col.kind == Kind.SCALAR and arr.ndim != 1:
                raise SchemaError(RejectReason.INCONSISTENT, f"{f.name} must be (n,)")
        k = int(np.count_nonzero(self.truncated))
        if self.policy_action.shape != self.action.shape:
            raise SchemaError(
                RejectReason.INCONSISTENT,
                f"policy_action {self.policy_action.shape} differs from action "
                f"{self.action.shape}",
            )
        want = (k, *self.observation.shape[1:])
        if self.final_observation.shape != want:
            raise SchemaError(
                RejectReason.INCONSISTENT,
                f"final_observation is {self.final_observation.shape}, expected {want} "
                f"(one row per truncated step)",
            )
        for name, img in self.images.items():
            if img.ndim != 4 or img.shape[0] != n or img.shape[3] != 3:
                raise SchemaError(
                    RejectReason.INCONSISTENT, f"images[{name!r}] is {img.shape}, not (n, h, w, 3)"
                )
        if set(self.final_images) != set(self.images):
            raise SchemaError(
                RejectReason.INCONSISTENT,
                f"final_images cameras {sorted(self.final_images)} differ from images "
                f"{sorted(self.images)}",
            )
        _check_finals(self.images, self.final_images, k)
        for name, arr in self.info.items():
            if arr.ndim < 2 or arr.shape[0] != n:
                raise SchemaError(
                    RejectReason.INCONSISTENT, f"info[{name!r}] is {arr.shape}, not (n, *shape)"
                )

    def __len__(self) -> int:
        return self.event.n_steps

    @property
    def layout(self) -> Layout:
        return Layout(
            observation=tuple(self.observation.shape[1:]),
            action=tuple(self.action.shape[1:]),
            cameras={
                name: (int(a.shape[1]), int(a.shape[2]), int(a.shape[3]))
                for name, a in self.images.items()
            },
            info={name: tuple(a.shape[1:]) for name, a in self.info.items()},
        )

    @property
    def robot_id(self) -> str:
        return self.event.robot_id

    def as_columns(self) -> dict[str, npt.NDArray[np.generic]]:
        """Flat ``name -> array`` view (``robot_id`` and ``incarnation`` broadcast to
        (n,)), images and info excluded: the shape ``learners.core.StepBatch.from_columns``
        takes."""
        out: dict[str, npt.NDArray[np.generic]] = {
            "robot_id": np.full(len(self), self.event.robot_id),
            "incarnation": np.full(len(self), self.event.incarnation),
        }
        for f, col in columns(type(self)):
            if col.kind not in (Kind.IMAGES, Kind.FINAL_IMAGES, Kind.INFO):
                out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True, kw_only=True, eq=False)
class TransitionBatch(StepColumns[TransitionBatchV2]):
    """Raw steps of one robot, as the agent recorded them (``transitions.raw``)."""

    @classmethod
    def build(
        cls,
        event: TransitionBatchV2,
        *,
        episode_id: npt.ArrayLike,
        step: npt.ArrayLike,
        seq: npt.ArrayLike,
        observation: npt.ArrayLike,
        action: npt.ArrayLike,
        policy_version: npt.ArrayLike,
        observed_ns: npt.ArrayLike,
        acted_ns: npt.ArrayLike | None = None,
        intervention: npt.ArrayLike | None = None,
        policy_action: npt.ArrayLike | None = None,
        truncated: npt.ArrayLike | None = None,
        final_observation: npt.ArrayLike | None = None,
        end_reason: npt.ArrayLike | None = None,
        images: Mapping[str, npt.ArrayLike] | None = None,
        final_images: Mapping[str, npt.ArrayLike] | None = None,
        info: Mapping[str, npt.ArrayLike] | None = None,
    ) -> TransitionBatch:
        """A batch with the optional columns defaulted: no interventions (then no
        policy actions), no truncation (then no final observations), no end reasons, no
        cameras, no info; ``acted_ns = observed_ns``."""
        # _defaults returns exactly the declared fields; __post_init__ checks their types.
        return cls(event=event, **_defaults(  # type: ignore[arg-type]
            event.n_steps, episode_id=episode_id, step=step, seq=seq, observation=observation,
            action=action, policy_version=policy_version, observed_ns=observed_ns,
            acted_ns=acted_ns, intervention=intervention, policy_action=policy_action,
            truncated=truncated, final_observation=final_observation, end_reason=end_reason,
            images=images, final_images=final_images, info=info,
        ))


@dataclass(frozen=True, kw_only=True, eq=False)
class RewardedTransitionBatch(StepColumns[RewardedTransitionBatchV2]):
    """Steps with one reward function's verdict (``transitions``).

    ``terminated`` is a true end (do not bootstrap); a learner's "truncated" is
    ``truncated & ~terminated`` (:attr:`cut_off`).
    """

    LABELS: ClassVar[tuple[str, ...]] = ("robot_id", "incarnation", "reward_fn")

    reward: F32 = field(metadata=_col(Kind.SCALAR, "(n,) reward for the step", finite=True))
    success: BOOL = field(metadata=_col(Kind.SCALAR, "(n,) task solved at this step",
                                        dtype="bool"))
    terminated: BOOL = field(
        metadata=_col(Kind.SCALAR, "(n,) the episode truly ended after this step", dtype="bool")
    )

    @property
    def reward_fn(self) -> str:
        return self.event.reward_fn

    @property
    def cut_off(self) -> BOOL:
        """Steps that end an episode without a true end: bootstrap from the final obs."""
        return self.truncated & ~self.terminated

    @classmethod
    def from_raw(
        cls,
        raw: TransitionBatch,
        *,
        reward_fn: str,
        reward: npt.ArrayLike,
        success: npt.ArrayLike,
        terminated: npt.ArrayLike,
    ) -> RewardedTransitionBatch:
        """The raw batch's steps with rewards; the header keeps the raw batch's ids and
        step identity (incarnation; every row's ``seq``) unchanged."""
        e = raw.event
        event = RewardedTransitionBatchV2(
            site=e.site, robot_id=e.robot_id, experiment_id=e.experiment_id,
            robot_type=e.robot_type, n_steps=e.n_steps, incarnation=e.incarnation,
            reward_fn=reward_fn, raw_event_id=e.event_id, instruction=e.instruction,
        )
        shared = {
            f.name: getattr(raw, f.name)
            for f in dataclasses.fields(StepColumns) if f.name != "event"
        }
        out = cls(event=event, reward=np.asarray(reward, np.float32),
                  success=np.asarray(success, np.bool_),
                  terminated=np.asarray(terminated, np.bool_), **shared)
        decoded_from = raw.__dict__.get(_ARROW_MEMO)
        if decoded_from is not None:  # to_arrow reuses the raw batch's Arrow columns
            object.__setattr__(out, _RAW_MEMO, decoded_from)
        return out


AnyBatch = TransitionBatch | RewardedTransitionBatch

#: Which batch class carries which header schema.
BATCH_CLASSES: dict[str, type[TransitionBatch] | type[RewardedTransitionBatch]] = {
    "transition_batch": TransitionBatch,
    "rewarded_transition_batch": RewardedTransitionBatch,
}


_COLUMNS: dict[type, tuple[tuple[dataclasses.Field[object], Column], ...]] = {}


def columns(cls: type) -> tuple[tuple[dataclasses.Field[object], Column], ...]:
    """The declared columns of a batch class, in order."""
    if cls not in _COLUMNS:
        _COLUMNS[cls] = tuple(
            (f, f.metadata["column"]) for f in dataclasses.fields(cls)
            if isinstance(f.metadata.get("column"), Column)
        )
    return _COLUMNS[cls]


def _check_finals(images: Mapping[str, U8], finals: Mapping[str, U8], k: int) -> None:
    for cam, final in finals.items():
        expected = (k, *images[cam].shape[1:])
        if final.shape != expected:
            raise SchemaError(
                RejectReason.INCONSISTENT,
                f"final_images[{cam!r}] is {final.shape}, expected {expected}",
            )


def _as_array(value: object, dtype: str, name: str) -> npt.NDArray[np.generic]:
    try:
        if dtype == "str":
            arr = np.asarray(value)
            if arr.dtype.kind != "U":
                arr = arr.astype(np.str_)
            return arr
        arr = np.asarray(value)
        if arr.dtype != np.dtype(dtype):
            if dtype == "bool" and arr.dtype.kind not in "bui":
                raise TypeError(f"{arr.dtype} is not boolean")
            arr = arr.astype(dtype)
        return arr
    except (TypeError, ValueError) as exc:
        raise SchemaError(RejectReason.INVALID_FIELD, f"{name}: {exc}") from None


def _defaults(n: int, **given: object) -> dict[str, object]:
    out = dict(given)
    action = np.asarray(given["action"], np.float32)
    observation = np.asarray(given["observation"], np.float32)
    if out["acted_ns"] is None:
        out["acted_ns"] = given["observed_ns"]
    if out["intervention"] is None:
        out["intervention"] = np.zeros(n, np.bool_)
    if out["policy_action"] is None:
        if np.asarray(out["intervention"]).any():
            raise SchemaError(RejectReason.CONTRACT,
                              "intervention rows need the policy's proposal (policy_action)")
        out["policy_action"] = np.zeros_like(action)
    if out["truncated"] is None:
        out["truncated"] = np.zeros(n, np.bool_)
    if out["final_observation"] is None:
        k = int(np.count_nonzero(np.asarray(out["truncated"])))
        out["final_observation"] = np.zeros((k, *observation.shape[1:]), np.float32)
    if out["end_reason"] is None:
        out["end_reason"] = np.full(n, "")
    images = given["images"] or {}
    assert isinstance(images, Mapping)
    out["images"] = images
    if out["final_images"] is None:
        k = int(np.count_nonzero(np.asarray(out["truncated"])))
        out["final_images"] = {
            name: np.zeros((k, *np.shape(img)[1:]), np.uint8) for name, img in images.items()
        }
    out["info"] = given["info"] or {}
    return out


# -- the Arrow schema, derived ------------------------------------------------------------


def _shape_meta(shape: tuple[int, ...]) -> dict[bytes, bytes]:
    return {META_SHAPE: json.dumps(list(shape)).encode()}


def _fsl(value: pa.DataType, shape: tuple[int, ...]) -> pa.DataType:
    return pa.list_(value, math.prod(shape))


@functools.lru_cache(maxsize=64)
def _arrow_type(col: Column) -> pa.DataType:
    if col.timestamp:
        return pa.timestamp("ns", tz="UTC")
    return pa.from_numpy_dtype(np.dtype(col.dtype))


def _field(name: str, col: Column, layout: Layout) -> pa.Field:
    kind = col.kind
    if kind == Kind.STRING:
        return pa.field(name, pa.dictionary(pa.int32(), pa.string()), nullable=False)
    if kind == Kind.SCALAR:
        return pa.field(name, _arrow_type(col), nullable=False)
    if kind in (Kind.VECTOR, Kind.FINAL):
        shape = layout.shape(col.shape_of)
        return pa.field(name, _fsl(pa.float32(), shape), nullable=bool(col.where),
                        metadata=_shape_meta(shape))
    if kind == Kind.IMAGES:
        subs = [pa.field(cam, _fsl(pa.uint8(), s), nullable=False, metadata=_shape_meta(s))
                for cam, s in layout.cameras.items()]
    elif kind == Kind.FINAL_IMAGES:
        subs = [pa.field(cam, pa.binary(), nullable=True, metadata=_shape_meta(s))
                for cam, s in layout.cameras.items()]
    else:
        subs = [pa.field(key, _fsl(pa.float32(), s), nullable=False, metadata=_shape_meta(s))
                for key, s in layout.info.items()]
    return pa.field(name, pa.struct(subs), nullable=False)


def arrow_schema(
    cls: type[TransitionBatch] | type[RewardedTransitionBatch], layout: Layout | RobotSpec
) -> pa.Schema:
    """The Arrow schema of ``cls`` batches with ``layout``'s shapes.

    The one place the Arrow form is defined: label columns first, then every declared
    column in field order; struct columns (images, info) are left out when empty.
    Metadata (the header) is attached per batch by :func:`to_arrow`.
    """
    if isinstance(layout, RobotSpec):
        layout = Layout.of_robot(layout)
    key = (cls, layout.observation, layout.action, tuple(layout.cameras.items()),
           tuple(layout.info.items()))
    if key not in _SCHEMAS:
        if len(_SCHEMAS) > 256:
            _SCHEMAS.clear()
        _SCHEMAS[key] = _derive_schema(cls, layout)
    return _SCHEMAS[key]


_SCHEMAS: dict[tuple[object, ...], pa.Schema] = {}


def _derive_schema(
    cls: type[TransitionBatch] | type[RewardedTransitionBatch], layout: Layout
) -> pa.Schema:
    fields = [pa.field(label, pa.dictionary(pa.int32(), pa.string()), nullable=False)
              for label in cls.LABELS]
    for f, col in columns(cls):
        pa_field = _field(f.name, col, layout)
        if pa.types.is_struct(pa_field.type) and pa_field.type.num_fields == 0:
            continue
        fields.append(pa_field)
    return pa.schema(fields)


# -- numpy -> Arrow -----------------------------------------------------------------------


def _flat(arr: npt.NDArray[np.generic], value_type: pa.DataType) -> pa.Array:
    return pa.array(np.ascontiguousarray(arr).reshape(-1), type=value_type)


def _vector(arr: npt.NDArray[np.generic], typ: pa.DataType, valid: BOOL | None) -> pa.Array:
    values = _flat(arr, typ.value_type)
    mask = None
    if valid is not None and not valid.all():
        mask = _all_true(len(valid)) if not valid.any() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, type=typ, mask=mask)


@functools.lru_cache(maxsize=64)
def _all_true(n: int) -> pa.Array:
    """(n,) true booleans: the null mask of a column null on every row (immutable, so one
    per batch length serves every batch)."""
    return pa.array(np.ones(n, np.bool_))


def _scalar(value: npt.NDArray[np.generic], typ: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(typ):
        # int64 ns as the timestamp type directly (pa.array's conversion is 20x slower).
        data = np.ascontiguousarray(value, np.int64)
        return pa.Array.from_buffers(typ, len(data), [None, pa.py_buffer(data)])
    return pa.array(value, type=typ)


def _binary_rows(arr: U8, valid: BOOL) -> pa.Array:
    """A binary array holding one row of ``arr`` per true ``valid`` entry, null elsewhere."""
    n = len(valid)
    row = int(math.prod(arr.shape[1:]))
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(valid.astype(np.int32) * row, out=offsets[1:])
    validity = pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(
        pa.binary(), n,
        [validity, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(arr))],
        null_count=n - int(np.count_nonzero(valid)),
    )


@functools.lru_cache(maxsize=1024)
def _constant_strings(value: str, n: int) -> pa.Array:
    """(n,) dictionary<int32, string> holding ``value`` on every row.  Arrow arrays are
    immutable, so one serves every batch of a robot (labels) and length."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                          pa.array([value], pa.string()))


def _dictionary(value: npt.NDArray[np.str_]) -> pa.Array:
    """(n,) strings as dictionary<int32, string>.  Per-step strings change rarely within a
    batch (an episode id, an end reason on an episode's last step), so they are coded run
    by run: one vectorised comparison finds the runs, and Python touches one value per run,
    never one per step."""
    n = value.shape[0]
    if n == 0:
        return pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))
    starts = np.flatnonzero(value[1:] != value[:-1]) + 1
    if not len(starts):
        return _constant_strings(str(value[0]), n)
    bounds = np.concatenate(([0], starts, [n]))
    code_of: dict[str, int] = {}
    codes = [code_of.setdefault(w, len(code_of)) for w in value[bounds[:-1]].tolist()]
    indices = np.repeat(np.asarray(codes, np.int32), np.diff(bounds))
    return pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(list(code_of), pa.string()))


def to_arrow(batch: AnyBatch) -> pa.RecordBatch:
    """The batch as one Arrow record batch; the header is in the schema metadata."""
    cls = type(batch)
    schema = arrow_schema(cls, batch.layout)
    meta = {
        META_SCHEMA: batch.event.schema_name.encode(),
        META_VERSION: str(batch.event.schema_version).encode(),
        META_EVENT: batch.event.model_dump_json().encode(),
    }
    decoded_from = batch.__dict__.get(_ARROW_MEMO)
    if decoded_from is not None:  # the columns it was decoded from (from_arrow)
        return pa.RecordBatch.from_arrays(decoded_from, schema=schema.with_metadata(meta))
    n = len(batch)
    raw_columns = batch.__dict__.get(_RAW_MEMO)
    if raw_columns is not None:
        # A rewarded batch of a decoded raw batch (from_raw): the raw columns as they came,
        # the reward function's label after the raw labels, its scalar columns at the end.
        plan = _plan(cls, schema)
        tail = plan[len(raw_columns) - len(TransitionBatch.LABELS):]
        if all(col.kind == Kind.SCALAR for _, col, _ in tail):
            labels = len(TransitionBatch.LABELS)
            reused = [*raw_columns[:labels],
                      *(_constant_strings(getattr(batch.event, label), n)
                        for label in cls.LABELS[labels:]),
                      *raw_columns[labels:],
                      *(_scalar(getattr(batch, f.name), typ) for f, _, typ in tail)]
            return pa.RecordBatch.from_arrays(reused, schema=schema.with_metadata(meta))
    arrays: list[pa.Array] = [_constant_strings(getattr(batch.event, label), n)
                              for label in cls.LABELS]
    for f, col, typ in _plan(cls, schema):
        value = getattr(batch, f.name)
        valid: BOOL | None = getattr(batch, col.where) if col.where else None
        if col.kind == Kind.STRING:
            arrays.append(_dictionary(value))
        elif col.kind == Kind.SCALAR:
            arrays.append(_scalar(value, typ))
        elif col.kind == Kind.VECTOR:
            arrays.append(_vector(value, typ, valid))
        elif col.kind == Kind.FINAL:
            assert valid is not None
            full = np.zeros((n, *value.shape[1:]), np.float32)
            full[valid] = value
            arrays.append(_vector(full, typ, valid))
        elif col.kind == Kind.FINAL_IMAGES:
            assert valid is not None
            subs = [_binary_rows(value[sub.name], valid) for sub in typ]
            arrays.append(pa.StructArray.from_arrays(subs, fields=list(typ)))
        else:  # IMAGES, INFO
            subs = [_vector(value[sub.name], sub.type, None) for sub in typ]
            arrays.append(pa.StructArray.from_arrays(subs, fields=list(typ)))
    return pa.RecordBatch.from_arrays(arrays, schema=schema.with_metadata(meta))


def _plan(cls: type, schema: pa.Schema
          ) -> tuple[tuple[dataclasses.Field[object], Column, pa.DataType], ...]:
    """The declared columns of ``cls`` that ``schema`` holds, with their Arrow types:
    worked out once per schema (schemas are cached per layout by :func:`arrow_schema`)."""
    key = id(schema)
    hit = _PLANS.get(key)
    if hit is None or hit[0] is not schema:
        names = set(schema.names)
        plan = tuple((f, col, schema.field(f.name).type) for f, col in columns(cls)
                     if f.name in names)
        if len(_PLANS) > 256:
            _PLANS.clear()
        hit = _PLANS[key] = (schema, plan)
    return hit[1]


_PLANS: dict[int, tuple[pa.Schema, tuple[tuple[dataclasses.Field[object], Column,
                                               pa.DataType], ...]]] = {}


# -- Arrow -> numpy -----------------------------------------------------------------------


def _bad(detail: str) -> SchemaError:
    return SchemaError(RejectReason.ARROW_SCHEMA, detail)


@functools.lru_cache(maxsize=1024)
def _parse_shape(raw: bytes) -> tuple[int, ...]:
    """A column's shape metadata (``b"[84,84,3]"``); raises ValueError/TypeError.  Cached:
    every batch of a layout carries the same few values."""
    return tuple(int(d) for d in json.loads(raw))


def _shape_of(pa_field: pa.Field, size: int) -> tuple[int, ...]:
    meta = pa_field.metadata or {}
    if META_SHAPE not in meta:
        return (size,)
    try:
        shape = _parse_shape(meta[META_SHAPE])
    except (ValueError, TypeError) as exc:
        raise _bad(f"column {pa_field.name}: unreadable shape metadata ({exc})") from None
    if math.prod(shape) != size or any(d <= 0 for d in shape):
        raise _bad(f"column {pa_field.name}: shape {shape} does not hold {size} values")
    return shape


def _no_nulls(arr: pa.Array, name: str) -> None:
    if arr.null_count:
        raise SchemaError(RejectReason.NULL_VALUES, f"column {name} has {arr.null_count} nulls")


def _read_vector(arr: pa.Array, pa_field: pa.Field, value_type: pa.DataType,
                 nullable: bool) -> npt.NDArray[np.generic]:
    name = pa_field.name
    typ = arr.type
    if not pa.types.is_fixed_size_list(typ) or typ.value_type != value_type:
        raise _bad(f"column {name} is {typ}, expected fixed_size_list<{value_type}>")
    if not nullable:
        _no_nulls(arr, name)
    size = typ.list_size
    shape = _shape_of(pa_field, size)
    values = arr.values.slice(arr.offset * size, len(arr) * size)
    if values.null_count:
        raise SchemaError(RejectReason.NULL_VALUES, f"column {name} has null elements")
    flat: npt.NDArray[np.generic] = values.to_numpy(zero_copy_only=True)
    return flat.reshape(len(arr), *shape)


def _read_strings(arr: pa.Array, name: str) -> npt.NDArray[np.str_]:
    _no_nulls(arr, name)
    if pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type):
        words = arr.dictionary.to_numpy(zero_copy_only=False).astype(np.str_)
        idx = arr.indices.to_numpy(zero_copy_only=False)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(words)):
            raise _bad(f"column {name}: dictionary index out of range")
        if len(words) == 1:  # a constant column (labels; one episode): no gather
            return np.full(len(idx), words[0])
        picked: npt.NDArray[np.str_] = words[idx] if len(words) else np.zeros(0, np.str_)
        return picked
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        text: npt.NDArray[np.str_] = arr.to_numpy(zero_copy_only=False).astype(np.str_)
        return text
    raise _bad(f"column {name} is {arr.type}, expected strings")


def _label_values(arr: pa.Array, name: str) -> list[str]:
    """The distinct values of a label column (constant per batch when well formed)."""
    if (pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type)
            and len(arr.dictionary) == 1 and not arr.null_count):
        idx = arr.indices.to_numpy(zero_copy_only=False)
        if not idx.any():  # every row holds the one word
            return [str(arr.dictionary[0])] if len(idx) else []
    values: list[str] = np.unique(_read_strings(arr, name)).tolist()
    return values


def _read_scalar(arr: pa.Array, name: str, col: Column) -> npt.NDArray[np.generic]:
    want = _arrow_type(col)
    if arr.type != want:
        raise _bad(f"column {name} is {arr.type}, expected {want}")
    _no_nulls(arr, name)
    if col.timestamp:
        arr = arr.view(pa.int64())
    out: npt.NDArray[np.generic] = arr.to_numpy(zero_copy_only=False)
    return out


_BOOL_COLUMN = Column(Kind.SCALAR, dtype="bool")


def _present(arr: pa.Array) -> BOOL:
    """(n,) bool: the rows of ``arr`` that hold a value (its validity bitmap, unpacked)."""
    bitmap = arr.buffers()[0]
    if bitmap is None:
        return np.full(len(arr), arr.null_count == 0)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    present: BOOL = bits[arr.offset: arr.offset + len(arr)].astype(np.bool_)
    return present


def _present_exactly(arr: pa.Array, valid: BOOL) -> bool:
    """Whether ``arr`` holds a value exactly on the rows where ``valid``; the null count
    settles the common cases (no row, every row) without building a mask."""
    k = int(np.count_nonzero(valid))
    nulls = arr.null_count
    if nulls != len(arr) - k:
        return False
    if nulls == 0 or k == 0:
        return True
    return bool(np.array_equal(_present(arr), valid))


def _read_binary_rows(arr: pa.Array, pa_field: pa.Field, valid: BOOL) -> U8:
    name = pa_field.name
    if arr.type != pa.binary():
        raise _bad(f"final image {name} is {arr.type}, expected binary")
    meta = pa_field.metadata or {}
    if META_SHAPE not in meta:
        raise _bad(f"final image {name} has no shape metadata")
    h, w, c = _parse_shape(meta[META_SHAPE])
    row = h * w * c
    if not _present_exactly(arr, valid):
        raise SchemaError(RejectReason.INCONSISTENT,
                          f"final image {name} is present on other rows than truncated ones")
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[arr.offset: arr.offset + len(arr) + 1]
    sizes = np.diff(offsets)
    if np.any(sizes[valid] != row):
        raise SchemaError(RejectReason.INCONSISTENT, f"final image {name} rows are not {h}x{w}x3")
    k = int(np.count_nonzero(valid))
    if k == 0:
        return np.zeros((0, h, w, c), np.uint8)
    data = np.frombuffer(data_buf, np.uint8)[offsets[0]: offsets[-1]]
    # Null rows may still own bytes when written by another tool: keep the valid rows.
    if data.size != k * row:
        rows = [data[o - offsets[0]: o - offsets[0] + row] for o in offsets[:-1][valid]]
        data = np.concatenate(rows)
    return data.reshape(k, h, w, c)


def from_arrow(
    rb: pa.RecordBatch, *, registry: Registry = REGISTRY
) -> AnyBatch:
    """Decode a record batch written by :func:`to_arrow` (or any writer of the same
    columns).  Raises ``SchemaError``: unreadable header, missing or mistyped column,
    nulls, labels that disagree with the header, inconsistent shapes."""
    meta = rb.schema.metadata or {}
    if META_SCHEMA not in meta or META_VERSION not in meta or META_EVENT not in meta:
        raise SchemaError(RejectReason.NO_SCHEMA, "Arrow metadata carries no event header")
    try:
        name = meta[META_SCHEMA].decode()
        version = int(meta[META_VERSION])
        payload = json.loads(meta[META_EVENT])
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(RejectReason.NOT_JSON, f"Arrow event header: {exc}") from None
    if not isinstance(payload, dict):
        raise SchemaError(RejectReason.NOT_OBJECT, "Arrow event header is not a JSON object")
    if name not in BATCH_CLASSES:
        raise SchemaError(RejectReason.WRONG_TOPIC, f"{name!r} is not a transition batch")
    event = registry.load(name, version, payload)
    cls = BATCH_CLASSES[name]
    if not isinstance(event, (TransitionBatchV2, RewardedTransitionBatchV2)):
        raise SchemaError(RejectReason.UNKNOWN_SCHEMA, f"{name!r} is not a batch header")
    n = rb.num_rows
    if n != event.n_steps:
        raise SchemaError(RejectReason.LENGTH_MISMATCH,
                          f"header says {event.n_steps} steps, the batch has {n} rows")
    if version == 1:
        rb = _rows_v1_to_v2(rb)
    schema = rb.schema
    names = set(schema.names)
    for label in cls.LABELS:
        if label not in names:
            raise _bad(f"no column {label}")
        got = _label_values(rb.column(label), label)
        want = getattr(event, label)
        if got != [want]:
            raise SchemaError(RejectReason.INCONSISTENT,
                              f"column {label} holds {got[:3]}, the header {want!r}")
    masks: dict[str, BOOL] = {}

    def mask(name: str) -> BOOL:
        if name not in masks:
            if name not in names:
                raise _bad(f"no column {name}")
            masks[name] = np.asarray(_read_scalar(rb.column(name), name, _BOOL_COLUMN),
                                     np.bool_)
        return masks[name]

    kwargs: dict[str, object] = {"event": event}
    for f, col in columns(cls):
        if f.name not in names:
            if col.kind in (Kind.IMAGES, Kind.FINAL_IMAGES, Kind.INFO):
                kwargs[f.name] = {}
                continue
            raise _bad(f"no column {f.name}")
        arr = rb.column(f.name)
        pa_field = schema.field(f.name)
        if col.kind == Kind.STRING:
            kwargs[f.name] = _read_strings(arr, f.name)
        elif col.kind == Kind.SCALAR:
            kwargs[f.name] = (mask(f.name) if col.dtype == "bool"
                              else _read_scalar(arr, f.name, col))
        elif col.kind == Kind.VECTOR:
            vec = _read_vector(arr, pa_field, pa.float32(), nullable=bool(col.where))
            if col.where and not _present_exactly(arr, mask(col.where)):
                # policy_action: the intervention contract (module docstring).
                raise SchemaError(
                    RejectReason.CONTRACT if col.where == "intervention"
                    else RejectReason.INCONSISTENT,
                    f"{f.name} is present on other rows than {col.where}")
            kwargs[f.name] = vec
        elif col.kind == Kind.FINAL:
            vec = _read_vector(arr, pa_field, pa.float32(), nullable=True)
            valid = mask(col.where)
            if not _present_exactly(arr, valid):
                raise SchemaError(RejectReason.INCONSISTENT,
                                  f"{f.name} is present on other rows than {col.where}")
            kwargs[f.name] = vec[valid]
        else:
            if not pa.types.is_struct(arr.type):
                raise _bad(f"column {f.name} is {arr.type}, expected a struct")
            _no_nulls(arr, f.name)
            out: dict[str, npt.NDArray[np.generic]] = {}
            for i, sub in enumerate(arr.type):
                child = arr.field(i)
                if col.kind == Kind.FINAL_IMAGES:
                    out[sub.name] = _read_binary_rows(child, sub, mask(col.where))
                else:
                    value_type = pa.uint8() if col.kind == Kind.IMAGES else pa.float32()
                    out[sub.name] = _read_vector(child, sub, value_type, nullable=False)
            kwargs[f.name] = out
    # kwargs holds exactly the declared fields, each read and typed above.
    batch = cls(**kwargs)  # type: ignore[arg-type]
    if version != 1 and schema.equals(arrow_schema(cls, batch.layout), check_metadata=False):
        # The decoded arrays are read-only views of these columns: to_arrow of this batch
        # (the sink's rows, a re-send) reuses them instead of building them again.
        object.__setattr__(batch, _ARROW_MEMO, rb.columns)
    return batch


#: Instance attribute holding the Arrow columns a decoded batch's arrays are views of.
_ARROW_MEMO = "_arrow_columns"
#: The same, on a rewarded batch made from a decoded raw batch: the raw batch's columns.
_RAW_MEMO = "_raw_arrow_columns"


def _rows_v1_to_v2(rb: pa.RecordBatch) -> pa.RecordBatch:
    """V1 rows as V2 rows (module docstring): the step identity is
    ``(robot_id, "v1", observed_ns)``; where ``intervention`` the executed action is V1's
    ``human_action`` and the policy's proposal V1's ``action``; no end reasons.  Raises
    ``SchemaError`` when the V1 columns are not there or not of their V1 types."""
    names = rb.schema.names
    for need in ("action", "human_action", "intervention", "observed_ns"):
        if need not in names:
            raise _bad(f"no column {need} (a V1 batch)")
    n = rb.num_rows
    took = rb.column("intervention")
    proposal = rb.column("action")
    if not pa.types.is_fixed_size_list(proposal.type) or took.type != pa.bool_():
        raise _bad(f"V1 columns action {proposal.type}, intervention {took.type}: "
                   "expected fixed_size_list and bool")
    try:
        executed = pc.if_else(took, rb.column("human_action"), proposal)
        size = proposal.type.list_size
        # Null rows must not own null elements: the reader refuses those.
        policy_action = pa.FixedSizeListArray.from_arrays(
            proposal.values.slice(proposal.offset * size, n * size), type=proposal.type,
            mask=pc.invert(took.fill_null(False)))
        seq = rb.column("observed_ns").cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise _bad(f"V1 columns cannot be upcast: {exc}") from None
    schema = rb.schema
    arrays = {name: rb.column(name) for name in names}
    fields = {name: schema.field(name) for name in names}
    arrays["action"] = executed
    arrays["policy_action"] = policy_action
    fields["policy_action"] = schema.field("human_action").with_name("policy_action")
    del arrays["human_action"], fields["human_action"]
    arrays["incarnation"] = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, np.int32)), pa.array([V1_INCARNATION], pa.string()))
    arrays["seq"] = seq
    arrays["end_reason"] = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, np.int32)), pa.array([""], pa.string()))
    for name in ("incarnation", "seq", "end_reason"):
        fields[name] = pa.field(name, arrays[name].type, nullable=False)
    return pa.RecordBatch.from_arrays(
        list(arrays.values()), schema=pa.schema([fields[k] for k in arrays], schema.metadata))


# -- content checks (pure; used by consumers and, optionally, producers) ------------------


def check_content(batch: AnyBatch) -> None:
    """Refuse values no consumer should see: NaN/inf, negative steps, sequence numbers or
    versions, steps that do not increase within an episode, a ``seq`` twice in the batch
    (two rows with one step identity), and rows that break the episode-end contract (an
    ``end_reason`` that is not an :class:`~schemas.events.EpisodeEndReason`, or on a
    step that does not end its episode: ``CONTRACT``).  The intervention contract
    (``policy_action`` present exactly where ``intervention``) is the Arrow reader's and
    the builder's to enforce.  Raises ``SchemaError``."""
    for f, col in columns(type(batch)):
        if not col.finite:
            continue
        value = getattr(batch, f.name)
        arrays = value.items() if isinstance(value, Mapping) else [("", value)]
        for key, arr in arrays:
            if col.where and col.kind == Kind.VECTOR:
                arr = arr[getattr(batch, col.where)]
            bad = ~np.isfinite(arr)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                label = f"{f.name}[{key!r}]" if key else f.name
                raise SchemaError(
                    RejectReason.NON_FINITE,
                    f"{label} has {int(bad.sum())} non-finite values (first in row {row})",
                )
    if (batch.step < 0).any():
        raise SchemaError(RejectReason.INVALID_FIELD, "step has negative values")
    if (batch.seq < 0).any():
        raise SchemaError(RejectReason.INVALID_FIELD, "seq has negative values")
    if len(np.unique(batch.seq)) != len(batch.seq):
        raise SchemaError(RejectReason.INCONSISTENT,
                          "two rows share a seq: one incarnation's steps are numbered once")
    ended = batch.end_reason != ""
    if (ended & ~batch.truncated).any():
        row = int(np.argmax(ended & ~batch.truncated))
        raise SchemaError(RejectReason.CONTRACT,
                          f"row {row} has end_reason {str(batch.end_reason[row])[:40]!r} but "
                          "does not end its episode (truncated is false)")
    unknown = set(np.unique(batch.end_reason[ended]).tolist()) - _END_REASONS
    if unknown:
        raise SchemaError(RejectReason.CONTRACT,
                          f"end_reason {sorted(unknown)[0][:40]!r} is not an episode end "
                          f"reason ({', '.join(sorted(_END_REASONS))})")
    if (batch.policy_version < 0).any():
        raise SchemaError(RejectReason.INVALID_FIELD, "policy_version has negative values")
    same = batch.episode_id[1:] == batch.episode_id[:-1]
    if (same & (batch.step[1:] <= batch.step[:-1])).any():
        raise SchemaError(RejectReason.INCONSISTENT, "steps do not increase within an episode")
    if (same & batch.truncated[:-1]).any():
        raise SchemaError(RejectReason.INCONSISTENT,
                          "a truncated step is followed by a step of the same episode")


#: What ``end_reason`` may say on an episode's last step.
_END_REASONS = frozenset(r.value for r in EpisodeEndReason)


def outside_bounds(spec: ArraySpec, arr: F32) -> npt.NDArray[np.bool_]:
    """Per element of ``arr`` (one row per step): is it outside ``spec``'s announced
    bounds, give or take :data:`BOUNDS_TOLERANCE`?  The one bounds rule, used on batches
    (:func:`check_against`) and on rows read back from the history alike."""
    flat = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))
    bad = np.zeros(flat.shape, dtype=bool)
    if flat.size == 0:
        return bad
    if spec.low is not None:
        bad |= flat < np.broadcast_to(np.asarray(spec.low, np.float32), flat.shape[1:]) \
            - BOUNDS_TOLERANCE
    if spec.high is not None:
        bad |= flat > np.broadcast_to(np.asarray(spec.high, np.float32), flat.shape[1:]) \
            + BOUNDS_TOLERANCE
    return bad


def _bounds(spec: ArraySpec, arr: F32, name: str) -> None:
    """Refuse values of ``arr`` (one row per step) outside ``spec``'s announced bounds
    (:func:`outside_bounds`); the detail names the column, row, element, value and bound."""
    flat = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))
    bad = outside_bounds(spec, flat)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        low = None if spec.low is None else float(
            np.broadcast_to(np.asarray(spec.low, np.float32), flat.shape[1:])[col])
        side, bound = (("low", low) if low is not None and flat[row, col] < low
                       else ("high", float(np.broadcast_to(
                           np.asarray(spec.high, np.float32), flat.shape[1:])[col])))
        raise SchemaError(
            RejectReason.OUT_OF_BOUNDS,
            f"{name}[{row}, {col}] = {flat[row, col]:g} is outside the announced "
            f"{side} bound {bound:g}",
        )


def check_against(batch: AnyBatch, robot: RobotSpec) -> None:
    """Refuse a batch that contradicts its robot's announced spec: robot type, shapes,
    cameras, info arrays, and the bounds of observations, info arrays and actions
    (``OUT_OF_BOUNDS``).  Raises ``SchemaError``."""
    def mismatch(detail: str) -> SchemaError:
        return SchemaError(RejectReason.SPEC_MISMATCH, f"robot {batch.robot_id}: {detail}")

    if batch.event.robot_type != robot.robot_type:
        raise mismatch(f"type {batch.event.robot_type!r}, announced {robot.robot_type!r}")
    got, want = batch.layout, Layout.of_robot(robot)
    for part in ("observation", "action"):
        if got.shape(part) != want.shape(part):
            raise mismatch(f"{part} shape {got.shape(part)}, announced {want.shape(part)}")
    if dict(got.cameras) != dict(want.cameras):
        raise mismatch(f"cameras {dict(got.cameras)}, announced {dict(want.cameras)}")
    if dict(got.info) != dict(want.info):
        raise mismatch(f"info {dict(got.info)}, announced {dict(want.info)}")
    _bounds(robot.observation, batch.observation, "observation")
    _bounds(robot.observation, batch.final_observation, "final_observation")
    for key, info_spec in robot.info.items():
        _bounds(info_spec, batch.info[key], f"info[{key!r}]")
    _bounds(robot.action, batch.action, "action")
    _bounds(robot.action, batch.policy_action[batch.intervention], "policy_action")
