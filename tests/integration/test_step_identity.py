"""Step identity end to end: robots' steps through the real broker, the Delta sink and the
learner's two inputs (the Delta warm start and the live stream), whatever the clocks do.

Failing inputs 1 and 5 of issue 10: a robot whose clock steps back 600 s between two
episodes, two agent incarnations of one robot interleaving their episodes, and human
takeovers (the executed action differs from the policy's proposal).  Each test has its
own topics (catalog names plus a unique suffix), Delta root and sink name; the sink runs
in a thread of the test (statically assigned, as ``userctl sink --static``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from learners import _history, _live
from learners.loop import Learner, Steps
from pipeline import sink, tables
from schemas import samples
from schemas.transitions import RewardedTransitionBatch, TransitionBatch
from tests.unit.test_learn_loop import REACHER, REWARD, Publishers, experiment, make
from topics import admin, catalog, serde
from topics import tables as contract
from topics.producer import EventProducer
from topics.settings import KafkaSettings

EPISODE = 50  # steps
BATCH = 10  # steps per record
NS = 1_000_000_000


class Space:
    """One test's topics (raw, rewarded, dlq), Delta root and sink."""

    def __init__(self, kafka: KafkaSettings, unique: str, root: Path) -> None:
        self.kafka = kafka
        self.suffix = f".t{unique}"
        self.root = root
        self.sink_name = f"sink-{unique}"
        specs = [catalog.TRANSITIONS_RAW, catalog.TRANSITIONS, catalog.DLQ]
        admin.ensure_topics(kafka, [s.model_copy(update={"name": s.name + self.suffix})
                                    for s in specs])
        self.producer = EventProducer(kafka, role="test")
        self.sent: list[RewardedTransitionBatch] = []

    def topic(self, spec: catalog.TopicSpec) -> str:
        return spec.name + self.suffix

    def send(self, raw: TransitionBatch) -> None:
        """``raw`` on ``transitions.raw`` and its rewarded view on ``transitions``, as an
        agent and a reward job publish them."""
        done = np.zeros(len(raw), bool)
        rewarded = RewardedTransitionBatch.from_raw(
            raw, reward_fn=REWARD, reward=-np.abs(raw.observation[:, 0]),
            success=done, terminated=done)
        for spec, batch in ((catalog.TRANSITIONS_RAW, raw), (catalog.TRANSITIONS, rewarded)):
            rec = serde.encode(spec, batch, sites=self.kafka.sites)
            self.producer.send_encoded(dataclasses.replace(rec, topic=self.topic(spec)))
        self.sent.append(rewarded)

    def sink(self) -> None:
        """Run the Delta sink until it has written every record of both topics."""
        self.producer.flush()
        settings = sink.SinkSettings(
            name=self.sink_name, root=self.root, topic_suffix=self.suffix, static=True,
            topics=(catalog.TRANSITIONS_RAW.name, catalog.TRANSITIONS.name),
            flush_rows=200, flush_interval_s=0.2, compact_interval_s=0)
        runner = sink.DeltaSink(self.kafka, settings)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not (self.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW)
                       and self.caught_up(catalog.TRANSITIONS, tables.TRANSITIONS)):
                assert thread.is_alive(), "the sink stopped"
                assert time.monotonic() < deadline, "the sink did not catch up in 60 s"
                time.sleep(0.1)
        finally:
            runner.stop()
            thread.join(30)

    def caught_up(self, spec: catalog.TopicSpec, table: str) -> bool:
        name = self.topic(spec)
        c = Consumer(self.kafka.consumer_config(f"probe-{self.suffix}", role="probe"))
        try:
            parts = c.list_topics(name, timeout=10).topics[name].partitions
            ends = {p: c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                    for p in parts}
        finally:
            c.close()
        dt = sink.open_table(tables.table_path(self.root, table))
        if dt is None:
            return False
        return all(end == 0 or (dt.transaction_version(
            contract.app_id(self.sink_name, name, p)) or -1) >= end - 1
            for p, end in ends.items())

    def table(self, name: str) -> pa.Table:
        dt = sink.open_table(tables.table_path(self.root, name))
        assert dt is not None, f"no {name} table"
        return dt.to_pyarrow_dataset().to_table()

    def warm_start(self, publishers: Publishers) -> tuple[Learner, int]:
        """A learner fed from the Delta history; and how many steps it took."""
        learner = make(experiment(), publishers)
        history = _history.read(self.root, experiments=("exp-1",), reward_fn=REWARD,
                                topic=self.topic(catalog.TRANSITIONS), partitions=[0, 1, 2, 3],
                                sink_name=self.sink_name)
        return learner, sum(learner.add(steps, "history") for steps in history.steps())

    def live(self, publishers: Publishers) -> tuple[Learner, int]:
        """A learner fed from the live stream (from its beginning); and how many steps."""
        learner = make(experiment(), publishers)
        reader = _live.LiveSteps(self.kafka, self.topic(catalog.TRANSITIONS),
                                 experiments=("exp-1",), reward_fn=REWARD)
        reader.start({})
        taken: list[Steps] = []
        try:
            deadline = time.monotonic() + 60
            while sum(len(s) for s in taken) < sum(len(b) for b in self.sent):
                assert time.monotonic() < deadline, "the live reader fell short"
                reader.wait(0.2)
                taken += reader.drain(64)
        finally:
            reader.close()
        return learner, sum(learner.add(steps, "live") for steps in taken)


