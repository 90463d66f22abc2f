"""Streaming weight sync without a broker: chunking, verification, latest-wins, the cap."""

from __future__ import annotations

import json
import random
import struct
import threading
import time

import numpy as np
import pytest
import torch

from agents import weights
from agents.weights import FetchedChunk, WeightsRejected, WeightsSubscriber
from agents.worker import Lease
from learners import policies, weights_sync
from learners.weights_sync import InMemoryWeightsSink, Snapshot, WeightSyncSettings
from schemas import events

torch.set_num_threads(1)

SPEC = policies.PolicySpec(4, 2, (-1.0, -1.0), (1.0, 1.0))
OPTIONS = {"hidden_sizes": [8, 8]}
OBS = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
LEASED_EXPERIMENT = "exp-unit"
EXP = policies.weights_stream(LEASED_EXPERIMENT, "reacher2d")


def snapshot(seed: int, step: int = 0, spec: policies.PolicySpec = SPEC) -> Snapshot:
    policy = policies.build("mlp_gaussian", spec, {**OPTIONS, "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for p in policy.actor.parameters():  # type: ignore[attr-defined]
            torch.nn.init.normal_(p)
    return Snapshot.take(policy.export_weights(), kind="mlp_gaussian", options=OPTIONS,
                         spec=spec, learner_step=step)


def published(snap: Snapshot, version: int = 1, chunk_bytes: int = 200
              ) -> tuple[events.WeightsManifestV1, list[FetchedChunk], bytes]:
    """One version as it would be on the topics (offsets 100, 101, …)."""
    blob = weights_sync.serialise(snap)
    chunks = weights_sync.chunk_events(EXP, version, blob, chunk_bytes)
    offsets = [100 + i for i in range(len(chunks))]
    manifest = weights_sync.build_manifest(snap, experiment_id=EXP, version=version, blob=blob,
                                           chunks=chunks, offsets=offsets,
                                           chunk_bytes=chunk_bytes)
    return manifest, [FetchedChunk(o, c) for o, c in zip(offsets, chunks, strict=True)], blob


def forged(chunk: events.WeightsChunkV1, **changes: object) -> events.WeightsChunkV1:
    """A chunk as a faulty or malicious writer could make it (no validation)."""
    return events.WeightsChunkV1.model_construct(**{**chunk.__dict__, **changes})


# -- chunking ---------------------------------------------------------------------------------


def test_chunks_cover_the_blob_in_order_and_only_the_last_is_shorter() -> None:
    blob = bytes(range(256)) * 10
    chunks = weights_sync.chunk_events(EXP, 3, blob, 300)
    assert [c.index for c in chunks] == list(range(9))
    assert {c.n_chunks for c in chunks} == {9}
    assert [len(c.data) for c in chunks] == [300] * 8 + [160]
    assert b"".join(c.data for c in chunks) == blob
    assert all(c.sha256 == policies.sha256_hex(c.data) for c in chunks)


def test_manifest_names_tensors_where_their_bytes_lie_in_the_blob() -> None:
    snap = snapshot(1)
    manifest, _, blob = published(snap)
    assert {t.name for t in manifest.tensors} == set(snap.tensors)
    for t in manifest.tensors:
        array = np.frombuffer(blob[t.begin : t.end], dtype=t.dtype).reshape(t.shape)
        np.testing.assert_array_equal(array, snap.tensors[t.name])
    assert manifest.total_bytes == len(blob) and manifest.sha256 == policies.sha256_hex(blob)
    assert manifest.learner_step == snap.learner_step and manifest.policy == "mlp_gaussian"


def test_chunk_size_setting_refuses_chunks_bigger_than_a_weights_record() -> None:
    with pytest.raises(ValueError):
        WeightSyncSettings(chunk_bytes=8 * 1024 * 1024)


def test_snapshot_is_a_copy_the_trainer_may_keep_changing() -> None:
    net = torch.nn.Linear(3, 2)
    snap = Snapshot.take(net.state_dict(), kind="k")
    before = snap.tensors["weight"].copy()
    with torch.no_grad():
        net.weight.add_(1.0)
    np.testing.assert_array_equal(snap.tensors["weight"], before)
    array = np.ones(3, dtype=np.float32)
    snap = Snapshot.take({"a": array}, kind="k")
    array[:] = 5
    assert snap.tensors["a"].tolist() == [1.0, 1.0, 1.0]


# -- verification -------------------------------------------------------------------------------


def test_chunks_in_any_order_assemble_into_the_published_blob() -> None:
    manifest, fetched, blob = published(snapshot(1))
    assert len(fetched) > 3
    random.Random(0).shuffle(fetched)
    assert weights.assemble(manifest, fetched) == blob


def test_a_corrupted_chunk_is_refused_even_if_it_claims_the_right_hash() -> None:
    manifest, fetched, _ = published(snapshot(1))
    bad = bytearray(fetched[1].chunk.data)
    bad[5] ^= 0xFF
    fetched[1] = FetchedChunk(fetched[1].offset, forged(fetched[1].chunk, data=bytes(bad)))
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "chunk_hash"


def test_a_missing_chunk_is_refused() -> None:
    manifest, fetched, _ = published(snapshot(1))
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched[:2] + fetched[3:])
    assert err.value.reason == "missing_chunk"


def test_a_truncated_chunk_is_refused() -> None:
    manifest, fetched, _ = published(snapshot(1))
    last = fetched[-1]
    fetched[-1] = FetchedChunk(last.offset, forged(last.chunk, data=last.chunk.data[:-1]))
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "chunk_size"


def test_a_wrong_whole_blob_hash_is_refused() -> None:
    manifest, fetched, _ = published(snapshot(1))
    manifest = manifest.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "blob_hash"


def test_a_wrong_chunk_hash_in_the_manifest_is_refused() -> None:
    manifest, fetched, _ = published(snapshot(1))
    hashes = list(manifest.chunk_sha256)
    hashes[0] = "f" * 64
    manifest = manifest.model_copy(update={"chunk_sha256": tuple(hashes)})
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "chunk_hash"


def test_reordered_chunks_under_each_others_indices_are_refused() -> None:
    manifest, fetched, _ = published(snapshot(1))
    a, b = fetched[0], fetched[1]
    # Each chunk read at the other's offset (a writer or reader that mixed them up).
    fetched[0], fetched[1] = FetchedChunk(a.offset, b.chunk), FetchedChunk(b.offset, a.chunk)
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "chunk_mismatch"
    # Same offsets, data swapped between indices: the hashes catch it.
    fetched = published(snapshot(1))[1]
    a, b = fetched[0], fetched[1]
    fetched[0] = FetchedChunk(a.offset, forged(a.chunk, data=b.chunk.data))
    fetched[1] = FetchedChunk(b.offset, forged(b.chunk, data=a.chunk.data))
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "chunk_hash"


def test_a_chunk_of_another_version_is_refused() -> None:
    manifest, fetched, _ = published(snapshot(1), version=2)
    fetched[0] = FetchedChunk(fetched[0].offset, forged(fetched[0].chunk, version=1))
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "chunk_mismatch"


def test_a_manifest_whose_chunk_count_contradicts_its_size_is_refused() -> None:
    manifest, fetched, _ = published(snapshot(1))
    manifest = manifest.model_copy(update={"total_bytes": manifest.total_bytes * 3})
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, fetched)
    assert err.value.reason == "bad_manifest"


