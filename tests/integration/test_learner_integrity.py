"""The learner's live reader on a real broker (issue 10): what it cannot accept goes to
``dlq`` with the reason (failing input 4: an observation of 1e30 outside its robot's
announced bounds), and offsets it expected that were deleted are reported as a gap on
``gaps``, in its metrics, as a WARNING and by ``userctl history gaps``.

Each test works in its own namespace (catalog names plus a unique suffix); robot
announcements go to the shared ``robots`` topic under unique robot ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from learners import _live
from learners.loop import Steps
from schemas import events, samples
from schemas.events import RejectReason
from schemas.spaces import ArraySpec
from schemas.transitions import RewardedTransitionBatch
from topics import admin, catalog, gaps, serde
from topics.producer import EventProducer
from topics.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[2]
REWARD = "reach_dense@1"


class Namespace:
    def __init__(self, kafka: KafkaSettings, unique: str) -> None:
        self.kafka = kafka
        self.unique = unique
        self.suffix = f".t{unique}"
        self.topic = catalog.TRANSITIONS.name + self.suffix
        self.experiment = f"integrity-{unique}"
        self.robot_id = f"r1-{unique}"
        self.spec = samples.robot_spec(obs_dim=6, act_dim=2, robot_type=f"rt{unique}"
                                       ).model_copy(update={
                                           "observation": ArraySpec(shape=(6,), low=-10.0,
                                                                    high=10.0)})
        admin.ensure_topics(kafka, [s.model_copy(update={"name": s.name + self.suffix})
                                    for s in (catalog.TRANSITIONS, catalog.DLQ, catalog.GAPS)])
        self.producer = EventProducer(kafka, role="test")

    def batch(self, number: int) -> RewardedTransitionBatch:
        raw = samples.batch(self.spec, 10, rng=number, robot_id=self.robot_id,
                            experiment_id=self.experiment, first_step=number * 10,
                            episode_len=25)
        return RewardedTransitionBatch.from_raw(
            raw, reward_fn=REWARD, reward=-np.abs(raw.observation[:, 0]),
            success=np.zeros(10, bool), terminated=np.zeros(10, bool))

    def send(self, batch: RewardedTransitionBatch) -> int:
        """Produce ``batch``; returns its partition."""
        rec = serde.encode(catalog.TRANSITIONS, batch, sites=self.kafka.sites)
        self.producer.send_encoded(replace(rec, topic=self.topic))
        assert rec.partition is not None
        return rec.partition

    def live(self, robots: _live.RobotSpecs | None = None) -> _live.LiveSteps:
        return _live.LiveSteps(self.kafka, self.topic, experiments=(self.experiment,),
                               reward_fn=REWARD, robots=robots)

    def read(self, spec: catalog.TopicSpec) -> list[serde.Payload]:
        """Every record of ``spec``'s namespaced topic, decoded."""
        name = spec.name + self.suffix
        c = Consumer(self.kafka.consumer_config(f"probe-{self.unique}", role="probe"))
        try:
            out: list[serde.Payload] = []
            for p in c.list_topics(name, timeout=10).topics[name].partitions:
                low, high = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high <= low:
                    continue
                c.assign([TopicPartition(name, p, low)])
                position, deadline = low, time.monotonic() + 30
                while position < high and time.monotonic() < deadline:
                    for msg in c.consume(100, 0.5):
                        if msg.error() is None:
                            position = (msg.offset() or 0) + 1
                            headers = tuple(msg.headers() or ())
                            out.append(serde.decode(spec, msg.value(), headers))
            return out
        finally:
            c.close()


def drain_until(live: _live.LiveSteps, done: Callable[[list[Steps]], bool],
                timeout_s: float = 30.0) -> list[Steps]:
    got: list[Steps] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        assert time.monotonic() < deadline, f"only {len(got)} items after {timeout_s} s"
        live.wait(0.2)
        got += live.drain(64)
    return got


def test_an_observation_outside_its_announced_bounds_is_dead_lettered_by_the_learner(
        kafka: KafkaSettings, unique: str) -> None:
    ns = Namespace(kafka, unique)
    ns.producer.send(catalog.ROBOTS, events.RobotAnnouncedV1(
        site="lab-a", robot_id=ns.robot_id, spec=ns.spec))
    bad = ns.batch(1)
    bad.observation[3, 1] = 1e30  # failing input 4: finite, so only the bounds catch it
    for batch in (ns.batch(0), bad, ns.batch(2)):
        partition = ns.send(batch)
    ns.producer.flush()
    robots = _live.RobotSpecs(kafka)
    live = ns.live(robots)
    try:
        live.start({})
        got = drain_until(live, lambda got: sum(map(len, got)) >= 20)
        assert live.positions() == {f"{ns.topic}:{partition}": 3}
        assert live.rejected == 1
        assert all(np.abs(s.steps.observation).max() < 10 for s in got)
        assert live.metrics()["replay/dead_letters"] == 1
    finally:
        live.close()
        robots.close()
    letters = [e for e in ns.read(catalog.DLQ) if isinstance(e, events.DeadLetterV1)]
    assert len(letters) == 1
    (letter,) = letters
    assert letter.reason == RejectReason.OUT_OF_BOUNDS
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        ns.topic, partition, 1)
    assert "observation[3, 1] = 1e+30" in letter.detail and "high bound 10" in letter.detail
    assert letter.consumer == f"learner-{ns.experiment}"


def test_offsets_deleted_past_the_learners_resume_point_are_reported_as_a_gap(
        kafka: KafkaSettings, unique: str, caplog: pytest.LogCaptureFixture) -> None:
    ns = Namespace(kafka, unique)
    for n in range(10):
        partition = ns.send(ns.batch(n))
    ns.producer.flush()
    # The learner's history ends at offset 2 (it resumes at 3); retention takes 0..5.
    client = AdminClient(kafka.admin_config())  # kept: its futures die with it
    futures = client.delete_records([TopicPartition(ns.topic, partition, 6)],
                                    operation_timeout=30)
    for future in futures.values():
        assert future.result(30).low_watermark == 6
    live = ns.live()
    try:
        live.start({partition: 3})
        got = drain_until(live, lambda got: len(got) >= 4)
        assert [int(s.steps.step[0]) for s in got] == [(n * 10) % 25 for n in range(6, 10)]
        assert live.metrics()["gaps/detected"] == 1
        assert live.metrics()["gaps/missing_records"] == 3
    finally:
        live.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{ns.topic}[{partition}] offsets 3..5 (3 records) no longer exist" in w
               for w in warnings)

    (gap,) = gaps.read(kafka, experiment_id=ns.experiment, topic_suffix=ns.suffix)
    assert (gap.topic, gap.partition, gap.first_missing, gap.last_missing) == (
        ns.topic, partition, 3, 5)
    assert gap.consumer == f"learner-{ns.experiment}" and gap.experiment_id == ns.experiment
    assert gaps.read(kafka, experiment_id="another-experiment", topic_suffix=ns.suffix) == []

    shown = subprocess.run(
        [sys.executable, "-m", "infra.cli", "history", "--json", "gaps", ns.experiment,
         "--topic-suffix", ns.suffix], capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "USER_KAFKA_BOOTSTRAP": kafka.bootstrap})
    assert shown.returncode == 0, shown.stderr
    (row,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert (row["topic"], row["partition"], row["first_missing"], row["last_missing"],
            row["missing"]) == (ns.topic, partition, 3, 5, 3)
