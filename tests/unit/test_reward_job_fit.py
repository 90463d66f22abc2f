"""The reward job cuts a rewarded batch to the topic's limit, as the agents' outbox does."""

from __future__ import annotations

from pipeline import reward_job, rewards
from schemas import events, samples
from schemas.transitions import RewardedTransitionBatch
from topics import catalog, limits, serde, validation

SPEC = samples.robot_spec(obs_dim=6, act_dim=2, info={"ee_pos": 3, "goal_pos": 3})


def scored() -> serde.Encoded:
    raw = samples.batch(SPEC, 200, robot_id="r1")
    rec = serde.encode(catalog.TRANSITIONS_RAW, raw)
    record = validation.Record(catalog.TRANSITIONS_RAW.name, 2, 7, rec.value, rec.key,
                               tuple(rec.headers))
    return reward_job.score(rewards.lookup("reach_dense@1"), record,
                            out_topic="transitions", dlq_topic="dlq")


def test_a_rewarded_batch_over_the_limit_is_cut_into_parts_that_fit_in_row_order() -> None:
    out = scored()
    limit = limits.record_bytes(out) // 3
    parts = reward_job.fit(out, limit, dlq_topic="dlq")
    assert len(parts) >= 3 and all(limits.record_bytes(p) <= limit for p in parts)
    assert {(p.topic, p.partition) for p in parts} == {("transitions", 2)}
    batches = [serde.decode(catalog.TRANSITIONS, p.value, p.headers) for p in parts]
    assert all(isinstance(b, RewardedTransitionBatch) for b in batches)
    assert [int(s) for b in batches for s in b.seq] == list(range(200))


def test_a_step_too_large_even_alone_is_dead_lettered_as_oversize() -> None:
    out = scored()
    (letter,) = reward_job.fit(out, 600, dlq_topic="dlq", consumer="job")[-1:]
    assert letter.topic == "dlq"
    dead = serde.decode(catalog.DLQ, letter.value, letter.headers)
    assert isinstance(dead, events.DeadLetterV1)
    assert dead.reason == events.RejectReason.OVERSIZE and dead.consumer == "job"
