"""The Delta history's contract: what the sink writes and every reader looks up (DESIGN §4, §9).

The Delta sink, back-fill and replay (``pipeline``) write and reuse the history; learners
read it and the live stream.  They may not import each other (DESIGN §6), so everything
they must agree on lives here, beside the topic catalog, once:

* table names, the partition column, the default history root and sink name;
* how the sink names the app transaction recording how far it has written a partition
  (:func:`app_id`, used by the sink's writer, its seeks and the learner's warm start);
* the **step identity** :data:`STEP_ID` ``(robot_id, incarnation, seq)`` and the one
  **dedupe rule**, :class:`HighWater`: within one stream of steps (:data:`STREAM`: an
  experiment's robot incarnation, per reward function) ``seq`` only grows, and Kafka keeps
  a partition's order, so a step sent again (an agent's re-sent spool, a reward job's
  retry, a record both in Delta and read again from Kafka) has ``seq`` at or below the
  highest one already taken.  ``observed_ns`` is a timestamp, never an identity: clocks
  step back, and two agents claiming one robot are two incarnations, never merged.

Rows written before step identity existed have no ``incarnation``/``seq``; they read as the
V1 upcast does (``incarnation = "v1"``, ``seq = observed_ns``): :func:`with_step_id`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from schemas import events
from topics import catalog

#: The raw-steps table: one row per step a robot took (``transitions.raw``).
TRANSITIONS_RAW: Final = "transitions_raw"
#: The rewarded-transitions table: one row per step per reward function (``reward_fn``).
TRANSITIONS: Final = "transitions"
#: Episode started/ended events (``episodes``).
EPISODES: Final = "episodes"
#: Every published weights manifest (``weights.manifests``).
POLICIES: Final = "policies"

#: Which table each sunk topic fills (catalog topic name -> table name).
TABLE_OF_TOPIC: Final[dict[str, str]] = {
    catalog.TRANSITIONS_RAW.name: TRANSITIONS_RAW,
    catalog.TRANSITIONS.name: TRANSITIONS,
    catalog.EPISODES.name: EPISODES,
    catalog.WEIGHTS_MANIFESTS.name: POLICIES,
}

#: Tables of steps: their rows carry :data:`STEP_ID` and are deduplicated by it.
STEP_TABLES: Final = (TRANSITIONS_RAW, TRANSITIONS)

#: Every table is partitioned by this column, so one experiment's history is a prefix.
PARTITION_COLUMN: Final = "experiment_id"

#: A step's identity: the robot, the agent's incarnation that drove it, its number there.
STEP_ID: Final = ("robot_id", "incarnation", "seq")

#: One stream of steps whose ``seq`` only grows: a robot incarnation of an experiment,
#: per reward function (``""`` for raw steps).
STREAM: Final = ("experiment_id", "robot_id", "incarnation", "reward_fn")

#: A value of :data:`STREAM`.
Stream = tuple[str, str, str, str]

#: The incarnation of steps recorded before step identity existed (the V1 upcast);
#: their ``seq`` is their ``observed_ns``.
LEGACY_INCARNATION: Final = events.V1_INCARNATION

#: Row order that keeps each stream's steps in the order they were taken.
STEP_ORDER: Final = (PARTITION_COLUMN, "robot_id", "incarnation", "seq")


def user_home() -> Path:
    """The state directory every USER process shares (``USER_HOME``; `userctl` sets it)."""
    return Path(os.environ.get("USER_HOME", ".user"))


def default_root() -> Path:
    """Where the tables live unless ``USER_SINK_ROOT`` says otherwise: ``<USER_HOME>/delta``."""
    return user_home() / "delta"


#: The sink's name unless ``USER_SINK_NAME`` says otherwise; it prefixes the app ids.
DEFAULT_SINK_NAME: Final = "delta-sink"


def table_path(root: Path | str, table: str) -> str:
    """Where ``table`` lives under the history ``root``."""
    return str(Path(root) / table)


def app_id(sink_name: str, topic: str, partition: int) -> str:
    """The Delta app-transaction id under which ``sink_name`` records the last offset of
    ``topic``'s ``partition`` it has written (``topic`` as named on the broker)."""
    return f"{sink_name}-{topic}-{partition}"


