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

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from learners.core import StepBatch
from learners.loop import Steps
from topics import tables

log = logging.getLogger(__name__)

#: Columns read from the ``transitions`` table.
COLUMNS = (
    "experiment_id", "robot_type", "robot_id", "episode_id", "step", "observation", "action",
    "reward", "success", "terminated", "truncated", "final_observation", "policy_version",
    "observed_ns", "intervention",
)
#: Columns read where the table has them: the step identity (absent from rows written
#: before it) and V1's ``human_action`` (the executed action of V1 intervention rows).
OPTIONAL = ("incarnation", "seq", "human_action")


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

    @property
    def rows(self) -> int:
        return 0 if self.table is None else self.table.num_rows

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
            for start in range(0, part.num_rows, chunk_rows):
                yield steps_of_rows(str(exp), str(robot_type), part.slice(start, chunk_rows))


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
) -> History:
    """The rows of ``experiments`` for ``reward_fn``, and the last offset of each of
    ``topic``'s ``partitions`` the same table version holds (the newest table version,
    or ``version``: a replay reads what a past warm start read). ``extra_columns`` are
    read too where the table has them (a replay's ``kafka_partition``/``kafka_offset``)."""
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
    table = dataset.to_table(
        columns=wanted,
        filter=pc.field(tables.PARTITION_COLUMN).isin(list(experiments))
        & (pc.field("reward_fn") == reward_fn),
    )
    table = tables.with_step_id(table)
    if "policy_action" in table.column_names:  # the learner trains on what was executed
        table = table.drop_columns(["policy_action"])
    return History(version=dt.version(), offsets=offsets, table=table,
                   read_s=time.perf_counter() - started)


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
