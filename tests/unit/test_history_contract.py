"""The history contract's one dedupe rule and the reading of rows written before it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from topics import tables


def test_a_step_at_or_below_its_streams_mark_is_a_repeat() -> None:
    marks = tables.HighWater()
    first = marks.fresh(np.arange(10), experiment_id="e", robot_id="r1", incarnation="a")
    assert first.all()
    again = marks.fresh(np.arange(5, 15), experiment_id="e", robot_id="r1", incarnation="a")
    assert again.tolist() == [False] * 5 + [True] * 5
    assert marks.get(("e", "r1", "a", "")) == 14


def test_streams_are_kept_apart_and_repeats_within_one_call_taken_once() -> None:
    marks = tables.HighWater()
    marks.fresh([3], experiment_id="e", robot_id="r1", incarnation="a")
    keep = marks.fresh(
        [0, 1, 1, 0, 0, 0], experiment_id="e",
        robot_id=["r1", "r1", "r1", "r2", "r1", "r1"],
        incarnation=["a", "b", "b", "a", "a", "a"], reward_fn=["", "", "", "", "", "f@1"])
    # r1/a at 0 is below its mark 3; r1/b's 1 comes twice; r2 and reward fn f@1 are new.
    assert keep.tolist() == [False, True, False, True, False, True]


def test_rows_written_before_step_identity_read_as_the_v1_upcast() -> None:
    rows = pa.table({
        "observed_ns": pa.array([10, 20], pa.int64()),
        "intervention": [False, True],
        "action": pa.array([[0.1], [0.2]], pa.list_(pa.float32())),
        "human_action": pa.array([None, [0.9]], pa.list_(pa.float32())),
    })
    got = tables.with_step_id(rows)
    assert got.column("incarnation").to_pylist() == [tables.LEGACY_INCARNATION] * 2
    assert got.column("seq").to_pylist() == [10, 20]
    assert np.allclose(got.column("action").to_pylist(), [[0.1], [0.9]])
    assert got.column("policy_action").to_pylist()[0] is None
    assert np.allclose(got.column("policy_action").to_pylist()[1], [0.2])
    assert "human_action" not in got.column_names
    merged = pa.table({"observed_ns": pa.array([5, 6], pa.int64()),
                       "incarnation": pa.array([None, "x"], pa.string()),
                       "seq": pa.array([None, 0], pa.int64())})
    got = tables.with_step_id(merged)
    assert got.column("incarnation").to_pylist() == [tables.LEGACY_INCARNATION, "x"]
    assert got.column("seq").to_pylist() == [5, 0]