def backfill_app_id(experiment: str, reward_fn: str) -> str:
    """The app-transaction id of back-fill commits of ``reward_fn`` over ``experiment``."""
    return f"backfill-{experiment}-{reward_fn}"


# -- step identity ------------------------------------------------------------------------


def with_step_id(rows: pa.Table) -> pa.Table:
    """``rows`` read under today's contract whatever wrote them (other columns unchanged):

    * step identity: rows written before it (column absent, or null after a schema merge)
      get the V1 upcast's ``incarnation = "v1"``, ``seq = observed_ns``;
    * the intervention contract, where ``rows`` has the V1 column ``human_action``: on a
      V1 intervention row (``human_action`` set) the executed ``action`` is the human's
      and ``policy_action`` the policy's V1 ``action``; ``human_action`` is dropped.
    """
    n = rows.num_rows
    names = rows.column_names
    if "incarnation" not in names:
        rows = rows.append_column("incarnation", pa.array([LEGACY_INCARNATION] * n, pa.string()))
    elif rows.column("incarnation").null_count:
        rows = _replace(rows, "incarnation",
                        pc.fill_null(rows.column("incarnation"), LEGACY_INCARNATION))
    if "seq" not in names:
        rows = rows.append_column("seq", rows.column("observed_ns").cast(pa.int64()))
    elif rows.column("seq").null_count:
        rows = _replace(rows, "seq", pc.coalesce(rows.column("seq").cast(pa.int64()),
                                                 rows.column("observed_ns").cast(pa.int64())))
    if "human_action" in names:
        human = rows.column("human_action")
        legacy = pc.is_valid(human)
        if "intervention" in names:
            legacy = pc.and_(legacy, pc.fill_null(rows.column("intervention"), False))
        action = rows.column("action")
        if "policy_action" in names:
            proposal = rows.column("policy_action").cast(action.type)
        else:
            proposal = pa.nulls(n, action.type)
        rows = _replace(rows, "action", pc.if_else(legacy, human.cast(action.type), action))
        upcast = pc.if_else(legacy, action, proposal)
        if "policy_action" in names:
            rows = _replace(rows, "policy_action", upcast)
        else:
            rows = rows.append_column("policy_action", upcast)
        rows = rows.drop_columns(["human_action"])
    return rows


