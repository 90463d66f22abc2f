"""The Delta Lake history: table names, and events <-> Delta rows (DESIGN §4).

Tables, each partitioned by ``experiment_id``:

* ``transitions_raw`` — one row per raw step (``transitions.raw``);
* ``transitions`` — one row per step per reward function (``transitions``), ``reward_fn``
  names the function as ``name@version``;
* ``episodes`` — episode started/ended events (``episodes``);
* ``policies`` — every published weights manifest (``weights.manifests``).

Rows use only types every Delta reader understands: strings, integers, floats, bools,
variable lists (vectors), binary (one camera image, raw HWC uint8 bytes) and structs
(``images.<camera>``, ``info.<name>``).  Times are int64 nanoseconds since the epoch
(``observed_ns``), because Delta timestamps stop at microseconds.  Each batch row also
records its ``layout`` (the per-step shapes, JSON) so :func:`batches_from_rows` can
rebuild the exact numpy batches, and its Kafka source (``kafka_partition``,
``kafka_offset``, ``batch_row``).  Step rows carry their identity (``robot_id``,
``incarnation``, ``seq``; ``topics.tables`` is the contract).  Nested or unknown event
fields are JSON text.
"""

from __future__ import annotations

import json
import types
import typing
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AwareDatetime

from schemas import events, transitions
from schemas.transitions import Layout, RewardedTransitionBatch, TransitionBatch
from topics import serde
from topics import tables as shared_tables

# The history contract (names, app ids, step identity) lives in ``topics.tables``; these
# are the same objects, for the modules of ``pipeline`` that convert rows.
TRANSITIONS_RAW = shared_tables.TRANSITIONS_RAW
TRANSITIONS = shared_tables.TRANSITIONS
EPISODES = shared_tables.EPISODES
POLICIES = shared_tables.POLICIES
TABLE_OF_TOPIC = shared_tables.TABLE_OF_TOPIC
table_path = shared_tables.table_path
user_home = shared_tables.user_home

#: Every table is partitioned by experiment, so one experiment's history is a prefix.
PARTITION_BY = (shared_tables.PARTITION_COLUMN,)


@dataclass(frozen=True)
class Source:
    """Where a record was read: its rows remember it."""

    topic: str
    partition: int
    offset: int


# -- batches -> rows ----------------------------------------------------------------------


def _strings(arr: pa.Array) -> pa.Array:
    return arr.cast(pa.string())


def _list(arr: pa.Array) -> pa.Array:
    """fixed_size_list<T> -> list<T> (nulls kept)."""
    return arr.cast(pa.list_(arr.type.value_type))


def _binary_of_fsl(arr: pa.Array) -> pa.Array:
    """fixed_size_list<uint8>[n] -> binary, one image's bytes per row, zero-copy."""
    size = arr.type.list_size
    n = len(arr)
    values = arr.values.slice(arr.offset * size, n * size)
    data = values.buffers()[1]
    start = values.offset
    offsets = (np.arange(n + 1, dtype=np.int64) * size + start).astype(np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), data])


def _nullable(table: pa.Table) -> pa.Table:
    """Every field nullable (recursively): schemas of different robots then merge."""

    def loosen(t: pa.DataType) -> pa.DataType:
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, loosen(f.type), True) for f in t])
        if pa.types.is_list(t):
            return pa.list_(pa.field("element", loosen(t.value_type), True))
        return t

    schema = pa.schema([pa.field(f.name, loosen(f.type), True) for f in table.schema])
    return table.cast(schema)


def layout_json(layout: Layout) -> str:
    return json.dumps({
        "observation": list(layout.observation),
        "action": list(layout.action),
        "cameras": {k: list(v) for k, v in layout.cameras.items()},
        "info": {k: list(v) for k, v in layout.info.items()},
    }, sort_keys=True)


def _layout_of(text: str) -> Layout:
    raw = json.loads(text)
    return Layout(
        observation=tuple(raw["observation"]),
        action=tuple(raw["action"]),
        cameras={k: (int(v[0]), int(v[1]), int(v[2])) for k, v in raw["cameras"].items()},
        info={k: tuple(v) for k, v in raw["info"].items()},
    )


AnyBatch = TransitionBatch | RewardedTransitionBatch


def batch_rows(batch: AnyBatch, source: Source) -> pa.Table:
    """One Delta row per step of ``batch``, with its header fields and Kafka source."""
    return many_batch_rows([(batch, source, None)])


