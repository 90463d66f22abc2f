"""The in-memory replay buffer and the RLPD mixing sampler."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import core, replay

torch.set_num_threads(1)


def _config(
    budget: int = 1 << 20, images: dict[str, tuple[int, int, int]] | None = None
) -> replay.ReplayConfig:
    return replay.ReplayConfig(
        observation_shape=(3,),
        action_shape=(2,),
        memory_budget_bytes=budget,
        image_shapes=images or {},
        seed=0,
    )


def _episode(
    robot: int,
    episode: int,
    steps: range,
    *,
    terminated_at: int | None = None,
    truncated_at: int | None = None,
    version: int = 0,
) -> dict[str, np.ndarray]:
    """Rows whose observation encodes (robot, episode, step), so links can be checked."""
    step = np.asarray(list(steps), dtype=np.int64)
    n = len(step)
    obs = np.stack([np.full(n, robot), np.full(n, episode), step], axis=1).astype(np.float32)
    final = obs.copy()
    final[:, 2] += 1  # what step t + 1 would look like
    return {
        "robot_id": np.full(n, f"r{robot}"),
        "episode_id": np.full(n, episode),
        "step": step,
        "observation": obs,
        "action": np.zeros((n, 2), np.float32),
        "reward": step.astype(np.float32),
        "terminated": step == terminated_at,
        "truncated": step == truncated_at,
        "policy_version": np.full(n, version, np.int64),
        "next_observation": final,
    }


def _batch(*parts: dict[str, np.ndarray], shuffle_seed: int | None = None) -> core.StepBatch:
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(cols["step"]))
        cols = {k: v[perm] for k, v in cols.items()}
    return core.StepBatch.from_columns(cols)


def _assert_links(batch: core.Batch) -> None:
    """Every sampled s' is s one step later in the same robot's episode."""
    obs, nxt = batch.observation.numpy(), batch.next_observation.numpy()
    live = batch.terminated.numpy() == 0
    np.testing.assert_array_equal(nxt[live, :2], obs[live, :2])
    np.testing.assert_array_equal(nxt[live, 2], obs[live, 2] + 1)


class TestEpisodeStitching:
    def test_steps_of_one_batch_link_to_their_successors(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        made = buf.add(_batch(_episode(0, 0, range(10), terminated_at=9)))
        assert made == len(buf) == 10
        _assert_links(buf.sample(256))

    def test_an_episode_split_across_batches_links_across_them(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        assert buf.add(_batch(_episode(0, 0, range(5)))) == 4  # step 4 waits for step 5
        assert buf.add(_batch(_episode(0, 0, range(5, 8)))) == 3  # links 4 -> 5
        assert len(buf) == 7
        _assert_links(buf.sample(512))

    def test_interleaved_rows_of_several_robots_are_stitched_per_episode(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        parts = [_episode(r, e, range(6), terminated_at=5) for r in range(3) for e in range(2)]
        buf.add(_batch(*parts, shuffle_seed=1))
        assert len(buf) == 36
        _assert_links(buf.sample(1024))

    def test_a_terminated_step_is_sampled_with_terminated_set(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        buf.add(_batch(_episode(0, 0, range(3), terminated_at=2)))
        batch = buf.sample(512)
        last = batch.observation[:, 2] == 2
        assert bool(last.any())
        assert torch.all(batch.terminated[last] == 1)
        assert torch.all(batch.terminated[~last] == 0)

    def test_a_truncated_step_bootstraps_from_its_next_observation(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        buf.add(_batch(_episode(0, 0, range(4), truncated_at=3)))
        assert len(buf) == 4
        batch = buf.sample(512)
        assert torch.all(batch.terminated == 0)
        _assert_links(batch)  # the final observation is "step 4"

    def test_a_truncated_step_without_next_observation_is_dropped_and_counted(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        cols = _episode(0, 0, range(4), truncated_at=3)
        del cols["next_observation"]
        assert buf.add(_batch(cols)) == 3
        assert buf.dropped == 1

    def test_a_gap_in_steps_leaves_the_step_before_it_unsampleable(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        buf.add(_batch(_episode(0, 0, range(3))))
        buf.add(_batch(_episode(0, 0, range(4, 6), terminated_at=5)))  # step 3 never came
        assert len(buf) == 4  # 0->1, 1->2, 4->5, 5 terminal; 2 lacks its successor
        _assert_links(buf.sample(256))

    def test_sampling_an_empty_buffer_raises_lookup_error(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        buf.add(_batch(_episode(0, 0, range(1))))  # one step, successor pending
        with pytest.raises(LookupError):
            buf.sample(8)

    @settings(max_examples=40, deadline=None)
    @given(
        lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
        cuts=st.lists(st.integers(1, 10), min_size=1, max_size=8),
        seed=st.integers(0, 1000),
    )
    def test_any_chunking_of_episodes_into_batches_yields_every_transition_once(
        self, lengths: list[int], cuts: list[int], seed: int
    ) -> None:
        """Episodes (all ending, alternately terminated/truncated) are cut into batches at
        arbitrary points and shuffled within each batch."""
        episodes = [
            _episode(
                i % 2,
                i,
                range(n),
                terminated_at=n - 1 if i % 2 else None,
                truncated_at=None if i % 2 else n - 1,
            )
            for i, n in enumerate(lengths)
        ]
        rows = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
        # Deliver in step order per robot, like agents do, but chunked arbitrarily.
        order = np.lexsort((rows["step"], rows["episode_id"]))
        rows = {k: v[order] for k, v in rows.items()}
        buf = replay.NumpyReplayBuffer(_config())
        start, total, made = 0, len(rows["step"]), 0
        for i in range(total):
            size = cuts[i % len(cuts)]
            if start >= total:
                break
            chunk = {k: v[start : start + size] for k, v in rows.items()}
            made += buf.add(_batch(chunk, shuffle_seed=seed + i))
            start += size
        assert made == len(buf) == sum(lengths)
        _assert_links(buf.sample(256))


class TestMemoryAndWrapAround:
    def test_arrays_stay_within_the_memory_budget(self) -> None:
        for budget in (10_000, 1_000_000):
            config = _config(budget, images={"wrist": (16, 16, 3)})
            buf = replay.NumpyReplayBuffer(config)  # frames compressed in a byte arena
            assert buf.nbytes <= budget and buf.capacity == config.capacity()
            raw = replay.NumpyReplayBuffer(dataclasses.replace(config, image_codec=None))
            assert raw.nbytes <= budget
            assert raw.capacity == budget // raw.config.slot_bytes()
            assert raw._arrays["image/wrist"].dtype == np.uint8

    def test_a_budget_too_small_for_two_steps_is_refused(self) -> None:
        with pytest.raises(ValueError, match="memory_budget_bytes"):
            replay.NumpyReplayBuffer(_config(budget=_config().slot_bytes() + 1))

    def test_the_ring_keeps_the_newest_steps_when_it_wraps(self) -> None:
        config = _config(budget=_config().slot_bytes() * 50)
        buf = replay.NumpyReplayBuffer(config)
        assert buf.capacity == 50
        for start in range(0, 200, 7):
            buf.add(_batch(_episode(0, 0, range(start, min(start + 7, 200)))))
        assert len(buf) == 49  # 50 slots, the newest step awaits its successor
        batch = buf.sample(2048)
        assert float(batch.observation[:, 2].min()) == 150.0
        _assert_links(batch)

    def test_a_pending_step_overwritten_before_its_successor_arrives_is_not_linked(self) -> None:
        buf = replay.NumpyReplayBuffer(_config(budget=_config().slot_bytes() * 20))
        buf.add(_batch(_episode(0, 0, range(3))))  # step 2 pending
        buf.add(_batch(_episode(1, 0, range(20), terminated_at=19)))  # overwrites all
        assert buf.add(_batch(_episode(0, 0, range(3, 5), terminated_at=4))) == 2
        _assert_links(buf.sample(512))

    def test_images_are_stored_as_uint8_and_follow_their_steps(self) -> None:
        buf = replay.NumpyReplayBuffer(_config(images={"wrist": (4, 4, 3)}))
        cols = _episode(0, 0, range(6), truncated_at=5)
        img = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((6, 4, 4, 3), np.uint8)
        steps = core.StepBatch(
            **{k: v for k, v in cols.items()},
            images={"wrist": img},
            next_images={"wrist": img + 1},
        )
        buf.add(steps)
        batch = buf.sample(256)
        assert batch.images["wrist"].dtype == torch.uint8
        step = batch.observation[:, 2].to(torch.uint8)
        assert torch.equal(batch.images["wrist"][:, 0, 0, 0], step)
        assert torch.equal(batch.next_images["wrist"][:, 0, 0, 0], step + 1)


class TestVersionLag:
    def test_sampling_reports_the_policy_version_lag_of_the_rows_drawn(self) -> None:
        buf = replay.NumpyReplayBuffer(_config())
        buf.add(_batch(_episode(0, 0, range(11), terminated_at=10, version=7)))
        buf.add(_batch(_episode(0, 1, range(11), terminated_at=10, version=9)))
        batch = buf.sample(4096, current_version=10)
        lag = 10 - batch.policy_version.numpy()
        assert batch.stats["replay/version_lag_mean"] == pytest.approx(lag.mean())
        assert batch.stats["replay/version_lag_max"] == 3.0
        assert 1.9 < batch.stats["replay/version_lag_mean"] < 2.1  # half at lag 3, half at 1


class TestMixingSampler:
    @staticmethod
    def _sources() -> tuple[replay.NumpyReplayBuffer, replay.NumpyReplayBuffer]:
        online = replay.NumpyReplayBuffer(_config())
        prior = replay.NumpyReplayBuffer(replay.ReplayConfig((3,), (2,), 1 << 20, seed=1))
        on = _episode(0, 0, range(100), terminated_at=99)
        on["reward"][:] = 0.0
        pr = _episode(1, 0, range(100), terminated_at=99)
        pr["reward"][:] = 1.0  # marks prior rows
        online.add(_batch(on))
        prior.add(_batch(pr))
        return online, prior

    @pytest.mark.parametrize("fraction", [0.5, 0.25])
    def test_the_prior_fraction_holds_over_many_batches(self, fraction: float) -> None:
        online, prior = self._sources()
        sampler = replay.MixingSampler(online, prior, prior_fraction=fraction, seed=0)
        rewards = torch.cat([sampler.sample(256).reward for _ in range(200)])
        assert float(rewards.mean()) == pytest.approx(fraction, abs=1e-3)

    def test_minibatches_of_a_high_utd_batch_each_mix_online_and_prior(self) -> None:
        online, prior = self._sources()
        sampler = replay.MixingSampler(online, prior, seed=0)
        fractions = [float(mb.reward.mean()) for mb in sampler.sample(256 * 20).split(20)]
        assert min(fractions) > 0.35 and max(fractions) < 0.65
        assert np.mean(fractions) == pytest.approx(0.5)

    def test_stats_name_the_prior_fraction_and_keep_prior_stats_apart(self) -> None:
        online, prior = self._sources()
        stats = replay.MixingSampler(online, prior).sample(64, current_version=3).stats
        assert stats["replay/prior_fraction"] == 0.5
        assert {"replay/version_lag_mean", "replay/prior/version_lag_mean"} <= set(stats)


def test_the_buffer_keeps_each_steps_intervention_flag_beside_its_executed_action() -> None:
    buf = replay.NumpyReplayBuffer(_config())
    rows = _episode(0, 0, range(20), truncated_at=19)
    rows["intervention"] = rows["step"] % 3 == 1
    rows["action"][:, 0] = rows["step"]  # the executed action names its step
    buf.add(_batch(rows, shuffle_seed=1))
    batch = buf.sample(500)
    assert batch.intervention is not None
    steps = batch.observation[:, 2].long()
    assert torch.equal(batch.action[:, 0].long(), steps)
    assert torch.equal(batch.intervention, steps % 3 == 1)
    halves = batch.split(2)
    assert all(h.intervention is not None and len(h.intervention) == 250 for h in halves)
    mixed = replay.MixingSampler(buf, buf, 0.5).sample(64)
    assert mixed.intervention is not None and mixed.intervention.dtype == torch.bool


def test_steps_recorded_without_the_flag_read_as_the_policys() -> None:
    buf = replay.NumpyReplayBuffer(_config())
    buf.add(_batch(_episode(0, 0, range(10), terminated_at=9)))
    assert not buf.sample(100).intervention.any()  # type: ignore[union-attr]


def test_a_takeover_chunk_ends_where_the_takeover_does() -> None:
    # One episode of 10 steps; the operator held steps 2..4, the policy acted elsewhere.
    n = 10
    took = (np.arange(n) >= 2) & (np.arange(n) <= 4)
    buffer = replay.NumpyReplayBuffer(replay.ReplayConfig((3,), (2,), memory_budget_bytes=1 << 20))
    buffer.add(core.StepBatch(
        robot_id=np.full(n, "r1"), episode_id=np.zeros(n).astype(str), step=np.arange(n),
        observation=np.zeros((n, 3), np.float32),
        action=np.stack([np.arange(n), np.zeros(n)], 1).astype(np.float32),
        reward=np.zeros(n, np.float32), terminated=np.arange(n) == n - 1,
        policy_version=np.zeros(n, np.int64), intervention=took))
    batch = buffer.sample(100, horizon=4, interventions_only=True)
    assert batch.action_chunk is not None
    for row in batch.action_chunk[:, :, 0].numpy():
        t = int(row[0])
        assert 2 <= t <= 4
        # the operator's actions up to step 4, then the last of them repeated
        np.testing.assert_array_equal(row, [min(t + k, 4) for k in range(4)])
    # Drawn among all steps, chunks still run on through the policy's steps.
    mixed = buffer.sample(200, horizon=4).action_chunk
    assert mixed is not None
    assert any(list(r) == [3, 4, 5, 6] for r in mixed[:, :, 0].numpy().tolist())
