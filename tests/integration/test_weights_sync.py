"""Streaming weight sync through a real broker: learner publisher -> agent subscriber.

Every wait is on observed state (a manifest acknowledged, a version applied or refused)
with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from confluent_kafka import KafkaError, Message, Producer

from agents.agent import Agent, AgentSettings
from agents.weights import SubscriberSettings, WeightsSubscriber
from agents.weights_kafka import KafkaWeightsSource
from learners import policies, sac, weights_sync
from learners.weights_sync import Snapshot, WeightSyncSettings
from learners.weights_sync_kafka import CHUNK_PARTITION, KafkaWeightsSink
from schemas import events
from schemas.transitions import TransitionBatch
from topics import catalog, serde
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted

pytestmark = pytest.mark.integration

torch.set_num_threads(1)

SPEC = policies.PolicySpec(6, 2, (-1.0, -1.0), (1.0, 1.0))
HIDDEN = (16, 16)
OBS = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
#: Small chunks, so even a tiny policy travels as several records.
SETTINGS = WeightSyncSettings(chunk_bytes=512, max_bytes_per_s=0)
DEADLINE_S = 60.0


@pytest.fixture
def experiment(unique: str) -> str:
    return f"exp-w-{unique}"


@pytest.fixture
def learner() -> sac.SAC:
    return sac.SAC(SPEC, sac.SACConfig(hidden_sizes=HIDDEN, seed=3))


def snapshot_of(algorithm: sac.SAC, step: int) -> Snapshot:
    return Snapshot.of_algorithm(algorithm, kind="mlp_gaussian",
                                 options={"hidden_sizes": list(HIDDEN)}, spec=SPEC,
                                 learner_step=step)


def learner_actions(algorithm: sac.SAC) -> np.ndarray:
    policy = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": list(HIDDEN)})
    policy.load_weights(algorithm.policy_weights())
    return policy.act(OBS, deterministic=True)


def perturb(algorithm: sac.SAC) -> None:
    """Stand-in for training: the actor's weights move."""
    with torch.no_grad():
        for p in algorithm.actor.parameters():
            p.add_(0.05)


@pytest.fixture
def publisher(kafka: KafkaSettings, experiment: str) -> Iterator[weights_sync.WeightsPublisher]:
    pub = weights_sync.WeightsPublisher(KafkaWeightsSink(kafka), experiment, SETTINGS)
    pub.start()
    yield pub
    pub.close()


def subscriber(kafka: KafkaSettings, experiment: str) -> WeightsSubscriber:
    sub = WeightsSubscriber(lambda: KafkaWeightsSource(kafka), SPEC,
                            SubscriberSettings(deterministic=True, fetch_timeout_s=30.0))
    sub.want(experiment)
    sub.start()
    assert sub.wait_ready(DEADLINE_S), "the subscriber never caught up on manifests"
    return sub


def publish(pub: weights_sync.WeightsPublisher, algorithm: sac.SAC, step: int) -> int:
    """Publish a snapshot and wait until its manifest is durable; its version."""
    before = pub.published_version
    pub.publish(snapshot_of(algorithm, step))
    assert pub.wait_published(before + 1, DEADLINE_S), pub.stats
    return pub.published_version


def test_a_published_version_is_applied_and_acts_exactly_like_the_learners_policy(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC,
        publisher: weights_sync.WeightsPublisher) -> None:
    sub = subscriber(kafka, experiment)
    try:
        v1 = publish(publisher, learner, step=100)
        assert v1 == 1
        assert sub.wait_applied(experiment, v1, DEADLINE_S), sub.last_rejection
        applied = sub.current(experiment)
        assert applied is not None and applied.learner_step == 100
        # agents act with numpy (learners.policies.load_for_inference): the
        # learner's torch actions to float32 rounding, not bit for bit.
        np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True),
                                   learner_actions(learner), rtol=0, atol=1e-6)

        perturb(learner)
        v2 = publish(publisher, learner, step=200)
        assert sub.wait_applied(experiment, v2, DEADLINE_S), sub.last_rejection
        applied = sub.current(experiment)
        assert applied is not None and applied.version == 2
        # agents act with numpy (learners.policies.load_for_inference): the
        # learner's torch actions to float32 rounding, not bit for bit.
        np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True),
                                   learner_actions(learner), rtol=0, atol=1e-6)
        assert not sub.rejected
    finally:
        sub.close()