def test_verified_weights_build_a_policy_acting_like_the_learners() -> None:
    snap = snapshot(1)
    manifest, fetched, _ = published(snap)
    blob = weights.assemble(manifest, fetched)
    source = policies.build("mlp_gaussian", SPEC, OPTIONS)
    source.load_weights(snap.tensors)
    # The learner's torch network: bit for bit; the agents' numpy twin (no torch in the
    # agent, issue 17): to float32 rounding.
    exact = weights.build_policy(manifest, blob, SPEC, numpy_inference=False)
    np.testing.assert_array_equal(exact.act(OBS, deterministic=True),
                                  source.act(OBS, deterministic=True))
    policy = weights.build_policy(manifest, blob, SPEC)
    assert isinstance(policy, policies.NumpyMlpGaussianPolicy)
    np.testing.assert_allclose(policy.act(OBS, deterministic=True),
                               source.act(OBS, deterministic=True), rtol=0, atol=1e-6)


def test_weights_trained_for_another_robot_are_refused() -> None:
    other = policies.PolicySpec(4, 2, (-2.0, -2.0), (2.0, 2.0))
    manifest, fetched, _ = published(snapshot(1, spec=other))
    with pytest.raises(WeightsRejected) as err:
        weights.build_policy(manifest, weights.assemble(manifest, fetched), SPEC)
    assert err.value.reason == "spec_mismatch"