def _replace(rows: pa.Table, name: str, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    return rows.set_column(rows.column_names.index(name), name, column)


def sort_steps(rows: pa.Table) -> pa.Table:
    """``rows`` (with :data:`STEP_ID`) with each stream's steps in the order taken."""
    keys = [c for c in STEP_ORDER if c in rows.column_names]
    return rows.sort_by([(c, "ascending") for c in keys])


def _strings(value: str | npt.ArrayLike, n: int) -> npt.NDArray[np.str_]:
    if isinstance(value, str):
        return np.full(n, value)
    arr = np.asarray(value)
    out: npt.NDArray[np.str_] = arr if arr.dtype.kind == "U" else arr.astype(np.str_)
    if out.shape != (n,):
        raise ValueError(f"a stream column has shape {out.shape}, seq ({n},)")
    return out


class HighWater:
    """The dedupe rule: the highest ``seq`` taken per :data:`STREAM`.

    A row is new when its ``seq`` is above its stream's mark (and not repeated earlier in
    the same call); :meth:`fresh` says which rows are new and moves the marks past them.
    Correct as long as each stream's steps are offered in the order they were taken (one
    Kafka partition per robot; Delta rows through :func:`sort_steps`).

    Usage (the sink per partition, back-fill, the learner)::

        marks = HighWater()
        marks.load(rows_already_written)          # optional: rows with STREAM + seq
        keep = marks.fresh(batch.seq, experiment_id=..., robot_id=..., incarnation=...)
    """

    def __init__(self) -> None:
        self._marks: dict[Stream, int] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, stream: Stream) -> int | None:
        """The highest ``seq`` taken of ``stream``, or None."""
        return self._marks.get(stream)

    def streams(self) -> Iterable[tuple[Stream, int]]:
        return self._marks.items()

    def load(self, rows: pa.Table) -> None:
        """Raise the marks to the highest ``seq`` of each stream in ``rows`` (rows that
        lack ``reward_fn`` are raw steps; legacy rows read as :func:`with_step_id`)."""
        if rows.num_rows == 0:
            return
        rows = with_step_id(rows)
        if "reward_fn" not in rows.column_names:
            rows = rows.append_column("reward_fn", pa.array([""] * rows.num_rows, pa.string()))
        top = rows.select([*STREAM, "seq"]).group_by(list(STREAM)).aggregate([("seq", "max")])
        cols = [top.column(c).to_pylist() for c in STREAM]
        for *key, seq in zip(*cols, top.column("seq_max").to_pylist(), strict=True):
            stream: Stream = (str(key[0]), str(key[1]), str(key[2]), str(key[3] or ""))
            mark = self._marks.get(stream)
            self._marks[stream] = int(seq) if mark is None else max(mark, int(seq))

    def fresh(
        self,
        seq: npt.ArrayLike,
        *,
        experiment_id: str | npt.ArrayLike,
        robot_id: str | npt.ArrayLike,
        incarnation: str | npt.ArrayLike,
        reward_fn: str | npt.ArrayLike = "",
    ) -> npt.NDArray[np.bool_]:
        """(n,) bool: the rows not taken before; moves each stream's mark to its highest
        ``seq``.  Each stream column is one value for all rows or an (n,) array."""
        seqs = np.asarray(seq, dtype=np.int64)
        n = seqs.shape[0]
        if n == 0:
            return np.zeros(0, np.bool_)
        labels = (experiment_id, robot_id, incarnation, reward_fn)
        if all(isinstance(v, str) for v in labels) and (n == 1 or (seqs[1:] > seqs[:-1]).all()):
            # One stream, steps in order (a batch as agents send it): one comparison.
            stream: Stream = (str(experiment_id), str(robot_id), str(incarnation),
                              str(reward_fn))
            mark = self._marks.get(stream)
            fresh: npt.NDArray[np.bool_] = (np.ones(n, np.bool_) if mark is None
                                            else seqs > mark)
            if fresh.any():
                self._marks[stream] = int(seqs[-1])
            return fresh
        parts = [_strings(v, n) for v in (experiment_id, robot_id, incarnation, reward_fn)]
        code = np.zeros(n, np.int64)
        for part in parts:  # codes stay below n: re-numbered after each column
            words, inverse = np.unique(part, return_inverse=True)
            _, code = np.unique(code * len(words) + inverse.reshape(n), return_inverse=True)
            code = code.reshape(n).astype(np.int64)
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        inverse = inverse.reshape(n)
        keys: list[Stream] = [(str(parts[0][i]), str(parts[1][i]), str(parts[2][i]),
                               str(parts[3][i])) for i in first.tolist()]
        marks = np.array([self._marks.get(k, np.iinfo(np.int64).min) for k in keys], np.int64)
        keep = seqs > marks[inverse]
        # A step repeated within the call (both copies above the mark) is taken once.
        order = np.lexsort((seqs, inverse))
        repeat = np.zeros(n, np.bool_)
        repeat[order[1:]] = ((inverse[order[1:]] == inverse[order[:-1]])
                             & (seqs[order[1:]] == seqs[order[:-1]]))
        keep &= ~repeat
        top = marks.copy()
        np.maximum.at(top, inverse[keep], seqs[keep])
        for k, mark, before in zip(keys, top.tolist(), marks.tolist(), strict=True):
            if mark != before:
                self._marks[k] = int(mark)
        return keep