def produce_chunks_by_hand(kafka: KafkaSettings, chunks: list[events.WeightsChunkV1],
                           corrupt_index: int | None) -> list[int]:
    """Produce chunks to ``weights`` (one with a flipped byte), returning their offsets."""
    producer = Producer(kafka.producer_config(role="test-forger"))
    offsets: dict[int, int] = {}

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        offsets[len(offsets)] = msg.offset() or 0

    for chunk in chunks:
        rec = serde.encode(catalog.WEIGHTS, chunk)
        value = bytearray(rec.value)
        if chunk.index == corrupt_index:
            value[len(value) // 2] ^= 0x01
        producer.produce(rec.topic, bytes(value), rec.key, partition=CHUNK_PARTITION,
                         headers=list(rec.headers), on_delivery=delivered)
        producer.flush(30.0)  # one at a time, so offsets[i] is chunk i's
    return [offsets[i] for i in range(len(chunks))]


def test_a_corrupted_chunk_is_rejected_and_the_robot_keeps_its_previous_policy(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC,
        publisher: weights_sync.WeightsPublisher) -> None:
    sub = subscriber(kafka, experiment)
    try:
        v1 = publish(publisher, learner, step=1)
        assert sub.wait_applied(experiment, v1, DEADLINE_S), sub.last_rejection
        good_actions = learner_actions(learner)

        # A forged v2: valid manifest, but one chunk's bytes were damaged after hashing.
        perturb(learner)
        snap = snapshot_of(learner, step=2)
        blob = weights_sync.serialise(snap)
        chunks = weights_sync.chunk_events(experiment, 2, blob, SETTINGS.chunk_bytes)
        offsets = produce_chunks_by_hand(kafka, chunks, corrupt_index=1)
        manifest = weights_sync.build_manifest(snap, experiment_id=experiment, version=2,
                                               blob=blob, chunks=chunks, offsets=offsets,
                                               chunk_bytes=SETTINGS.chunk_bytes)
        manifests = EventProducer(kafka, role="test-forger")
        manifests.send(catalog.WEIGHTS_MANIFESTS, manifest)
        manifests.flush()

        assert sub.wait_rejected(experiment, 2, DEADLINE_S)
        assert sub.rejected["unreadable_chunk"] == 1, sub.rejected
        applied = sub.current(experiment)
        assert applied is not None and applied.version == v1
        # agents act with numpy (learners.policies.load_for_inference): the
        # learner's torch actions to float32 rounding, not bit for bit.
        np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True), good_actions,
                                   rtol=0, atol=1e-6)

        # A forged v3 whose chunks are intact but whose whole-blob hash is wrong.
        chunks = weights_sync.chunk_events(experiment, 3, blob, SETTINGS.chunk_bytes)
        offsets = produce_chunks_by_hand(kafka, chunks, corrupt_index=None)
        manifest = weights_sync.build_manifest(snap, experiment_id=experiment, version=3,
                                               blob=blob, chunks=chunks, offsets=offsets,
                                               chunk_bytes=SETTINGS.chunk_bytes)
        manifests.send(catalog.WEIGHTS_MANIFESTS,
                       manifest.model_copy(update={"sha256": "0" * 64}))
        manifests.flush()
        assert sub.wait_rejected(experiment, 3, DEADLINE_S)
        assert sub.rejected["blob_hash"] == 1, sub.rejected
        applied = sub.current(experiment)
        assert applied is not None and applied.version == v1
    finally:
        sub.close()


def test_a_robot_that_joins_late_gets_the_latest_version_at_once(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC,
        publisher: weights_sync.WeightsPublisher) -> None:
    publish(publisher, learner, step=1)
    perturb(learner)
    latest = publish(publisher, learner, step=2)
    sub = subscriber(kafka, experiment)
    try:
        assert sub.wait_applied(experiment, latest, DEADLINE_S), sub.last_rejection
        assert sub.applied_versions == [(experiment, latest)]
        applied = sub.current(experiment)
        assert applied is not None
        # agents act with numpy (learners.policies.load_for_inference): the
        # learner's torch actions to float32 rounding, not bit for bit.
        np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True),
                                   learner_actions(learner), rtol=0, atol=1e-6)
    finally:
        sub.close()


def test_a_restarted_publisher_continues_after_the_newest_version(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC,
        publisher: weights_sync.WeightsPublisher) -> None:
    publish(publisher, learner, step=1)
    publish(publisher, learner, step=2)
    again = weights_sync.WeightsPublisher(KafkaWeightsSink(kafka), experiment, SETTINGS)
    again.start()
    try:
        assert publish(again, learner, step=3) == 3
    finally:
        again.close()


def test_an_agent_runs_the_learned_policy_and_stamps_its_version_on_every_step(
        kafka: KafkaSettings, experiment: str, unique: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_AGENT_WEIGHTS_DETERMINISTIC", "true")  # comparable actions
    robot_id = f"wr-{unique}"
    agent = Agent(AgentSettings(robot_type="reacher2d", site="lab-a", robot_id=robot_id,
                                seed=1, flush_steps=5, flush_ms=100, home=tmp_path), kafka)
    spec = policies.PolicySpec.from_robot_spec(agent.robots[0].spec)
    trained = policies.build("mlp_gaussian", spec, {"hidden_sizes": [16, 16]})
    # The robot type's own stream of the experiment it is leased to.
    stream = policies.weights_stream(experiment, "reacher2d")
    pub = weights_sync.WeightsPublisher(KafkaWeightsSink(kafka), stream, SETTINGS)
    pub.start()
    steps = Follower(kafka, {catalog.TRANSITIONS_RAW: "end"}, role="test-steps")
    runner = threading.Thread(target=agent.run, name="agent")
    runner.start()
    try:
        pub.publish(Snapshot.take(trained.export_weights(), kind="mlp_gaussian",
                                  options={"hidden_sizes": [16, 16]}, spec=spec))
        assert pub.wait_published(1, DEADLINE_S), pub.stats
        grants = EventProducer(kafka, role="test-lease")
        grants.send(catalog.ASSIGNMENTS, events.LeaseGrantedV1(
            site="lab-a", robot_id=robot_id, experiment_id=experiment, lease_id=f"l-{unique}"))
        grants.flush()

        learned: list[tuple[np.ndarray, np.ndarray]] = []
        deadline = time.monotonic() + DEADLINE_S
        while not learned and time.monotonic() < deadline:
            for item in steps.poll(0.5):
                batch = item.event if isinstance(item, Accepted) else None
                if isinstance(batch, TransitionBatch) and batch.event.robot_id == robot_id:
                    mask = batch.policy_version == 1
                    assert set(batch.policy_version.tolist()) <= {0, 1}
                    if mask.any():
                        learned.append((batch.observation[mask], batch.action[mask]))
        assert learned, "no step of the learned version arrived"
        observations, actions = learned[0]
        np.testing.assert_allclose(actions, trained.act(observations, deterministic=True),
                                   atol=1e-6)
        assert agent.weights is not None and not agent.weights.rejected
    finally:
        agent.stop()
        runner.join(30.0)
        steps.close()
        pub.close()