def test_the_spec_header_key_is_the_one_the_learner_writes() -> None:
    assert weights.SPEC_KEY == weights_sync.SPEC_KEY


# -- latest wins, pacing ------------------------------------------------------------------------


def test_a_newer_item_replaces_the_waiting_one() -> None:
    slot: weights_sync.LatestSlot[int] = weights_sync.LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1
    assert slot.take(0) == 2
    assert not slot.wait_idle(0)  # taken but not done
    slot.done()
    assert slot.wait_idle(0)
    assert slot.take(0) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.slept.append(seconds)
        self.now += seconds
        return False


def test_token_bucket_lets_rate_times_time_plus_burst_through() -> None:
    clock = FakeClock()
    bucket = weights_sync.TokenBucket(1000.0, 100.0, clock=clock, sleep=clock.sleep)
    for _ in range(20):
        assert bucket.take(100)
    # 2000 bytes at 1000 B/s with 100 B of burst: 1.9 s of waiting.
    assert clock.now == pytest.approx(1.9)
    clock.now += 10.0  # idle: tokens refill only up to the burst
    bucket.take(100)
    bucket.take(100)
    assert clock.now == pytest.approx(12.0)


class GatedSink(InMemoryWeightsSink):
    """Holds every chunk until the gate opens, as a slow link would."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send_chunk(self, chunk: events.WeightsChunkV1) -> None:
        self.entered.set()
        assert self.gate.wait(10.0)
        super().send_chunk(chunk)


def test_publish_returns_at_once_and_the_newest_snapshot_replaces_a_queued_one() -> None:
    sink = GatedSink()
    pub = weights_sync.WeightsPublisher(sink, EXP, WeightSyncSettings(max_bytes_per_s=0))
    pub.start()
    try:
        pub.publish(snapshot(1, step=10))
        assert sink.entered.wait(5.0)  # v1 is on the (blocked) wire
        began = time.monotonic()
        pub.publish(snapshot(2, step=20))
        pub.publish(snapshot(3, step=30))
        assert time.monotonic() - began < 1.0  # never waits for the link
        sink.gate.set()
        assert pub.flush(10.0)
    finally:
        pub.close()
    assert [(m.version, m.learner_step) for m in sink.manifests] == [(1, 10), (2, 30)]
    assert pub.stats.dropped == 1 and pub.stats.published == 2
    assert pub.published_version == 2


def test_versions_continue_after_the_newest_manifest_on_restart() -> None:
    sink = InMemoryWeightsSink()
    first = weights_sync.WeightsPublisher(sink, EXP, WeightSyncSettings(max_bytes_per_s=0))
    first.start()
    first.publish(snapshot(1))
    assert first.wait_published(1, 10.0)
    first.publish(snapshot(2))
    assert first.wait_published(2, 10.0)
    first.close()
    again = weights_sync.WeightsPublisher(sink, EXP, WeightSyncSettings(max_bytes_per_s=0))
    again.start()
    again.publish(snapshot(3))
    assert again.wait_published(3, 10.0)
    again.close()
    assert [m.version for m in sink.manifests] == [1, 2, 3]


def test_manifest_is_written_only_after_every_chunk_is_acknowledged() -> None:
    order: list[str] = []

    class Recording(InMemoryWeightsSink):
        def send_chunk(self, chunk: events.WeightsChunkV1) -> None:
            order.append("chunk")
            super().send_chunk(chunk)

        def acknowledged_offsets(self, timeout_s: float) -> list[int]:
            order.append("ack")
            return super().acknowledged_offsets(timeout_s)

        def send_manifest(self, manifest: events.WeightsManifestV1, timeout_s: float) -> None:
            order.append("manifest")
            super().send_manifest(manifest, timeout_s)

    sink = Recording()
    pub = weights_sync.WeightsPublisher(sink, EXP, WeightSyncSettings(chunk_bytes=256,
                                                                      max_bytes_per_s=0))
    pub.start(first_version=1)
    pub.publish(snapshot(1))
    assert pub.wait_published(1, 10.0)
    pub.close()
    n = len(sink.manifests[0].chunk_offsets)
    assert n > 1 and order == ["chunk"] * n + ["ack", "manifest"]


def test_a_failed_publish_is_counted_and_the_next_version_number_is_not_reused() -> None:
    class Flaky(InMemoryWeightsSink):
        fail = True

        def acknowledged_offsets(self, timeout_s: float) -> list[int]:
            offsets = super().acknowledged_offsets(timeout_s)
            if self.fail:
                self.fail = False
                raise TimeoutError("not acknowledged")
            return offsets

    sink = Flaky()
    pub = weights_sync.WeightsPublisher(sink, EXP, WeightSyncSettings(max_bytes_per_s=0))
    pub.start(first_version=1)
    pub.publish(snapshot(1))
    assert pub.flush(10.0)
    pub.publish(snapshot(2))
    assert pub.wait_published(2, 10.0)
    pub.close()
    assert pub.stats.failed == 1 and [m.version for m in sink.manifests] == [2]


def test_publishing_honours_the_bandwidth_cap_roughly() -> None:
    rate, chunk = 2e6, 64 * 1024
    big = {"w": np.zeros(150_000, dtype=np.float32)}  # 600 kB
    sink = InMemoryWeightsSink()
    pub = weights_sync.WeightsPublisher(
        sink, EXP, WeightSyncSettings(chunk_bytes=chunk, max_bytes_per_s=rate))
    pub.start(first_version=1)
    began = time.monotonic()
    pub.publish(Snapshot.take(big, kind="raw"))
    assert pub.wait_published(1, 10.0)
    elapsed = time.monotonic() - began
    pub.close()
    floor = (sink.manifests[0].total_bytes - chunk) / rate  # everything but the burst
    assert floor * 0.9 <= elapsed < floor + 1.5
    assert pub.stats.throttled_s == pytest.approx(floor, rel=0.2)


def test_schedule_fires_every_n_updates_or_t_seconds() -> None:
    clock = FakeClock()
    schedule = weights_sync.PublishSchedule(WeightSyncSettings(every_updates=10, every_s=5.0),
                                            clock)
    assert [s for s in range(1, 31) if schedule.due(s)] == [10, 20, 30]
    clock.now += 6.0
    assert schedule.due(31) and not schedule.due(32)


# -- the subscriber over an in-memory source ----------------------------------------------------


class MemorySource:
    """A WeightsSource over an InMemoryWeightsSink (offsets are list positions)."""

    def __init__(self, sink: InMemoryWeightsSink) -> None:
        self.sink = sink
        self._seen = 0
        self._caught_up = False
        self.refused: list[tuple[int, events.RejectReason, str]] = []

    def manifests(self, timeout_s: float) -> list[events.WeightsManifestV1 | str]:
        new = self.sink.manifests[self._seen :]
        self._seen += len(new)
        self._caught_up = True
        if not new:
            time.sleep(min(timeout_s, 0.01))  # a real source blocks for a while
        return list(new)

    def caught_up(self) -> bool:
        return self._caught_up

    def fetch(self, manifest: events.WeightsManifestV1, timeout_s: float) -> list[FetchedChunk]:
        chunks = self.sink.chunks
        return [FetchedChunk(o, chunks[o]) for o in manifest.chunk_offsets if o < len(chunks)]

    def prefetch(self, wanted: object) -> None:
        pass  # the fake holds every chunk already

    def refuse(self, manifest: events.WeightsManifestV1, reason: events.RejectReason,
               detail: str) -> None:
        self.refused.append((manifest.version, reason, detail))

    def close(self) -> None:
        pass


def publish_now(sink: InMemoryWeightsSink, snap: Snapshot, version: int) -> None:
    pub = weights_sync.WeightsPublisher(sink, EXP, WeightSyncSettings(max_bytes_per_s=0))
    pub.start(first_version=version)
    pub.publish(snap)
    assert pub.wait_published(version, 10.0)
    pub.close()


def test_subscriber_swaps_in_verified_versions_and_keeps_the_last_good_one() -> None:
    sink = InMemoryWeightsSink()
    sub = WeightsSubscriber(lambda: MemorySource(sink), SPEC)
    fallback = (lambda obs: np.zeros(2, np.float32), 0)
    lease = Lease(LEASED_EXPERIMENT, "lease-1")  # its reacher2d weights stream is EXP
    current = weights.learned_or(lambda: fallback, sub, lambda: lease, "reacher2d")
    sub.start()
    try:
        assert current() == fallback  # nothing learned yet: version 0
        snap = snapshot(1)
        publish_now(sink, snap, 1)
        assert sub.wait_applied(EXP, 1, 10.0)
        act, version = current()
        assert version == 1
        expected = policies.build("mlp_gaussian", SPEC, OPTIONS)
        expected.load_weights(snap.tensors)
        applied = sub.current(EXP)
        assert applied is not None
        # agents act with numpy (learners.policies.load_for_inference): the
        # learner's torch actions to float32 rounding, not bit for bit.
        np.testing.assert_allclose(applied.policy.act(OBS, deterministic=True),
                                   expected.act(OBS, deterministic=True), rtol=0, atol=1e-6)
        assert act(OBS[0]).shape == (2,)

        # A v2 manifest that points at v1's chunks is refused; v1 stays.
        good = sink.manifests[-1]
        sink.manifests.append(good.model_copy(update={"version": 2}))
        assert sub.wait_rejected(EXP, 2, 10.0)
        assert current()[1] == 1 and sub.rejected["chunk_mismatch"] == 1
        assert "v2 refused" in sub.last_rejection
    finally:
        sub.close()


def test_a_late_subscriber_applies_only_the_newest_version() -> None:
    sink = InMemoryWeightsSink()
    for v in (1, 2, 3):
        publish_now(sink, snapshot(v), v)
    sub = WeightsSubscriber(lambda: MemorySource(sink), SPEC)
    sub.want(EXP)
    sub.start()
    try:
        assert sub.wait_applied(EXP, 3, 10.0)
    finally:
        sub.close()
    assert sub.applied_versions == [(EXP, 3)]


def test_a_robot_without_a_lease_runs_its_fallback() -> None:
    sink = InMemoryWeightsSink()
    sub = WeightsSubscriber(lambda: MemorySource(sink), SPEC)
    fallback = (lambda obs: np.zeros(2, np.float32), 0)
    assert weights.learned_or(lambda: fallback, sub, lambda: None, "reacher2d")() == fallback
    assert weights.learned_or(lambda: fallback, None, lambda: Lease(LEASED_EXPERIMENT, "l"),
                              "reacher2d")() == fallback


# -- finite or nothing (issue 10, failing input 4) -------------------------------------------


def nan_snapshot(seed: int, step: int = 0) -> Snapshot:
    """A version as a diverged learner without guards would publish it: NaN in a layer."""
    snap = snapshot(seed, step)
    name = sorted(snap.tensors)[0]
    poisoned = dict(snap.tensors)
    poisoned[name] = np.full_like(poisoned[name], np.nan)
    return Snapshot.take(poisoned, kind="mlp_gaussian", options=OPTIONS, spec=SPEC,
                         learner_step=step)


def test_weights_with_a_nan_tensor_are_refused_before_any_policy_is_built() -> None:
    manifest, fetched, _ = published(nan_snapshot(1))
    with pytest.raises(WeightsRejected) as err:
        weights.build_policy(manifest, weights.assemble(manifest, fetched), SPEC)
    assert err.value.reason == "non_finite"
    assert "non-finite" in err.value.detail


def test_a_nan_version_is_refused_and_reported_and_the_robot_keeps_acting_finitely() -> None:
    sink = InMemoryWeightsSink()
    sub = WeightsSubscriber(lambda: MemorySource(sink), SPEC)
    lease = Lease(LEASED_EXPERIMENT, "lease-1")
    current = weights.learned_or(lambda: (lambda obs: np.zeros(2, np.float32), 0), sub,
                                 lambda: lease, "reacher2d")
    sub.start()
    try:
        current()  # the robot asks for its experiment's weights
        publish_now(sink, snapshot(1), 1)
        assert sub.wait_applied(EXP, 1, 10.0)
        publish_now(sink, nan_snapshot(2), 2)
        assert sub.wait_rejected(EXP, 2, 10.0)
        act, version = current()
        assert version == 1
        assert sub.rejected["non_finite"] == 1
        assert "v2 refused" in sub.last_rejection and "non-finite" in sub.last_rejection
        assert sub.applied_versions == [(EXP, 1)]
        assert np.isfinite(act(OBS[0])).all()
    finally:
        sub.close()


# -- one pass over each byte; the policy on views into the blob (issue 17) -------------------


def test_without_the_blob_pass_chunk_damage_is_still_refused_and_one_chunk_is_compared() -> None:
    manifest, fetched, blob = published(snapshot(1))
    assert weights.assemble(manifest, fetched, verify_blob=False) == blob
    bad = bytearray(fetched[2].chunk.data)
    bad[0] ^= 1
    damaged = [*fetched[:2], FetchedChunk(fetched[2].offset,
                                          forged(fetched[2].chunk, data=bytes(bad))),
               *fetched[3:]]
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, damaged, verify_blob=False)
    assert err.value.reason == "chunk_hash"
    # A digest the fetcher computed is trusted as the one pass: a wrong one is refused.
    lying = [FetchedChunk(f.offset, f.chunk, "0" * 64) if i == 1 else f
             for i, f in enumerate(fetched)]
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(manifest, lying, verify_blob=False)
    assert err.value.reason == "chunk_hash"
    # One chunk: the blob's digest must be the chunk's (no second pass needed to know).
    single, [only], _ = published(snapshot(1), chunk_bytes=1 << 20)
    with pytest.raises(WeightsRejected) as err:
        weights.assemble(single.model_copy(update={"sha256": "0" * 64}), [only],
                         verify_blob=False)
    assert err.value.reason == "blob_hash"


def test_tensors_are_read_only_views_equal_to_the_librarys_copies() -> None:
    blob = bytearray(weights_sync.serialise(snapshot(2)))
    views = weights.tensors_of(blob)
    copies = policies.from_safetensors(bytes(blob))
    assert views.keys() == copies.keys()
    for name, arr in views.items():
        np.testing.assert_array_equal(arr, copies[name])
        assert arr.dtype == copies[name].dtype and not arr.flags.writeable
        assert np.shares_memory(arr, np.frombuffer(blob, np.uint8))


def test_a_header_whose_tensors_do_not_fit_their_bytes_is_refused() -> None:
    blob = weights_sync.serialise(snapshot(2))
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with pytest.raises(ValueError, match="does not fit"):
        weights.tensors_of(struct.pack("<Q", len(raw)) + raw + blob[8 + n :])
    with pytest.raises(ValueError, match="after the last tensor"):
        weights.tensors_of(blob + b"\0" * 8)
