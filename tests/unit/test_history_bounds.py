"""The learner's Delta warm start leaves out rows outside their robot's announced bounds
(written before the sink refused such batches), and a replay leaves out the same."""

from __future__ import annotations

import pyarrow as pa

from learners import _history
from schemas import samples
from schemas.spaces import ArraySpec

SPEC = samples.robot_spec(obs_dim=2, act_dim=1).model_copy(
    update={"observation": ArraySpec(shape=(2,), low=-10.0, high=10.0)})


def rows() -> pa.Table:
    return pa.table({
        "robot_id": ["r1", "r1", "r1", "r2", "r9"],
        "observation": [[0.0, 1.0], [1e30, 0.0], [0.0, 0.0], [0.5, -0.5], [1e30, 1e30]],
        "action": [[0.5], [0.0], [0.0], [2.0], [0.0]],
        "final_observation": [None, None, [0.0, -1e30], None, None],
    }, schema=pa.schema([("robot_id", pa.string()), ("observation", pa.list_(pa.float32())),
                         ("action", pa.list_(pa.float32())),
                         ("final_observation", pa.list_(pa.float32()))]))


def test_rows_outside_their_robots_bounds_are_left_out_and_counted() -> None:
    kept, refused = _history.within_bounds(rows(), {"r1": SPEC, "r2": SPEC})
    # r1: 1e30 observation and final observation; r2: action 2 > 1; r9 never announced.
    assert kept.column("robot_id").to_pylist() == ["r1", "r9"]
    assert kept.column("observation").to_pylist()[0] == [0.0, 1.0]
    assert refused == {"r1": 2, "r2": 1}


def test_without_announced_specs_every_row_is_kept() -> None:
    kept, refused = _history.within_bounds(rows(), {})
    assert kept.num_rows == 5 and refused == {}