@pytest.fixture
def space(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[Space]:
    s = Space(kafka, unique, tmp_path / "delta")
    yield s
    s.producer.flush()


@pytest.fixture
def publishers() -> Iterator[Publishers]:
    p = Publishers()
    yield p
    p.close()


def steps(first: int, n: int, *, robot: str, incarnation: str, clock_s: float = 0.0,
          site: str = "lab-a") -> TransitionBatch:
    """Steps ``first … first+n-1`` (their ``seq``) of one incarnation, episodes of
    :data:`EPISODE` steps; the robot's clock reads ``clock_s`` seconds off."""
    batch = samples.batch(REACHER, n, rng=first, site=site, robot_id=robot,
                          first_step=first, episode_len=EPISODE, incarnation=incarnation)
    shift = np.int64(round(clock_s * NS))
    return dataclasses.replace(batch, observed_ns=batch.observed_ns + shift,
                               acted_ns=batch.acted_ns + shift)


def identities(table: pa.Table) -> list[tuple[str, str, int]]:
    return sorted(zip(*(table.column(c).to_pylist() for c in contract.STEP_ID), strict=True))


def test_a_clock_stepped_back_600_s_between_episodes_loses_no_step(
        space: Space, publishers: Publishers) -> None:
    for first in range(0, EPISODE, BATCH):  # episode 1
        space.send(steps(first, BATCH, robot="r1", incarnation="inc-r1"))
    for first in range(EPISODE, 2 * EPISODE, BATCH):  # NTP stepped the clock back 600 s
        space.send(steps(first, BATCH, robot="r1", incarnation="inc-r1", clock_s=-600))
    space.sink()

    want = [("r1", "inc-r1", s) for s in range(100)]
    assert identities(space.table(tables.TRANSITIONS_RAW)) == want
    assert identities(space.table(tables.TRANSITIONS)) == want
    learner, taken = space.warm_start(publishers)
    assert (taken, learner.duplicates) == (100, 0)
    learner, taken = space.live(publishers)
    assert (taken, learner.duplicates) == (100, 0)


def test_two_incarnations_of_one_robot_interleaving_episodes_keep_every_step(
        space: Space, publishers: Publishers) -> None:
    # Two agents both claimed r2: their steps overlap in time, records interleave.
    for first in range(0, EPISODE, BATCH):
        for inc, offset_s in (("inc-a", 0.0), ("inc-b", 0.001)):
            space.send(steps(first, BATCH, robot="r2", incarnation=inc, clock_s=offset_s,
                             site="lab-b"))
    space.sink()

    want = sorted(("r2", inc, s) for inc in ("inc-a", "inc-b") for s in range(EPISODE))
    assert identities(space.table(tables.TRANSITIONS_RAW)) == want
    assert identities(space.table(tables.TRANSITIONS)) == want
    learner, taken = space.warm_start(publishers)
    assert (taken, learner.duplicates) == (100, 0)
    learner, taken = space.live(publishers)
    assert (taken, learner.duplicates) == (100, 0)


def test_steps_sent_again_are_taken_once_by_sink_and_learner(
        space: Space, publishers: Publishers) -> None:
    batches = [steps(first, BATCH, robot="r1", incarnation="inc-r1")
               for first in range(0, 60, BATCH)]
    for batch in batches[:4]:
        space.send(batch)
    for batch in batches[1:3]:  # an agent's re-sent spool / a reward job's retry
        space.send(batch)
    for batch in batches[4:]:
        space.send(batch)
    space.sink()

    want = [("r1", "inc-r1", s) for s in range(60)]
    assert identities(space.table(tables.TRANSITIONS_RAW)) == want
    assert identities(space.table(tables.TRANSITIONS)) == want
    learner, taken = space.live(publishers)
    assert (taken, learner.duplicates) == (60, 20)


def executed_actions(batches: list[RewardedTransitionBatch]) -> dict[bytes, bool]:
    """Each executed action's bytes -> whether a human chose it."""
    return {a.tobytes(): bool(flag) for b in batches
            for a, flag in zip(b.action, b.intervention, strict=True)}


def assert_buffer_holds_takeovers(learner: Learner, sent: list[RewardedTransitionBatch]
                                  ) -> None:
    batch = learner.types[REACHER.robot_type].online.sample(2_000)
    assert batch.intervention is not None, "the buffer dropped the intervention flag"
    executed = executed_actions(sent)
    got = [(a.numpy().tobytes(), bool(f))
           for a, f in zip(batch.action, batch.intervention, strict=True)]
    assert all(executed.get(a) == flag for a, flag in got), \
        "a sampled action is not what the robot executed, or its flag is wrong"
    assert any(flag for _, flag in got), "no takeover sampled"
    proposals = {p.tobytes() for b in sent for p in b.policy_action[b.intervention]}
    assert not proposals & {a for a, _ in got}, "trained on the policy's overridden proposal"


def test_takeovers_reach_the_buffer_flagged_with_the_executed_action(
        space: Space, publishers: Publishers) -> None:
    for first in range(0, 2 * EPISODE, BATCH):
        space.send(steps(first, BATCH, robot="r1", incarnation="inc-r1"))
    sent = space.sent
    assert all((b.action[b.intervention] != b.policy_action[b.intervention]).any()
               for b in sent if b.intervention.any())
    assert sum(int(b.intervention.sum()) for b in sent) > 10
    space.sink()

    rows = space.table(tables.TRANSITIONS)
    assert sum(rows.column("intervention").to_pylist()) == sum(
        int(b.intervention.sum()) for b in sent)
    learner, _ = space.warm_start(publishers)
    assert_buffer_holds_takeovers(learner, sent)
    learner, _ = space.live(publishers)
    assert_buffer_holds_takeovers(learner, sent)
