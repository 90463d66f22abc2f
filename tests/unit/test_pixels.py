"""Pixels in the learner (issue 12): algorithms and policy kinds chosen by the spec through
registries, the cnn_gaussian policy, the image replay buffer under its memory budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from deltalake import CommitProperties, Transaction, write_deltalake

from infra import cmd_fleet
from learners import _history, core, policies, registry, sac
from learners.loop import Learner, Steps
from learners.replay import NumpyReplayBuffer, ReplayConfig
from learners.weights_sync import InMemoryWeightsSink, WeightsPublisher, serialise
from pipeline import tables as sink_tables
from schemas import samples
from schemas.experiment import ExperimentSpec
from schemas.transitions import RewardedTransitionBatch
from topics import tables

torch.set_num_threads(1)

CAMS = ("overhead", "side")
ROBOT = samples.robot_spec(obs_dim=6, act_dim=2, robot_type="reacher2d", cameras=CAMS,
                           image_hw=(32, 32))
POLICY_SPEC = policies.PolicySpec.from_robot_spec(ROBOT)


def experiment(**overrides: Any) -> ExperimentSpec:
    raw: dict[str, Any] = {
        "name": "px-1",
        "robots": [{"robot_type": "reacher2d", "count": 1}],
        "algorithm": {"utd_ratio": 1.0, "batch_size": 8, "warmup_steps": 0},
        "policy": {"kind": "cnn_gaussian", "hidden": [16, 16],
                   "options": {"channels": 4, "feature_dim": 8}},
        "observation": {"cameras": list(CAMS), "image_size": [32, 32],
                        "state_indices": [0, 1, 2, 3]},
        "buffer": {"memory_budget_mb": 4},
        "weight_sync": {"every_updates": 2, "every_s": 3600},
        "stop": {"target_success": 1.0, "success_window": 1000},
    }
    raw.update(overrides)
    return ExperimentSpec.model_validate(raw)


def rewarded(batch: int, steps: int = 10, episode_len: int = 25) -> RewardedTransitionBatch:
    raw = samples.batch(ROBOT, steps, rng=batch, robot_id="r1", experiment_id="px-1",
                        first_step=batch * steps, episode_len=episode_len)
    return RewardedTransitionBatch.from_raw(
        raw, reward_fn="reach_dense@1", reward=-np.abs(raw.observation[:, 0]),
        success=np.zeros(steps, bool), terminated=np.zeros(steps, bool))


# ---------------------------------------------------------------------------- registries


def test_an_unknown_algorithm_or_policy_kind_is_refused_at_submit_naming_the_field() -> None:
    spec = experiment(algorithm={"name": "ppo"}, policy={"kind": "transformer_xl"})
    problems = cmd_fleet.task_problems(spec)
    assert any(p.startswith("algorithm.name: unknown algorithm 'ppo'") and "sac" in p
               for p in problems), problems
    assert any(p.startswith("policy.kind: unknown policy kind 'transformer_xl'")
               and "cnn_gaussian" in p for p in problems), problems


def test_a_state_policy_with_cameras_and_a_bad_hyperparameter_are_refused() -> None:
    spec = experiment(policy={"kind": "mlp_gaussian"},
                      algorithm={"hyperparameters": {"learning_rate": 1}})
    problems = registry.problems(spec)
    assert any(p.startswith("algorithm.hyperparameters: learning_rate") for p in problems)
    assert any("mlp_gaussian sees no cameras" in p for p in problems)
    with pytest.raises(ValueError, match="algorithm.hyperparameters"):
        Learner(spec, lambda _t: POLICY_SPEC, _publishers())


def test_a_registered_algorithm_is_what_the_learner_runs() -> None:
    built: list[registry.AlgorithmContext] = []

    class Counting(sac.SAC):
        pass

    def factory(ctx: registry.AlgorithmContext) -> core.Algorithm:
        built.append(ctx)
        return Counting(ctx.policy_spec, sac.config_of(ctx.experiment), ctx.policy_kind,
                        dict(ctx.policy_options))

    registry.register_algorithm("counting_sac", factory)
    assert "counting_sac" in registry.algorithm_names()
    learner = Learner(experiment(algorithm={"name": "counting_sac", "batch_size": 4,
                                            "warmup_steps": 0}),
                      lambda _t: POLICY_SPEC, _publishers())
    learner.add(Steps.of_batch(rewarded(0)), "live")
    assert learner.train_round() == 1
    assert isinstance(learner.types["reacher2d"].algorithm, Counting)
    assert built[0].policy_kind == "cnn_gaussian"
    assert built[0].policy_options["cameras"] == list(CAMS)


def _publishers() -> Any:
    def open_(stream: str) -> tuple[WeightsPublisher, int]:
        publisher = WeightsPublisher(InMemoryWeightsSink(), stream)
        publisher.start()
        return publisher, 0
    return open_


# ---------------------------------------------------------------------------- the learner


def test_a_pixel_experiment_trains_and_publishes_weights_robots_run_on_frames() -> None:
    spec = experiment()
    learner = Learner(spec, lambda _t: POLICY_SPEC, _publishers())
    batches = [rewarded(b) for b in range(4)]
    for b in batches:
        learner.add(Steps.of_batch(b), "live")
    type_learner = learner.types["reacher2d"]
    assert type_learner.online.config.image_shapes == {c: (32, 32, 3) for c in CAMS}
    for _ in range(4):
        assert learner.train_round() == 1
    snapshot = type_learner.snapshot({})
    assert any(k.startswith("encoder.conv") for k in snapshot.tensors)
    blob = serialise(snapshot)
    robot = policies.load(POLICY_SPEC, blob)  # what an agent does with a verified blob
    assert isinstance(robot, policies.CnnGaussianPolicy) and robot.cameras == CAMS
    obs = batches[0].observation[:3]
    frames = {c: batches[0].images[c][:3] for c in CAMS}
    action = robot.act(obs, deterministic=True, images=frames)
    assert action.shape == (3, 2) and np.all(np.abs(action) <= 1)
    with pytest.raises(ValueError, match="needs camera 'side'"):
        robot.act(obs, images={"overhead": frames["overhead"]})


def test_frames_reach_the_buffer_and_come_back_byte_exact() -> None:
    learner = Learner(experiment(), lambda _t: POLICY_SPEC, _publishers())
    batch = rewarded(0, steps=30, episode_len=30)  # the last step is truncated: a final frame
    learner.add(Steps.of_batch(batch), "live")
    buffer = learner.types["reacher2d"].online
    sample = buffer.sample(64)
    frames = {c: batch.images[c].reshape(30, -1) for c in CAMS}
    finals = {c: batch.final_images[c].reshape(len(batch.final_images[c]), -1) for c in CAMS}
    for cam in CAMS:
        got = sample.images[cam].numpy().reshape(64, -1)
        nxt = sample.next_images[cam].numpy().reshape(64, -1)
        for row, next_row in zip(got, nxt, strict=True):
            (i,) = np.flatnonzero((frames[cam] == row).all(axis=1))
            expected_next = frames[cam][i + 1] if i + 1 < 30 else finals[cam][0]
            assert np.array_equal(next_row, expected_next)


# ---------------------------------------------------------------------------- the buffer


@pytest.mark.parametrize("codec", [None, "lz4"])
def test_an_image_buffer_stays_within_its_budget_under_a_longer_stream(
        codec: str | None) -> None:
    config = ReplayConfig((6,), (2,), memory_budget_bytes=300 * 6200,
                          image_shapes={c: (32, 32, 3) for c in CAMS}, image_codec=codec)
    buffer = NumpyReplayBuffer(config)
    assert buffer.nbytes <= config.memory_budget_bytes
    for b in range(60):  # 600 steps of noise frames (incompressible): twice what fits
        steps = Steps.of_batch(rewarded(b, steps=10, episode_len=25)).steps
        buffer.add(steps)
        assert buffer.nbytes <= config.memory_budget_bytes
        assert len(buffer) <= min(buffer.capacity, 300)
    per_slot = sum(int(np.prod(s)) for s in config.image_shapes.values())
    if codec is None:
        # Each frame is stored once: one slot per step (+ one per truncated step's final).
        image_bytes = sum(a.nbytes for k, a in buffer._arrays.items() if k.startswith("image/"))
        assert buffer.capacity < 300 and image_bytes == buffer.capacity * per_slot
    else:  # noise stays raw in the arena, which evicts the oldest rows before the ring does
        assert not any(k.startswith("image/") for k in buffer._arrays)
        assert buffer.frame_bytes <= config.arena_bytes()
        assert buffer._live_from > buffer._written - buffer.capacity
    batch = buffer.sample(128)
    assert batch.images["overhead"].dtype == torch.uint8


def test_the_experiment_spec_chooses_how_the_learner_holds_frames() -> None:
    """``buffer.image_codec``: LZ4 by default (a byte arena), ``null`` for raw arrays."""
    for codec in ("lz4", "zstd", None):
        learner = Learner(experiment(buffer={"memory_budget_mb": 4, "image_codec": codec}),
                          lambda _t: POLICY_SPEC, _publishers())
        learner.add(Steps.of_batch(rewarded(0, steps=30, episode_len=30)), "live")
        buffer = learner.types["reacher2d"].online
        assert buffer.config.image_codec == codec
        assert ("image/overhead" in buffer._arrays) == (codec is None)
        assert len(buffer) == 30 and buffer.sample(8).images["side"].shape == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="image_codec"):
        experiment(buffer={"image_codec": "gzip"})


def _pictures(ids: np.ndarray, size: int = 32) -> np.ndarray:
    """Frames that compress as rendered ones do (flat background, a moving square), the
    step's id written into the first pixels, every 5th frame noise (stays raw)."""
    frames = np.full((len(ids), size, size, 3), 200, np.uint8)
    for k, i in enumerate(ids.tolist()):
        frames[k, 8:16, i % 20:i % 20 + 8] = (200, 90, 40)
        if i % 5 == 4:
            frames[k] = np.random.default_rng(i).integers(0, 256, (size, size, 3), np.uint8)
        frames[k, 0, 0] = (i % 256, i // 256 % 256, 7)
    return frames


def _picture_steps(first: int, n: int, episode_len: int) -> core.StepBatch:
    ids = np.arange(first, first + n)
    step = ids % episode_len
    truncated = step == episode_len - 1
    return core.StepBatch(
        robot_id=np.full(n, "r1"), episode_id=(ids // episode_len).astype(str), step=step,
        observation=np.repeat(ids[:, None], 6, 1).astype(np.float32),
        action=np.zeros((n, 2), np.float32), reward=np.zeros(n, np.float32),
        terminated=np.zeros(n, bool), policy_version=np.zeros(n, np.int64),
        truncated=truncated, next_observation=np.repeat(ids[:, None] + 0.5, 6, 1)
        .astype(np.float32),
        images={c: _pictures(ids + 10**5 * j) for j, c in enumerate(CAMS)},
        next_images={c: _pictures(ids + 10**5 * j + 50_000) for j, c in enumerate(CAMS)})


def _check_sample(buffer: NumpyReplayBuffer, n: int, episode_len: int) -> None:
    batch = buffer.sample(n)
    ids = batch.observation[:, 0].numpy().astype(np.int64)
    final = (ids % episode_len) == episode_len - 1
    for j, cam in enumerate(CAMS):
        assert np.array_equal(batch.images[cam].numpy(), _pictures(ids + 10**5 * j))
        nxt = np.where(final, ids + 10**5 * j + 50_000, ids + 1 + 10**5 * j)
        assert np.array_equal(batch.next_images[cam].numpy(), _pictures(nxt))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_frames_come_back_byte_exact_and_hold_several_times_the_raw_steps(
        codec: str) -> None:
    """LZ4 in host memory: every sampled frame and next frame is the bytes that went in
    (compressed and raw-kept frames alike), and a budget that holds N raw steps holds
    several times N."""
    budget = 400 * 6200
    raw = NumpyReplayBuffer(ReplayConfig((6,), (2,), memory_budget_bytes=budget,
                                         image_shapes={c: (32, 32, 3) for c in CAMS},
                                         image_codec=None))
    packed = NumpyReplayBuffer(ReplayConfig((6,), (2,), memory_budget_bytes=budget, seed=1,
                                            image_shapes={c: (32, 32, 3) for c in CAMS},
                                            image_codec=codec))
    for first in range(0, 3000, 60):  # episodes of 40 cut by batches of 60: links across
        steps = _picture_steps(first, 60, episode_len=40)
        raw.add(steps)
        packed.add(steps)
        _check_sample(packed, 64, episode_len=40)
    assert packed.nbytes <= budget and raw.nbytes <= budget
    assert len(raw) < 400 and len(packed) > 3 * len(raw)
    assert packed.frame_bytes <= packed.config.arena_bytes()


def test_the_frame_arena_evicts_oldest_rows_and_breaks_their_links() -> None:
    """A stream of frames that shrink less than the ring was sized for: the arena wraps
    before the ring, the rows it overwrites are never sampled, and an episode whose last
    held step was evicted does not link its next batch to it."""
    config = ReplayConfig((6,), (2,), memory_budget_bytes=200 * 6200, image_ratio=64.0,
                          image_shapes={c: (32, 32, 3) for c in CAMS})
    buffer = NumpyReplayBuffer(config)
    for first in range(0, 4000, 25):
        buffer.add(_picture_steps(first, 25, episode_len=1000))  # long episodes
        _check_sample(buffer, 32, episode_len=1000)
        assert buffer.nbytes <= config.memory_budget_bytes
        assert len(buffer) <= buffer._written - buffer._live_from
    assert buffer._written - buffer._live_from < buffer.capacity  # the arena bound it


def test_frames_held_as_torch_tensors_sample_the_same_bytes_as_numpy_frames() -> None:
    """``image_device`` (a GPU learner's frames stay on the GPU) changes where frames live,
    not what a sample holds: same seed, same stream, byte-identical batches."""
    def filled(device: str | None) -> NumpyReplayBuffer:
        buffer = NumpyReplayBuffer(ReplayConfig(
            (6,), (2,), memory_budget_bytes=200 * 6200, seed=3, image_device=device,
            image_shapes={c: (32, 32, 3) for c in CAMS}, image_codec=None))
        for b in range(30):  # 300 steps through a ring of < 200: overwrites, final frames
            buffer.add(Steps.of_batch(rewarded(b, steps=10, episode_len=25)).steps)
        return buffer

    held, plain = filled("cpu"), filled(None)
    assert held.nbytes == plain.nbytes and not any(k.startswith("image/") for k in held._arrays)
    a, b = held.sample(64), plain.sample(64)
    for cam in CAMS:
        assert torch.equal(a.images[cam], b.images[cam])
        assert torch.equal(a.next_images[cam], b.next_images[cam])
    assert torch.equal(a.observation, b.observation)


# ---------------------------------------------------------------------------- learning signal


def test_cnn_gaussian_overfits_a_tiny_fixed_image_dataset() -> None:
    """16 frames with a bright square left or right; reward = action[0] × side (gamma 0):
    the critic must read the frame, and the actor (fed detached features) must follow it."""
    gen = np.random.default_rng(0)
    n = 16
    side = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    frames = gen.integers(0, 40, (n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        col = 20 if side[i] > 0 else 4
        frames[i, 12:20, col:col + 8] = 255
    obs = np.zeros((n, 6), np.float32)  # the state says nothing
    spec = policies.PolicySpec(6, 2, (-1.0, -1.0), (1.0, 1.0))
    options: dict[str, Any] = {"cameras": ["overhead"], "image_size": [32, 32], "channels": 8,
               "feature_dim": 16, "state_indices": [], "hidden_sizes": [64, 64]}
    algo = sac.SAC(spec, sac.SACConfig(hidden_sizes=(64, 64), gamma=0.0, init_alpha=0.01,
                                       autotune=False, critic_lr=1e-3, actor_lr=1e-3,
                                       image_pad=2, seed=1),
                   "cnn_gaussian", options)
    gen_t = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, n, (32,), generator=gen_t)
        action = torch.rand((32, 2), generator=gen_t) * 2 - 1
        reward = action[:, 0] * torch.from_numpy(side)[idx]
        img = torch.from_numpy(frames)[idx]
        algo.update(core.Batch(
            observation=torch.from_numpy(obs)[idx], action=action, reward=reward,
            next_observation=torch.from_numpy(obs)[idx], terminated=torch.zeros(32),
            policy_version=torch.zeros(32, dtype=torch.int64),
            images={"overhead": img}, next_images={"overhead": img}))
    robot = policies.build("cnn_gaussian", spec, options)
    robot.load_weights(algo.policy_weights())
    acted = robot.act(obs, deterministic=True, images={"overhead": frames})
    assert np.all(np.sign(acted[:, 0]) == side), (acted[:, 0], side)


# ---------------------------------------------------------------------------- Delta and back


def test_frames_go_through_delta_and_back_into_the_buffer_byte_exact_chunk_by_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows the sink writes (``pipeline.tables.batch_rows``) hold the frames; the warm
    start reads them a chunk at a time (a tiny frame budget forces several chunks), and
    the buffer holds every byte as the robot rendered it."""
    batches = [rewarded(b, steps=10, episode_len=30) for b in range(6)]  # 2 truncations
    for i, batch in enumerate(batches):  # one commit per batch: several Parquet files
        rows = sink_tables.batch_rows(batch, sink_tables.Source("transitions", 0, i))
        write_deltalake(tables.table_path(tmp_path, tables.TRANSITIONS), rows, mode="append",
                        schema_mode="merge", partition_by=[tables.PARTITION_COLUMN],
                        commit_properties=CommitProperties(app_transactions=[
                            Transaction(tables.app_id("sink", "transitions", 0), i)]))
    monkeypatch.setattr(_history, "FRAME_CHUNK_BYTES", 7 * 2 * 32 * 32 * 3)  # 7 rows a chunk
    history = _history.read(tmp_path, experiments=["px-1"], reward_fn="reach_dense@1",
                            topic="transitions", partitions=[0], sink_name="sink",
                            cameras=CAMS, image_size=(32, 32))
    assert history.table is not None and "images" not in history.table.column_names
    chunks = list(history.steps(chunk_rows=65_536))
    assert [len(c) for c in chunks] == [7] * 8 + [4]
    learner = Learner(experiment(), lambda _t: POLICY_SPEC, _publishers())
    for steps in chunks:
        learner.add(steps, "history")
    buffer = learner.types["reacher2d"].online
    assert len(buffer) == 60  # every step sampleable: successors and final frames linked
    a = buffer._arrays
    for cam in CAMS:
        sent = np.concatenate([b.images[cam] for b in batches])
        finals = np.concatenate([b.final_images[cam] for b in batches])
        stored = buffer._take_frames(cam, np.arange(buffer._written)).numpy()
        taken = a["sampleable"][: buffer._written]
        assert taken.sum() == 60
        # One slot per step plus one per final frame: every frame once, byte for byte.
        assert _same_rows(stored[taken], sent)
        assert _same_rows(stored[~taken], finals)


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """The same multiset of frames (rows compared as bytes)."""
    return sorted(x.tobytes() for x in a) == sorted(x.tobytes() for x in b)


# ---------------------------------------------------------------------------- on the robot


def test_an_agent_runs_a_pixel_policy_on_the_step_frames() -> None:
    from agents import weights as agent_weights
    from agents.policies import FramesPolicy, propose

    options: dict[str, Any] = {"cameras": ["overhead"], "image_size": [32, 32],
                               "hidden_sizes": [16, 16], "seed": 0}
    policy = policies.build("cnn_gaussian", POLICY_SPEC, options)
    act = agent_weights._act_fn(policy, deterministic=True)
    assert isinstance(act, FramesPolicy)
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    obs = np.zeros(6, np.float32)
    action = propose(act, obs, {"overhead": frame, "side": frame})
    assert action.shape == (2,) and action.dtype == np.float32
    expected = policy.act(obs[None], deterministic=True, images={"overhead": frame[None]})[0]
    assert np.array_equal(action, expected)
    with pytest.raises(ValueError, match="needs camera 'overhead'"):
        propose(act, obs, {})
    state = agent_weights._act_fn(policies.build("mlp_gaussian", POLICY_SPEC), True)
    assert not isinstance(state, FramesPolicy)
    assert propose(state, obs, {"overhead": frame}).shape == (2,)


def test_frames_a_robot_renders_reach_the_buffer_byte_exact_through_the_codec_and_delta(
        tmp_path: Path) -> None:
    """agent (real MuJoCo camera) → transitions.raw codec → reward job → transitions codec
    → sink rows → Delta → warm start → buffer: every frame the same bytes."""
    from agents import registry as robots
    from agents.outbox import MemoryOutbox
    from agents.policies import RandomPolicy
    from agents.worker import Lease, RobotWorker
    from pipeline import rewards
    from schemas.transitions import TransitionBatch
    from topics import catalog, serde

    robot_spec = policies.PolicySpec(12, 2, (-1.0, -1.0), (1.0, 1.0))
    learner = Learner(experiment(observation={"cameras": ["overhead"], "image_size": [32, 32]}),
                      lambda _t: robot_spec, _publishers())
    # Open the learner (its optimisers) before MuJoCo's EGL renderer exists: torch.optim's
    # first use imports triton, which crashes in a process that already renders (agents
    # and learners are separate processes; only this test has both).
    learner.open_known()
    # 5 Hz: the start-up probe's time budget (80 % of a period) holds on a loaded machine;
    # the bytes are what this test is about.
    robot = robots.make_robot("reacher2d", seed=3, cameras=("overhead",), camera_size=(32, 32),
                              control_hz=5.0)
    assert policies.PolicySpec.from_robot_spec(robot.spec) == robot_spec
    policy = RandomPolicy(robot.spec.action, seed=3)
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (policy, 0), flush_steps=16, flush_s=60.0)
    lease = Lease("px-1", "lease-1")
    n = robot.spec.max_episode_steps
    for _ in range(n + 10):  # one whole episode (its last step cut off: a final frame)
        worker.tick(lease, [])
    worker.tick(None, [])
    assert isinstance(worker.sink, MemoryOutbox)
    raw = [p for _, p in worker.sink.sent if isinstance(p, TransitionBatch)]
    fn = rewards.lookup("reach_dense@1")
    for i, batch in enumerate(raw):
        wire = serde.encode(catalog.TRANSITIONS_RAW, batch)
        got = serde.decode(catalog.TRANSITIONS_RAW, wire.value, wire.headers)
        assert isinstance(got, TransitionBatch)
        scored = serde.encode(catalog.TRANSITIONS, rewards.apply(fn, got))
        back = serde.decode(catalog.TRANSITIONS, scored.value, scored.headers)
        assert isinstance(back, RewardedTransitionBatch)
        rows = sink_tables.batch_rows(back, sink_tables.Source("transitions", 0, i))
        write_deltalake(tables.table_path(tmp_path, tables.TRANSITIONS), rows, mode="append",
                        schema_mode="merge", partition_by=[tables.PARTITION_COLUMN])
    history = _history.read(tmp_path, experiments=["px-1"], reward_fn="reach_dense@1",
                            topic="transitions", partitions=[0], sink_name="sink",
                            cameras=("overhead",), image_size=(32, 32))
    for steps in history.steps():
        learner.add(steps, "history")
    buffer = learner.types["reacher2d"].online
    rendered = np.concatenate([b.images["overhead"] for b in raw])
    finals = np.concatenate([b.final_images["overhead"] for b in raw])
    assert len(rendered) == n + 10 and len(finals) == 2  # time limit + lease released
    stored = buffer._take_frames("overhead", np.arange(buffer._written)).numpy()
    taken = buffer._arrays["sampleable"][: buffer._written]
    assert _same_rows(stored[taken], rendered)  # every step once, its successor linked
    assert _same_rows(stored[~taken], finals)  # plus one slot per cut-off episode's end
    assert rendered.std() > 0  # real pictures, not zeros