def many_batch_rows(items: Sequence[tuple[AnyBatch, Source, npt.NDArray[np.bool_] | None]]
                    ) -> pa.Table:
    """The Delta rows of many batches at once (each with its Kafka source and, optionally,
    the (n,) mask of its rows to keep), in order.  Every conversion (dictionary strings to
    strings, fixed-size lists to lists, per-batch header fields repeated per row, nullable
    fields) runs once per layout over all rows, in Arrow: no per-batch or per-step Python
    beyond collecting the headers."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, (batch, _, _) in enumerate(items):
        layout = batch.layout
        key = (type(batch), layout.observation, layout.action,
               tuple(layout.cameras.items()), tuple(layout.info.items()))
        groups.setdefault(key, []).append(i)
    if len(groups) == 1:
        return _same_layout_rows(items)
    # Rows keep their order within a layout; Delta rows carry no order across layouts.
    parts = [_same_layout_rows([items[i] for i in idx]) for idx in groups.values()]
    return pa.concat_tables(parts, promote_options="permissive")


def _same_layout_rows(items: Sequence[tuple[AnyBatch, Source, npt.NDArray[np.bool_] | None]]
                      ) -> pa.Table:
    first = items[0][0]
    rewarded = isinstance(first, RewardedTransitionBatch)
    schema = transitions.arrow_schema(type(first), first.layout)
    data = pa.Table.from_batches(
        [pa.RecordBatch.from_arrays(transitions.to_arrow(b).columns, schema=schema)
         for b, _, _ in items], schema=schema)
    counts = np.array([len(b) for b, _, _ in items], np.int64)
    which = np.repeat(np.arange(len(items)), counts)  # row -> its batch

    def per_batch(values: list[object], typ: pa.DataType) -> pa.Array:
        """A header field of each batch, repeated on each of its rows."""
        return pa.array(values, typ).take(pa.array(which))

    events_ = [b.event for b, _, _ in items]
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        "experiment_id": per_batch([e.experiment_id for e in events_], pa.string()),
        "site": per_batch([e.site for e in events_], pa.string()),
        "robot_id": per_batch([e.robot_id for e in events_], pa.string()),
        "robot_type": per_batch([e.robot_type for e in events_], pa.string()),
        # The task in words the robot ran ("": the experiment's default), for learners
        # of language-conditioned policies.
        "instruction": per_batch([e.instruction for e in events_], pa.string()),
    }
    if rewarded:
        cols["reward_fn"] = per_batch([getattr(e, "reward_fn", None) for e in events_],
                                      pa.string())
    for name in schema.names:
        if name in cols:
            continue
        arr = data.column(name)
        typ = arr.type
        if pa.types.is_dictionary(typ):
            cols[name] = _strings(arr)
        elif pa.types.is_timestamp(typ):
            cols[name] = arr.cast(pa.int64())
        elif pa.types.is_fixed_size_list(typ):
            cols[name] = _list(arr)
        elif pa.types.is_struct(typ):
            chunks = []
            for chunk in arr.chunks:
                subs = []
                for i, sub in enumerate(typ):
                    child = chunk.field(i)
                    if pa.types.is_fixed_size_list(sub.type):
                        child = (_binary_of_fsl(child) if sub.type.value_type == pa.uint8()
                                 else _list(child))
                    subs.append(child)
                chunks.append(pa.StructArray.from_arrays(subs, names=[f.name for f in typ]))
            cols[name] = pa.chunked_array(chunks)
        else:
            cols[name] = arr
    if rewarded:
        raw_ids = [getattr(e, "raw_event_id", None) for e in events_]
        cols["raw_event_id"] = per_batch([str(r) if r else None for r in raw_ids],
                                         pa.string())
    cols["batch_event_id"] = per_batch([str(e.event_id) for e in events_], pa.string())
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    cols["batch_row"] = pa.array(
        (np.arange(int(counts.sum())) - np.repeat(starts, counts)).astype(np.int32))
    cols["layout"] = pa.repeat(pa.scalar(layout_json(first.layout), pa.string()), len(which))
    cols["kafka_partition"] = per_batch([s.partition for _, s, _ in items], pa.int32())
    cols["kafka_offset"] = per_batch([s.offset for _, s, _ in items], pa.int64())
    table = _nullable(pa.table(cols))
    masks = [keep for _, _, keep in items]
    if any(m is not None for m in masks):
        keep = np.concatenate([np.ones(len(b), np.bool_) if m is None else m
                               for (b, _, _), m in zip(items, masks, strict=True)])
        table = table.filter(pa.array(keep))
    return table


# -- events -> rows -----------------------------------------------------------------------


def _arrow_type(annotation: object) -> pa.DataType:
    """The Arrow type of a pydantic field annotation; structured values become JSON text."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(args[0]) if len(args) == 1 else pa.string()
    if origin is typing.Literal:
        value = typing.get_args(annotation)[0]
        return _arrow_type(type(value))
    if origin is typing.Annotated:
        return _arrow_type(typing.get_args(annotation)[0])
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    if annotation is datetime or annotation is AwareDatetime:
        return pa.timestamp("us", tz="UTC")
    return pa.string()


def _cell(value: object, typ: pa.DataType) -> object:
    if value is None:
        return None
    if pa.types.is_string(typ):
        if isinstance(value, Enum):
            return str(value.value)
        if isinstance(value, (str, uuid.UUID)):
            return str(value)
        return json.dumps(value, sort_keys=True, default=str)
    return value


