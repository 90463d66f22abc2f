"""Delta adapter: an experiment's rewarded steps from the history, at one table version.

Reads the ``transitions`` table the Delta sink writes (``topics.tables`` names it and
its app ids) by column name with ``deltalake``/pyarrow; never imports ``pipeline``.
Columns become numpy arrays with vectorised Arrow kernels (``list_flatten`` of the
list columns, dictionary-encoded strings), not per-row Python objects.

The same :class:`deltalake.DeltaTable` snapshot gives both the rows and the sink's app
transaction versions, so ``offsets`` says exactly which Kafka offsets the rows cover:
live reading continues at ``offsets[p] + 1``.

Rows read under today's contract whatever wrote them (``topics.tables.with_step_id``):
each carries its step identity and the executed action, with its ``intervention`` flag.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from learners.core import StepBatch
from learners.loop import Steps
from schemas import transitions
from schemas.spaces import RobotSpec
from topics import tables

log = logging.getLogger(__name__)

#: Columns read from the ``transitions`` table.
COLUMNS = (
    "experiment_id", "robot_type", "robot_id", "episode_id", "step", "observation", "action",
    "reward", "success", "terminated", "truncated", "final_observation", "policy_version",
    "observed_ns", "intervention",
)
#: Columns read where the table has them: the step identity (absent from rows written
#: before it), V1's ``human_action`` (the executed action of V1 intervention rows) and the
#: robot's ``instruction`` (absent before it was recorded: the experiment's default).
OPTIONAL = ("incarnation", "seq", "human_action", "instruction")


@dataclass(frozen=True)
class History:
    """Rows of the requested experiments at one Delta table version."""

    version: int | None
    """the table version read; None when the table does not exist yet."""
    offsets: dict[int, int] = field(default_factory=dict)
    """Kafka partition -> last offset the table holds (partitions the sink never wrote
    are absent)."""
    table: pa.Table | None = None
    read_s: float = 0.0
    refused: dict[str, int] = field(default_factory=dict)
    """robot id -> rows left out as outside the robot's announced bounds."""
    frames: _Frames | None = None
    """where each row's camera frames lie (read chunk by chunk; None: no cameras)."""

    @property
    def rows(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def with_frames(self, steps: Steps, rows: pa.Table) -> Steps:
        """``steps`` (of ``rows`` of this history's table) with their camera frames, when
        the history was read with cameras."""
        return steps if self.frames is None else self.frames.attach(steps, rows)

    def steps(self, chunk_rows: int = 65_536) -> Iterator[Steps]:
        """Each (experiment, robot type)'s rows, each stream's in the order taken (by
        step identity, not time), as :class:`Steps` of at most ``chunk_rows`` rows."""
        if self.table is None or self.table.num_rows == 0:
            return
        groups = self.table.group_by(["experiment_id", "robot_type"]).aggregate([])
        for exp, robot_type in zip(groups.column("experiment_id").to_pylist(),
                                   groups.column("robot_type").to_pylist(), strict=True):
            part = self.table.filter((pc.field("experiment_id") == exp)
                                     & (pc.field("robot_type") == robot_type))
            part = tables.sort_steps(part)
            rows = chunk_rows if self.frames is None else self.frames.chunk_rows(chunk_rows)
            for start in range(0, part.num_rows, rows):
                piece = part.slice(start, rows)
                steps = steps_of_rows(str(exp), str(robot_type), piece)
                if self.frames is not None:
                    steps = self.frames.attach(steps, piece)
                yield steps


#: Bytes of camera frames one history chunk holds at most (frames are read per chunk).
FRAME_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class _Frames:
    """Camera frames of history rows, read a chunk at a time: rows carry ``__fragment``
    (index into ``fragments``) and ``__row`` (row within that Parquet file), and only a
    chunk's frames are ever in memory, so a warm start never holds the whole history's
    images (DESIGN §5: the buffer's budget bounds them)."""

    fragments: list[pads.Fragment]
    cameras: tuple[str, ...]
    shape: tuple[int, int, int]
    """(h, w, 3) of every camera's frame (the experiment's observation spec)."""

    @property
    def row_bytes(self) -> int:
        """bytes of one row's frames (all cameras)."""
        return len(self.cameras) * int(np.prod(self.shape))

    def chunk_rows(self, rows: int) -> int:
        return max(1, min(rows, FRAME_CHUNK_BYTES // max(1, self.row_bytes)))

    def attach(self, steps: Steps, rows: pa.Table) -> Steps:
        """``steps`` with the frames (and final frames of truncated rows) of ``rows``."""
        n = rows.num_rows
        fragment = _numbers(rows.column("__fragment"), np.int64)
        row = _numbers(rows.column("__row"), np.int64)
        images: dict[str, np.ndarray] = {}
        finals: dict[str, np.ndarray] = {}
        for f in np.unique(fragment).tolist():
            here = np.flatnonzero(fragment == f)
            got = self.fragments[f].take(pa.array(row[here]),
                                         columns=["images", "final_images"])
            for column, out in (("images", images), ("final_images", finals)):
                structs = got.column(column).combine_chunks()
                for cam in self.cameras:
                    frames = _frames_of(structs, cam, self.shape)
                    if cam not in out:
                        out[cam] = np.zeros((n, *frames.shape[1:]), np.uint8)
                    elif out[cam].shape[1:] != frames.shape[1:]:
                        frames = np.zeros((len(here), 0), np.uint8)  # refused as a whole
                        out[cam] = np.zeros((n, 0), np.uint8)
                        continue
                    out[cam][here] = frames
        s = steps.steps
        return dataclasses.replace(steps, steps=dataclasses.replace(
            s, images=images, next_images=finals))


def _frames_of(structs: pa.Array, cam: str, shape: tuple[int, int, int]) -> np.ndarray:
    """(n, h, w, 3) uint8 of one camera of a frames struct column (null rows: zeros).
    Frames of another size come back flat (n, bytes), which the replay buffer refuses
    with a line naming the camera, as it refuses rows without the camera (n, 0)."""
    n = len(structs)
    if cam not in {f.name for f in structs.type}:
        return np.zeros((n, 0), np.uint8)
    arr = pc.struct_field(structs, cam)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not valid.any():
        return np.zeros((n, *shape), np.uint8)
    data = np.frombuffer(b"".join(arr.filter(pa.array(valid)).to_pylist()), np.uint8)
    size = data.size // int(valid.sum())
    out = np.zeros((n, size), np.uint8)
    out[valid] = data.reshape(-1, size)
    return out.reshape(n, *shape) if size == int(np.prod(shape)) else out


def read(
    root: Path | str,
    *,
    experiments: Sequence[str],
    reward_fn: str,
    topic: str,
    partitions: Sequence[int],
    sink_name: str,
    version: int | None = None,
    extra_columns: Sequence[str] = (),
    robots: Mapping[str, RobotSpec] | None = None,
    cameras: Sequence[str] = (),
    image_size: tuple[int, int] = (64, 64),
) -> History:
    """The rows of ``experiments`` for ``reward_fn``, and the last offset of each of
    ``topic``'s ``partitions`` the same table version holds (the newest table version,
    or ``version``: a replay reads what a past warm start read). ``extra_columns`` are
    read too where the table has them (a replay's ``kafka_partition``/``kafka_offset``).
    With ``robots`` (robot id -> announced spec), rows outside their robot's bounds are
    left out (:func:`within_bounds`; ``History.refused`` counts them).  With ``cameras``
    the rows locate their frames, which :meth:`History.steps` reads chunk by chunk."""
    started = time.perf_counter()
    path = tables.table_path(root, tables.TRANSITIONS)
    try:
        dt = DeltaTable(path, version=version)
    except TableNotFoundError:
        log.info("no Delta history at %s yet: starting from Kafka alone", path)
        return History(version=None)
    offsets: dict[int, int] = {}
    for p in partitions:
        version = dt.transaction_version(tables.app_id(sink_name, topic, p))
        if version is not None:
            offsets[p] = int(version)
    dataset = dt.to_pyarrow_dataset()
    wanted = [c for c in (*COLUMNS, *OPTIONAL, *extra_columns) if c in dataset.schema.names]
    missing = sorted(set(COLUMNS) - set(wanted))
    if missing:
        raise ValueError(f"Delta table {path} lacks columns {missing}: is it the sink's "
                         f"{tables.TRANSITIONS} table?")
    frames = None
    if cameras:
        table, fragments = _locating(dataset, wanted, experiments, reward_fn)
        frames = _Frames(fragments, tuple(cameras), (*image_size, 3))
    else:
        table = dataset.to_table(
            columns=wanted,
            filter=pc.field(tables.PARTITION_COLUMN).isin(list(experiments))
            & (pc.field("reward_fn") == reward_fn),
        )
    table = tables.with_step_id(table)
    if "policy_action" in table.column_names:  # the learner trains on what was executed
        table = table.drop_columns(["policy_action"])
    table, refused = within_bounds(table, robots or {})
    return History(version=dt.version(), offsets=offsets, table=table,
                   read_s=time.perf_counter() - started, refused=refused, frames=frames)


def _locating(dataset: pads.Dataset, columns: Sequence[str], experiments: Sequence[str],
              reward_fn: str) -> tuple[pa.Table, list[pads.Fragment]]:
    """The rows (``columns``, no frames) of ``experiments`` for ``reward_fn``, each with
    ``__fragment``/``__row``: where its frames lie."""
    fragments = list(dataset.get_fragments(
        filter=pc.field(tables.PARTITION_COLUMN).isin(list(experiments))))
    parts = []
    read = [*columns, "reward_fn"]
    for i, fragment in enumerate(fragments):
        part = fragment.to_table(columns=read, schema=dataset.schema)
        n = part.num_rows
        part = part.append_column("__fragment", pa.array(np.full(n, i, np.int64)))
        part = part.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
        parts.append(part.filter(pc.field("reward_fn") == reward_fn).drop_columns(["reward_fn"]))
    if not parts:
        schema = dataset.schema
        empty = pa.schema([schema.field(c) for c in columns]
                          + [pa.field("__fragment", pa.int64()), pa.field("__row", pa.int64())])
        return empty.empty_table(), fragments
    return pa.concat_tables(parts, promote_options="permissive"), fragments


def within_bounds(table: pa.Table, robots: Mapping[str, RobotSpec]
                  ) -> tuple[pa.Table, dict[str, int]]:
    """The rows of ``table`` inside their robot's announced bounds (observation, final
    observation and executed action; ``schemas.transitions.outside_bounds``), and how
    many rows of each robot were left out.  Rows of robots not in ``robots`` are kept.

    The sink dead-letters batches outside their bounds, so this only finds rows written
    before it did (or before their robot announced itself): the warm start drops them
    too, and records which robots' rows it dropped under which spec (lineage), so a
    replay drops the same ones."""
    if table.num_rows == 0 or not robots:
        return table, {}
    ids = table.column("robot_id").combine_chunks()
    keep = np.ones(table.num_rows, dtype=bool)
    refused: dict[str, int] = {}
    for robot_id in pc.unique(ids).to_pylist():
        spec = robots.get(str(robot_id))
        if spec is None:
            continue
        rows = np.flatnonzero(np.asarray(pc.equal(ids, robot_id).to_numpy(zero_copy_only=False)))
        part = table.take(pa.array(rows))
        bad = np.zeros(len(rows), dtype=bool)
        for column, array_spec in (("observation", spec.observation), ("action", spec.action)):
            bad |= transitions.outside_bounds(
                array_spec, _matrix(part.column(column), len(rows))).any(axis=1)
        finals = part.column("final_observation").combine_chunks()
        has_final = np.asarray(finals.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        if has_final.any():
            flat = _flat(pa.chunked_array([finals]))
            bad[has_final] |= transitions.outside_bounds(
                spec.observation, flat.reshape(int(has_final.sum()), -1)).any(axis=1)
        if bad.any():
            keep[rows[bad]] = False
            refused[str(robot_id)] = int(bad.sum())
    if not refused:
        return table, {}
    log.warning("warm start: %d history rows outside their robot's announced bounds left "
                "out (%s)", sum(refused.values()),
                ", ".join(f"{r}: {n}" for r, n in sorted(refused.items()))[:200])
    return table.filter(pa.array(keep)), refused


def steps_of_rows(experiment_id: str, robot_type: str, rows: pa.Table) -> Steps:
    """The :class:`Steps` of rows of one experiment and robot type."""
    n = rows.num_rows
    observation = _matrix(rows.column("observation"), n)
    truncated = _bools(rows.column("truncated"))
    terminated = _bools(rows.column("terminated"))
    next_observation = np.zeros_like(observation)
    finals = _flat(rows.column("final_observation"))
    k = int(truncated.sum())
    if k:
        next_observation[truncated] = finals.reshape(k, observation.shape[1])
    steps = StepBatch(
        robot_id=_strings(rows.column("robot_id")),
        episode_id=_strings(rows.column("episode_id")),
        step=_numbers(rows.column("step"), np.int64),
        observation=observation,
        action=_matrix(rows.column("action"), n),
        reward=_numbers(rows.column("reward"), np.float32),
        terminated=terminated,
        policy_version=_numbers(rows.column("policy_version"), np.int64),
        truncated=truncated & ~terminated,
        next_observation=next_observation,
        intervention=_bools(rows.column("intervention")),
        instruction=(_strings(rows.column("instruction").fill_null(""))
                     if "instruction" in rows.column_names else np.full(n, "")),
    )
    return Steps(experiment_id, robot_type, steps, _strings(rows.column("incarnation")),
                 _numbers(rows.column("seq"), np.int64), _bools(rows.column("success")))


def _flat(col: pa.ChunkedArray) -> np.ndarray:
    values = pc.list_flatten(col.combine_chunks())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)


def _matrix(col: pa.ChunkedArray, n: int) -> np.ndarray:
    flat = _flat(col)
    if n and flat.size % n:
        raise ValueError(f"column {col.type} rows have different lengths")
    return flat.reshape(n, -1) if n else flat.reshape(0, 0)


def _bools(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.combine_chunks().fill_null(False).to_numpy(zero_copy_only=False),
                      dtype=bool)


def _numbers(col: pa.ChunkedArray, dtype: type[np.generic]) -> np.ndarray:
    return np.asarray(col.combine_chunks().to_numpy(zero_copy_only=False), dtype=dtype)


def _strings(col: pa.ChunkedArray) -> np.ndarray:
    """A fixed-width numpy string array, via the dictionary (no per-row Python objects)."""
    encoded = pc.dictionary_encode(col.combine_chunks())
    words = np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False)).astype(np.str_)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    picked: np.ndarray = words[indices]
    return picked
