"""Announced bounds hold on the whole data path: a batch outside its robot's bounds (an
observation of 1e30 — finite, so only the bounds catch it) is dead-lettered by the Delta
sink and by the reward job, and never reaches Delta or ``transitions``.

Each test works in its own topic namespace, with its own ``robots`` topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import rewards, sink, tables
from schemas import events, samples
from schemas.events import RejectReason
from schemas.spaces import ArraySpec, RobotSpec
from schemas.transitions import RewardedTransitionBatch, TransitionBatch
from tests.integration.test_rewards_job import read_all, start_job
from tests.integration.test_sink import Namespace, stop, wait_for
from topics import admin, catalog, robots, serde, validation
from topics.settings import KafkaSettings

EXPERIMENT = "bounds"


def bounded_spec(unique: str) -> RobotSpec:
    """A robot whose observations lie in [-10, 10] (info as the reach reward needs)."""
    spec = samples.robot_spec(obs_dim=6, act_dim=2, info={"ee_pos": 3, "goal_pos": 3},
                              robot_type=f"rt{unique}")
    return spec.model_copy(update={"observation": ArraySpec(shape=(6,), low=-10.0, high=10.0)})


def batches(spec: RobotSpec, robot_id: str, n: int = 3, bad: int = 1) -> list[TransitionBatch]:
    """``n`` consecutive batches of 10 steps of ``robot_id``; batch ``bad`` holds 1e30."""
    out = [samples.batch(spec, 10, rng=i, robot_id=robot_id, experiment_id=EXPERIMENT,
                         first_step=i * 10, episode_len=25) for i in range(n)]
    out[bad].observation[3, 1] = 1e30
    return out


def announce(ns: Namespace, robot_id: str, spec: RobotSpec) -> None:
    ns.send(catalog.ROBOTS, events.RobotAnnouncedV1(site="lab-a", robot_id=robot_id,
                                                    spec=spec))


def dead_letters(ns: Namespace) -> list[events.DeadLetterV1]:
    return [e for _, e in read_all(ns, catalog.DLQ) if isinstance(e, events.DeadLetterV1)]


@pytest.fixture
def ns(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[Namespace]:
    space = Namespace(kafka, unique, tmp_path / "delta")
    admin.ensure_topics(kafka, [catalog.ROBOTS.model_copy(
        update={"name": space.topic(catalog.ROBOTS)})])
    yield space
    space.producer.flush()


def test_a_batch_outside_its_robots_bounds_never_lands_in_delta_and_is_dead_lettered(
        ns: Namespace, unique: str) -> None:
    robot_id = f"bounded-{unique}"
    spec = bounded_spec(unique)
    announce(ns, robot_id, spec)
    sent = batches(spec, robot_id)
    for batch in sent:
        ns.send(catalog.TRANSITIONS_RAW, batch)
    ns.producer.flush()

    runner = sink.DeltaSink(ns.kafka, sink.SinkSettings(
        name=ns.sink_name, root=ns.root, topic_suffix=ns.suffix, static=True,
        topics=(catalog.TRANSITIONS_RAW.name,), flush_interval_s=0.2, compact_interval_s=0))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 60,
                 "the sink to pass every record")
    finally:
        runner.stop()
        thread.join(30)

    table = ns.table(tables.TRANSITIONS_RAW)
    assert sorted(table.column("seq").to_pylist()) == [*range(10), *range(20, 30)]
    observations = np.concatenate([np.asarray(o) for o in table.column("observation").to_pylist()])
    assert np.abs(observations).max() <= 10
    (letter,) = dead_letters(ns)
    assert letter.reason == RejectReason.OUT_OF_BOUNDS
    assert letter.source_topic == ns.topic(catalog.TRANSITIONS_RAW)
    assert "observation[3, 1] = 1e+30" in letter.detail and "high bound 10" in letter.detail
    assert letter.consumer == ns.sink_name


def test_the_reward_job_dead_letters_a_batch_outside_its_robots_bounds(
        ns: Namespace, unique: str, tmp_path: Path) -> None:
    robot_id = f"bounded-{unique}"
    spec = bounded_spec(unique)
    announce(ns, robot_id, spec)
    ns.producer.flush()
    job = start_job(ns, "reach_dense@1", tmp_path / "job.log")
    try:
        for batch in batches(spec, robot_id):
            ns.send(catalog.TRANSITIONS_RAW, batch)
        ns.producer.flush()
        wait_for(lambda: sum(ns.end_offsets(catalog.TRANSITIONS).values()) >= 2
                 and sum(ns.end_offsets(catalog.DLQ).values()) >= 1, 120,
                 "two rewarded batches and one dead letter", job)
    finally:
        stop(job)
    rewarded = [e for _, e in read_all(ns, catalog.TRANSITIONS)]
    assert all(isinstance(e, RewardedTransitionBatch) for e in rewarded)
    assert sorted(int(s) for e in rewarded for s in e.seq) == [*range(10), *range(20, 30)]
    assert rewards.lookup("reach_dense@1").id in {e.reward_fn for e in rewarded}
    (letter,) = dead_letters(ns)
    assert letter.reason == RejectReason.OUT_OF_BOUNDS
    assert letter.source_offset >= 0 and "1e+30" in letter.detail


def test_a_robot_announced_after_the_follower_started_is_checked_with_its_bounds(
        ns: Namespace, unique: str) -> None:
    specs = robots.RobotSpecs(ns.kafka, role=f"test-{unique}", topic_suffix=ns.suffix)
    try:
        robot_id = f"late-{unique}"
        spec = bounded_spec(unique)
        bad = batches(spec, robot_id, n=1, bad=0)[0]
        announce(ns, robot_id, spec)  # after the follower caught up, just before the batch
        ns.producer.flush()
        rec = serde.encode(catalog.TRANSITIONS_RAW, bad, sites=ns.kafka.sites)
        record = validation.Record(catalog.TRANSITIONS_RAW.name, 0, 0, rec.value, rec.key,
                                   tuple(rec.headers))
        result = specs.validate(record)
        assert isinstance(result, validation.Rejected)
        assert result.reason == RejectReason.OUT_OF_BOUNDS

        # A robot never announced: checked on its own (consistent, finite), without bounds.
        other = replace(bad, event=bad.event.model_copy(update={"robot_id": f"ghost-{unique}"}))
        rec = serde.encode(catalog.TRANSITIONS_RAW, other, sites=ns.kafka.sites)
        started = time.monotonic()
        result = specs.validate(replace(record, value=rec.value, key=rec.key))
        assert isinstance(result, validation.Accepted)
        assert specs.unannounced == 1
        assert time.monotonic() - started < 5
    finally:
        specs.close()
