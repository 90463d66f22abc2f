"""Streaming weight sync through a real broker: learner publisher -> agent subscriber.

Every wait is on observed state (a manifest acknowledged, a version applied or refused)
with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import hashlib
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
from topics import catalog, serde, signing
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


def subscriber(kafka: KafkaSettings, experiment: str,
               settings: SubscriberSettings | None = None,
               sources: list[KafkaWeightsSource] | None = None) -> WeightsSubscriber:
    """A started subscriber wanting ``experiment`` (its source appended to ``sources``)."""
    def source() -> KafkaWeightsSource:
        made = KafkaWeightsSource(kafka)
        if sources is not None:
            sources.append(made)
        return made

    sub = WeightsSubscriber(source, SPEC, settings or SubscriberSettings(
        deterministic=True, fetch_timeout_s=30.0))
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
                           corrupt_index: int | None,
                           order: list[int] | None = None) -> list[int]:
    """Produce chunks to ``weights`` (one with a flipped byte; in ``order`` of indices,
    default index order), returning chunk i's offset at position i."""
    producer = Producer(kafka.producer_config(role="test-forger"))
    offsets: dict[int, int] = {}

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        offsets[len(offsets)] = msg.offset() or 0

    by_order = [chunks[i] for i in (order or range(len(chunks)))]
    for chunk in by_order:
        rec = serde.encode(catalog.WEIGHTS, chunk)
        value = bytearray(rec.value)
        if chunk.index == corrupt_index:
            value[len(value) // 2] ^= 0x01
        producer.produce(rec.topic, bytes(value), rec.key, partition=CHUNK_PARTITION,
                         headers=list(rec.headers), on_delivery=delivered)
        producer.flush(30.0)  # one at a time, so offsets[k] is the k-th produced
    at = {chunk.index: offsets[k] for k, chunk in enumerate(by_order)}
    return [at[i] for i in range(len(chunks))]


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

        # A forged v3 whose chunks are intact but whose whole-blob hash is wrong: each
        # byte is hashed once (its chunk's digest pins it), so only an agent that opts
        # into the second pass over the joined blob sees the contradiction.
        strict = subscriber(kafka, experiment, SubscriberSettings(
            deterministic=True, fetch_timeout_s=30.0, verify_blob_sha256=True))
        try:
            # joining now, it goes straight to the newest manifest: the damaged v2
            assert strict.wait_rejected(experiment, 2, DEADLINE_S)
            chunks = weights_sync.chunk_events(experiment, 3, blob, SETTINGS.chunk_bytes)
            offsets = produce_chunks_by_hand(kafka, chunks, corrupt_index=None)
            manifest = weights_sync.build_manifest(snap, experiment_id=experiment, version=3,
                                                   blob=blob, chunks=chunks, offsets=offsets,
                                                   chunk_bytes=SETTINGS.chunk_bytes)
            manifests.send(catalog.WEIGHTS_MANIFESTS,
                           manifest.model_copy(update={"sha256": "0" * 64}))
            manifests.flush()
            assert strict.wait_rejected(experiment, 3, DEADLINE_S)
            assert strict.rejected["blob_hash"] == 1, strict.rejected
            assert strict.current(experiment) is None
        finally:
            strict.close()
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


# -- the fetch path: chunks read as they are written, hashed once, any order (issue 17) ----


def forge_version(kafka: KafkaSettings, experiment: str, algorithm: sac.SAC, version: int,
                  *, corrupt_index: int | None = None, order: list[int] | None = None,
                  key: signing.SigningKey | None = None, shift: int = 0) -> int:
    """Write one version by hand (chunks in ``order``, one maybe damaged after hashing,
    the manifest maybe signed by ``key``, its offsets ``shift`` ed as another log's
    would be); the number of chunks."""
    snap = snapshot_of(algorithm, step=version)
    blob = weights_sync.serialise(snap)
    chunks = weights_sync.chunk_events(experiment, version, blob, SETTINGS.chunk_bytes)
    offsets = [o + shift for o in produce_chunks_by_hand(kafka, chunks, corrupt_index, order)]
    manifest = weights_sync.build_manifest(snap, experiment_id=experiment, version=version,
                                           blob=blob, chunks=chunks, offsets=offsets,
                                           chunk_bytes=SETTINGS.chunk_bytes)
    if key is not None:
        manifest = signing.sign(manifest, key)
    manifests = EventProducer(kafka, role="test-forger")
    manifests.send(catalog.WEIGHTS_MANIFESTS, manifest)
    manifests.flush()
    return len(chunks)


def test_chunks_are_read_while_written_and_each_byte_is_hashed_once(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC,
        publisher: weights_sync.WeightsPublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: dict[str, int] = {}
    real = hashlib.sha256

    def counting(data: bytes = b"", **kwargs: bool) -> hashlib._Hash:
        name = threading.current_thread().name
        hashed[name] = hashed.get(name, 0) + len(data)
        return real(data, **kwargs)

    sources: list[KafkaWeightsSource] = []
    sub = subscriber(kafka, experiment, sources=sources)
    try:
        monkeypatch.setattr(hashlib, "sha256", counting)
        version = publish(publisher, learner, step=1)
        assert sub.wait_applied(experiment, version, DEADLINE_S), sub.last_rejection
        monkeypatch.undo()
        applied = sub.current(experiment)
        assert applied is not None
        np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True),
                                   learner_actions(learner), rtol=0, atol=1e-6)
        blob_bytes = len(weights_sync.serialise(snapshot_of(learner, step=1)))
        n = -(-blob_bytes // SETTINGS.chunk_bytes)
        assert n > 3
        # Every chunk came from the tail (read before its manifest existed) …
        assert (sources[0].chunks_from_tail, sources[0].chunks_fetched) == (n, 0)
        # … and the agent's threads hashed each byte of the blob exactly once.
        agent_side = sum(v for k, v in hashed.items()
                         if k.startswith(("weights-tail", "weights-subscriber")))
        assert agent_side == blob_bytes, hashed
    finally:
        sub.close()


@pytest.mark.parametrize("order, shift", [
    ([5, 0, 4, 1, 3, 2], 0),
    # A mirrored topic (DESIGN §9): the manifest names the cloud's offsets, this log holds
    # the chunks elsewhere: the tail matches them by identity and digest, a subscriber
    # that started later finds them by identity in the log.
    ([2, 0, 1, 3, 4, 5], 1_000_000_000),
], ids=["same-log", "mirrored-log"])
def test_chunks_written_out_of_order_assemble_from_the_tail_and_from_the_log(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC, order: list[int],
        shift: int) -> None:
    sources: list[KafkaWeightsSource] = []
    early = subscriber(kafka, experiment, sources=sources)
    try:
        n = 6  # a 16x16 mlp_gaussian (2.6 kB) in 512-byte chunks (asserted below)
        assert forge_version(kafka, experiment, learner, 1, order=order, shift=shift) == n
        assert early.wait_applied(experiment, 1, DEADLINE_S), early.last_rejection
        assert sources[0].chunks_from_tail == n
        # A subscriber started afterwards finds none in its tail: it reads them from the log.
        late = subscriber(kafka, experiment, sources=sources)
        try:
            assert late.wait_applied(experiment, 1, DEADLINE_S), late.last_rejection
            assert (sources[1].chunks_from_tail, sources[1].chunks_fetched) == (0, n)
            for sub in (early, late):
                applied = sub.current(experiment)
                assert applied is not None and not sub.rejected
                np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True),
                                           learner_actions(learner), rtol=0, atol=1e-6)
        finally:
            late.close()
    finally:
        early.close()


