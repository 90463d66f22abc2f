"""A decoded batch re-encodes from the Arrow columns it was decoded from (the sink's rows, a
reward job's rewarded batch): the same rows as encoding it from its numpy arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline import rewards
from schemas import samples, transitions
from topics import catalog, serde

SPEC = samples.robot_spec(obs_dim=5, act_dim=2, cameras=("front",),
                          info={"ee_pos": 3, "goal_pos": 3})


def _rows(rb: pa.RecordBatch) -> list[dict[str, object]]:
    """Rows as Python values, dictionary strings decoded (dictionaries may differ)."""
    cols = {name: (rb.column(name).cast(pa.string())
                   if pa.types.is_dictionary(rb.column(name).type) else rb.column(name))
            for name in rb.schema.names}
    return pa.RecordBatch.from_pydict(cols).to_pylist()


def _decoded(topic: catalog.TopicSpec, batch: transitions.AnyBatch) -> transitions.AnyBatch:
    rec = serde.encode(topic, batch)
    out = serde.decode(topic, rec.value, rec.headers)
    assert isinstance(out, transitions.TransitionBatch | transitions.RewardedTransitionBatch)
    return out


@pytest.mark.parametrize("rewarded", [False, True])
def test_a_decoded_batch_encodes_to_the_rows_it_was_decoded_from(rewarded: bool) -> None:
    fn = rewards.lookup("reach_dense@1")
    raw = samples.batch(SPEC, 30, episode_len=12)
    fresh: transitions.AnyBatch = rewards.apply(fn, raw) if rewarded else raw
    decoded = _decoded(catalog.TRANSITIONS_RAW, raw)
    again = rewards.apply(fn, decoded) if rewarded else decoded
    reused, built = transitions.to_arrow(again), transitions.to_arrow(fresh)
    assert reused.schema.equals(built.schema, check_metadata=False)
    assert _rows(reused) == _rows(built)
    topic = catalog.TRANSITIONS if rewarded else catalog.TRANSITIONS_RAW
    back = _decoded(topic, again)
    assert np.array_equal(back.observation, raw.observation)
    assert back.event.event_id == again.event.event_id