def event_rows(event: events.Envelope, source: Source) -> pa.Table:
    """One Delta row for a JSON event; the columns follow the model's fields."""
    fields = type(event).model_fields
    data = event.model_dump(mode="python")
    if isinstance(event, events.WeightsManifestV1):
        data["tensors"] = [t.model_dump() for t in event.tensors]
    cols: dict[str, pa.Array] = {}
    for name, info in fields.items():
        typ = _arrow_type(info.annotation)
        if name == "event_id":
            typ = pa.string()
        value = data.get(name)
        if isinstance(value, tuple):
            value = list(value)
        cols[name] = pa.array([_cell(value, typ)], typ)
    cols["kafka_partition"] = pa.array([source.partition], pa.int32())
    cols["kafka_offset"] = pa.array([source.offset], pa.int64())
    return _nullable(pa.table(cols))


def rows(payload: serde.Payload, source: Source) -> pa.Table:
    """The Delta rows of any sunk record's payload."""
    if isinstance(payload, (TransitionBatch, RewardedTransitionBatch)):
        return batch_rows(payload, source)
    return event_rows(payload, source)


# -- rows -> batches (replay) -------------------------------------------------------------


def _dense(arr: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """(n, *shape) float32 of a list column; null rows are zeros."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    out = np.zeros((n, *shape), np.float32)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), np.bool_)
    if valid.any():
        values = arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        out[valid] = values.astype(np.float32).reshape(int(valid.sum()), *shape)
    return out


def _images(arr: pa.Array, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    """(k, *shape) uint8 of the non-null rows of a binary image column."""
    kept = arr.filter(arr.is_valid())
    if len(kept) == 0:
        return np.zeros((0, *shape), np.uint8)
    data = b"".join(kept.to_pylist())
    return np.frombuffer(data, np.uint8).reshape(len(kept), *shape)


def _column(table: pa.Table, name: str) -> npt.NDArray[np.generic]:
    out: npt.NDArray[np.generic] = table.column(name).to_numpy(zero_copy_only=False)
    return out


def batch_from_rows(table: pa.Table) -> TransitionBatch:
    """The raw batch of the rows of one ``batch_event_id`` (in ``batch_row`` order).

    The header keeps the original event id, site, robot and experiment; ``produced_at``
    is now.  Raises ``SchemaError`` if the rows do not make a valid batch.
    """
    table = table.sort_by("batch_row")
    first = table.slice(0, 1).to_pylist()[0]
    layout = _layout_of(first["layout"])
    n = table.num_rows
    truncated = np.asarray(_column(table, "truncated"), np.bool_)
    images: dict[str, npt.NDArray[np.uint8]] = {}
    finals: dict[str, npt.NDArray[np.uint8]] = {}
    for cam, shape in layout.cameras.items():
        images[cam] = _images(pc.struct_field(table.column("images").combine_chunks(), cam),
                              shape)
        finals[cam] = _images(
            pc.struct_field(table.column("final_images").combine_chunks(), cam), shape)
    info = {
        name: _dense(pc.struct_field(table.column("info").combine_chunks(), name), shape)
        for name, shape in layout.info.items()
    }
    final_obs = _dense(table.column("final_observation"), layout.observation)[truncated]
    # Rows of V1 batches (no identity, human_action) read as V2: the contract's upcast.
    table = shared_tables.with_step_id(table)
    intervention = np.asarray(_column(table, "intervention"), np.bool_)
    action = _dense(table.column("action"), layout.action)
    incarnation, seq = str(table.column("incarnation")[0]), _column(table, "seq")
    policy_action = _dense(table.column("policy_action"), layout.action)
    end_reason = (np.asarray(_column(table.set_column(
        table.column_names.index("end_reason"), "end_reason",
        pc.fill_null(table.column("end_reason"), "")), "end_reason"), np.str_)
        if "end_reason" in table.column_names else None)
    event = events.TransitionBatchV2(
        event_id=uuid.UUID(first["batch_event_id"]), site=first["site"],
        robot_id=first["robot_id"], experiment_id=first["experiment_id"],
        robot_type=first["robot_type"], n_steps=n, incarnation=incarnation,
        instruction=first.get("instruction") or "")  # absent from older rows: the default
    return TransitionBatch.build(
        event,
        episode_id=np.asarray(_column(table, "episode_id"), np.str_),
        step=_column(table, "step"),
        seq=seq,
        observation=_dense(table.column("observation"), layout.observation),
        action=action,
        policy_version=_column(table, "policy_version"),
        observed_ns=_column(table, "observed_ns"),
        acted_ns=_column(table, "acted_ns"),
        intervention=intervention,
        policy_action=policy_action,
        truncated=truncated,
        final_observation=final_obs,
        end_reason=end_reason,
        images=images,
        final_images=finals,
        info=info,
    )


def batches_from_rows(table: pa.Table) -> Iterator[TransitionBatch]:
    """The raw batches held by ``table``'s rows, stream by stream (experiment, robot,
    incarnation) in the order the steps were taken (``seq``); each original batch is
    rebuilt whole."""
    if table.num_rows == 0:
        return
    # A stream's batches never overlap in seq, so sorted by step identity each batch is
    # one run of equal batch ids (whatever the robot's clock did).
    table = shared_tables.sort_steps(shared_tables.with_step_id(table))
    ids = np.asarray(table.column("batch_event_id").to_numpy(zero_copy_only=False))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for start, end in zip(starts, ends, strict=True):
        yield batch_from_rows(table.slice(int(start), int(end - start)))