def test_a_corrupted_chunk_read_by_offset_is_rejected(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC) -> None:
    forge_version(kafka, experiment, learner, 1, corrupt_index=2, order=[3, 2, 1, 0, 4, 5])
    sources: list[KafkaWeightsSource] = []
    sub = subscriber(kafka, experiment, sources=sources)  # starts after the chunks
    try:
        assert sub.wait_rejected(experiment, 1, DEADLINE_S)
        assert sub.rejected == {"unreadable_chunk": 1}, sub.rejected
        assert sub.current(experiment) is None
        assert sources[0].chunks_from_tail == 0
    finally:
        sub.close()


def test_without_prefetch_chunks_are_read_after_their_manifest(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC) -> None:
    sources: list[KafkaWeightsSource] = []
    sub = subscriber(kafka, experiment, SubscriberSettings(
        deterministic=True, fetch_timeout_s=30.0, prefetch=False), sources=sources)
    try:
        n = forge_version(kafka, experiment, learner, 1, order=[1, 0, 3, 2, 5, 4])
        assert sub.wait_applied(experiment, 1, DEADLINE_S), sub.last_rejection
        assert (sources[0].chunks_from_tail, sources[0].chunks_fetched) == (0, n)
    finally:
        sub.close()


def test_signatures_are_checked_before_chunks_are_used_on_the_fast_path(
        kafka: KafkaSettings, experiment: str, learner: sac.SAC, tmp_path: Path) -> None:
    trusted_key, stranger = signing.SigningKey.generate(), signing.SigningKey.generate()
    signing.TrustedKeys().trust(trusted_key.public).save(tmp_path / "trusted.json")
    sources: list[KafkaWeightsSource] = []
    sub = subscriber(kafka, experiment, SubscriberSettings(
        deterministic=True, fetch_timeout_s=30.0, trusted_keys=tmp_path / "trusted.json"),
        sources=sources)
    try:
        forge_version(kafka, experiment, learner, 1)  # unsigned
        assert sub.wait_rejected(experiment, 1, DEADLINE_S)
        forge_version(kafka, experiment, learner, 2, key=stranger)
        assert sub.wait_rejected(experiment, 2, DEADLINE_S)
        assert sub.rejected == {"unsigned": 1, "untrusted_key": 1}, sub.rejected
        assert sub.current(experiment) is None
        n = forge_version(kafka, experiment, learner, 3, key=trusted_key,
                          order=[1, 0, 2, 3, 4, 5])
        assert sub.wait_applied(experiment, 3, DEADLINE_S), sub.last_rejection
        assert sources[0].chunks_from_tail == n  # refused versions' chunks were never taken
    finally:
        sub.close()
