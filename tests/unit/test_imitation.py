"""Imitation learners: a flow policy fits a bimodal action distribution a Gaussian cannot;
HG-DAgger learns only from takeover steps; takeovers are routed to the demo half (HIL-SERL);
action chunks follow episodes; chunks execute on the robot; DSRL's policy loads on a robot,
its steering chooses the action its critic rates higher and its noise prior keeps the noise
near the flow's own; FQL's one-step policy moves to what its critic rates higher, held to
the flow by its distillation weight; the bench keeps the best-evaluated version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.chunking import ChunkExecutor
from learners import bc, dsrl, fql, registry
from learners.core import Batch, Policy, StepBatch
from learners.policies import (
    ChunkExecution,
    PolicySpec,
    build,
    to_safetensors,
    weights_metadata,
)
from learners.replay import NumpyReplayBuffer, ReplayConfig, TakeoverSampler
from tests.unit.test_learn_loop import (
    REACHER,
    Publishers,
    experiment,
    make,
    rewarded,
    train_until_capped,
)

SPEC = PolicySpec(3, 2, (-1.0, -1.0), (1.0, 1.0))


def _batch(obs: np.ndarray, action: np.ndarray, took: np.ndarray | None = None) -> Batch:
    n = len(obs)
    return Batch(observation=torch.as_tensor(obs, dtype=torch.float32),
                 action=torch.as_tensor(action, dtype=torch.float32),
                 reward=torch.zeros(n), next_observation=torch.as_tensor(obs, dtype=torch.float32),
                 terminated=torch.zeros(n), policy_version=torch.zeros(n, dtype=torch.int64),
                 intervention=None if took is None else torch.as_tensor(took))


def _bimodal(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    sign = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    action = np.stack([0.8 * sign, 0.3 + 0.02 * rng.normal(size=n)], 1).astype(np.float32)
    return obs, action


def test_a_flow_policy_fits_a_bimodal_action_distribution_a_gaussian_cannot() -> None:
    rng = np.random.default_rng(0)
    config = bc.BCConfig(hidden_sizes=(64, 64), lr=2e-3, seed=0)
    flow = bc.BC(SPEC, config, "flow_matching", {"horizon": 1, "steps": 10})
    gauss = bc.BC(SPEC, config, "mlp_gaussian", {})
    for _ in range(500):
        batch = _batch(*_bimodal(rng, 128))
        flow.update(batch)
        gauss.update(batch)
    obs = rng.normal(size=(1000, 3)).astype(np.float32)
    policies = {}
    for name, algo in (("flow", flow), ("gaussian", gauss)):
        kind = "flow_matching" if name == "flow" else "mlp_gaussian"
        options = {"horizon": 1, "steps": 10, "hidden_sizes": [64, 64]}
        policy = build(kind, SPEC, options if name == "flow" else {"hidden_sizes": [64, 64]})
        policy.load_weights(algo.policy_weights())
        policies[name] = policy.act(obs)[:, 0]
    flow_a, gauss_a = policies["flow"], policies["gaussian"]
    near_modes = lambda a: float((np.abs(np.abs(a) - 0.8) < 0.15).mean())  # noqa: E731
    between = lambda a: float((np.abs(a) < 0.4).mean())  # noqa: E731
    # Measured (seed 0): flow 0.70 near the modes, 0.10 between; Gaussian 0.36 / 0.31.
    assert near_modes(flow_a) > 0.6 and between(flow_a) < 0.15
    assert 0.3 < float((flow_a > 0).mean()) < 0.7  # both modes, not one
    # The Gaussian spreads its mass over the gap between the modes.
    assert between(gauss_a) > 0.25 and near_modes(gauss_a) < near_modes(flow_a) - 0.2


def _steps(n: int, took: np.ndarray, action: np.ndarray, episode_len: int = 10) -> StepBatch:
    episode = np.arange(n) // episode_len
    step = np.arange(n) % episode_len
    return StepBatch(
        robot_id=np.full(n, "r1"), episode_id=episode.astype(str), step=step,
        observation=np.random.default_rng(1).normal(size=(n, 3)).astype(np.float32),
        action=action.astype(np.float32), reward=np.zeros(n, np.float32),
        terminated=step == episode_len - 1, policy_version=np.zeros(n, np.int64),
        intervention=took)


def test_hg_dagger_learns_only_from_takeover_steps() -> None:
    n = 400
    took = (np.arange(n) % 10) >= 7  # the last 3 steps of each episode: the operator's
    action = np.where(took[:, None], [0.5, -0.5], [-0.9, 0.9])  # the policy's own: wrong
    buffer = NumpyReplayBuffer(ReplayConfig((3,), (2,), memory_budget_bytes=1 << 20))
    buffer.add(_steps(n, took, action))
    algo = registry.build_algorithm(registry.AlgorithmContext(
        _spec("hg_dagger"), "r", SPEC, "mlp_gaussian", {"hidden_sizes": [32, 32]}))
    assert isinstance(algo, bc.BC)
    sampler = registry.sampler_factory("hg_dagger")(buffer, None, _spec("hg_dagger"))  # type: ignore[misc]
    seen = 0
    for _ in range(200):
        batch = sampler.sample(64)
        assert batch.intervention is not None and bool(batch.intervention.all())
        seen += len(batch)
        algo.update(batch)
    policy = build("mlp_gaussian", SPEC, {"hidden_sizes": [32, 32]})
    policy.load_weights(algo.policy_weights())
    mode = policy.act(np.random.default_rng(2).normal(size=(50, 3)), deterministic=True)
    np.testing.assert_allclose(mode.mean(0), [0.5, -0.5], atol=0.1)
    assert seen == 200 * 64


def test_hg_dagger_waits_for_the_first_takeover() -> None:
    buffer = NumpyReplayBuffer(ReplayConfig((3,), (2,), memory_budget_bytes=1 << 20))
    buffer.add(_steps(20, np.zeros(20, bool), np.zeros((20, 2))))
    with pytest.raises(LookupError):
        TakeoverSampler(buffer, mode="takeovers").sample(8)


def test_rlpd_routes_takeover_steps_to_the_demo_half_of_each_batch() -> None:
    n = 1000
    took = np.zeros(n, bool)
    took[::20] = True  # 5 % takeovers
    buffer = NumpyReplayBuffer(ReplayConfig((3,), (2,), memory_budget_bytes=1 << 20))
    buffer.add(_steps(n, took, np.zeros((n, 2))))
    sampler = TakeoverSampler(buffer, mode="routed", prior_fraction=0.5, seed=0)
    fractions = [float(sampler.sample(256).intervention.float().mean())  # type: ignore[union-attr]
                 for _ in range(20)]
    # Half of every batch is takeovers, plus the 5 % the uniform half brings.
    assert 0.5 <= np.mean(fractions) <= 0.56
    plain = TakeoverSampler(buffer, mode="all", seed=0)
    assert float(plain.sample(2048).intervention.float().mean()) < 0.1  # type: ignore[union-attr]


def test_action_chunks_follow_the_episode_and_repeat_its_last_action() -> None:
    n = 10
    action = np.stack([np.arange(n), np.zeros(n)], 1).astype(np.float32)
    buffer = NumpyReplayBuffer(ReplayConfig((3,), (2,), memory_budget_bytes=1 << 20))
    buffer.add(_steps(n, np.zeros(n, bool), action, episode_len=5))
    batch = buffer.sample(200, horizon=3)
    assert batch.action_chunk is not None
    first = batch.action_chunk[:, :, 0].numpy()
    for row in first:
        t = int(row[0])
        last = 4 if t < 5 else 9
        np.testing.assert_array_equal(row, [t, min(t + 1, last), min(t + 2, last)])


def test_chunks_execute_open_loop_or_temporally_ensembled() -> None:
    calls = []

    def chunk_fn(obs: np.ndarray) -> np.ndarray:
        calls.append(1)
        k = float(len(calls))
        return np.array([[k], [k + 10], [k + 20]], np.float32)

    runner = ChunkExecutor()
    open_loop = ChunkExecution(horizon=3, mode="chunk", execute_steps=2)
    got = [float(runner.next(chunk_fn, np.zeros(1), open_loop)[0]) for _ in range(4)]
    assert got == [1, 11, 2, 12]
    runner.reset()
    calls.clear()
    ensemble = ChunkExecution(horizon=3, mode="ensemble", decay=0.0)
    got = [float(runner.next(chunk_fn, np.zeros(1), ensemble)[0]) for _ in range(3)]
    # Step 2 averages chunk 1's third, chunk 2's second and chunk 3's first prediction.
    assert got == [1.0, (11 + 2) / 2, (21 + 12 + 3) / 3]


def test_a_steered_flow_policy_runs_the_first_action_of_a_new_chunk_every_step() -> None:
    # DSRL's critic judges the first action of the chunk a noise makes: that is the
    # action the robot must run, not an average of chunks or an open-loop tail.
    from learners.policies._flow_matching import execution_of

    steered = execution_of({"horizon": 4, "steer": True})
    assert (steered.mode, steered.execute_steps) == ("chunk", 1)
    for wrong in ({"execute": "ensemble"}, {"execute": "chunk", "execute_steps": 4}):
        with pytest.raises(ValueError, match="steer"):
            execution_of({"horizon": 4, "steer": True, **wrong})
    assert execution_of({"horizon": 4}).mode == "ensemble"  # imitation alone: unchanged


def test_dsrl_steers_a_flow_policy_that_robots_can_load() -> None:
    rng = np.random.default_rng(0)
    algo = dsrl.DSRL(SPEC, dsrl.DSRLConfig(hidden_sizes=(32, 32), pretrain_updates=2),
                     {"horizon": 2, "steps": 4})
    for _ in range(5):
        obs, action = _bimodal(rng, 32)
        batch = _batch(obs, action, np.ones(32, bool))
        batch = Batch(**{**batch.__dict__, "reward": torch.as_tensor(action[:, 0])})
        stats = algo.update(batch)
        assert all(np.isfinite(v) for v in stats.values())
    options = {"horizon": 2, "steps": 4, "steer": True, "hidden_sizes": [32, 32]}
    blob = to_safetensors(algo.policy_weights(), weights_metadata("flow_matching", options))
    from learners.policies import load

    policy = load(SPEC, blob)
    assert policy.act(obs).shape == (32, 2)


def _spec(algorithm: str):  # type: ignore[no-untyped-def]
    from schemas.experiment import ExperimentSpec

    return ExperimentSpec.model_validate({"name": "e", "robots": [{"robot_type": "panda"}],
                                          "algorithm": {"name": algorithm},
                                          "policy": {"hidden": [32, 32]}})


@pytest.mark.parametrize(("algorithm", "policy"), [
    ("hg_dagger", {"kind": "mlp_gaussian", "hidden": [8, 8]}),
    ("bc", {"kind": "flow_matching", "hidden": [8, 8], "options": {"horizon": 3, "steps": 2}}),
    ("dsrl", {"kind": "flow_matching", "hidden": [8, 8],
              "options": {"horizon": 2, "steps": 2, "steer": True}}),
    ("fql", {"kind": "flow_matching", "hidden": [8, 8],
             "options": {"horizon": 2, "steps": 2, "one_step": True}}),
])
def test_the_learner_runs_imitation_plugins_by_name_and_publishes_what_robots_load(
        algorithm: str, policy: dict[str, object]) -> None:
    from learners.loop import Steps
    from learners.policies import build as build_policy

    spec = experiment(algorithm={"name": algorithm, "batch_size": 8,
                                 **({"hyperparameters": {"pretrain_updates": 3}}
                                    if algorithm == "dsrl" else {}),
                                 **({"hyperparameters": {"pretrain_updates": 2,
                                                         "distill_updates": 1,
                                                         "critic_warmup_updates": 1}}
                                    if algorithm == "fql" else {})},
                      policy=policy)
    publishers = Publishers()
    try:
        learner = make(spec, publishers)
        for b in range(4):  # samples mark a takeover at every 7th step
            learner.add(Steps.of_batch(rewarded(REACHER, b)), "live")
        assert train_until_capped(learner) > 0
        t = learner.types["reacher2d"]
        snap = t.snapshot({})
        assert snap.kind == policy["kind"]
        robot_policy = build_policy(snap.kind, t.policy_spec, snap.options)
        robot_policy.load_weights(snap.tensors)
        assert robot_policy.act(np.zeros((1, REACHER.observation.size), np.float32)).shape == (
            1, REACHER.action.size)
    finally:
        publishers.close()


def test_a_flow_policy_conditions_on_camera_frames() -> None:
    options = {"horizon": 2, "steps": 2, "cameras": ["front"], "image_size": [32, 32],
               "channels": 4, "feature_dim": 8}
    algo = bc.BC(SPEC, bc.BCConfig(hidden_sizes=(16,)), "flow_matching", dict(options))
    n = 8
    frames = torch.randint(0, 255, (n, 32, 32, 3), dtype=torch.uint8)
    batch = _batch(np.zeros((n, 3), np.float32), np.zeros((n, 2), np.float32))
    batch = Batch(**{**batch.__dict__, "images": {"front": frames}})
    assert np.isfinite(algo.update(batch)["losses/flow"])
    policy = build("flow_matching", SPEC, {**options, "hidden_sizes": [16]})
    policy.load_weights(algo.policy_weights())
    chunk = policy.act_chunk(np.zeros((2, 3), np.float32),  # type: ignore[attr-defined]
                             images={"front": frames[:2].numpy()})
    assert chunk.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="cameras"):
        policy.act(np.zeros((1, 3), np.float32))


def test_observation_statistics_are_measured_from_the_data_and_travel_with_the_weights(
        ) -> None:
    rng = np.random.default_rng(3)
    # Metres around a workspace centre: raw spreads differ by 100x between elements.
    scale, centre = np.array([0.01, 1.0, 0.1], np.float32), np.array([0.5, -2.0, 0.0], np.float32)
    algo = bc.BC(SPEC, bc.BCConfig(hidden_sizes=(16,), seed=0), "flow_matching",
                 {"horizon": 2, "steps": 2})
    normaliser = algo.flow.normaliser  # type: ignore[union-attr]
    assert normaliser is not None
    normaliser.limit = 96
    seen = []
    for _ in range(4):  # the 4th batch comes after the limit: the statistics stay frozen
        obs = (centre + scale * rng.normal(size=(32, 3))).astype(np.float32)
        algo.update(_batch(obs, rng.uniform(-1, 1, size=(32, 2))))
        seen.append(obs)
    rows = np.concatenate(seen[:3]).astype(np.float64)
    np.testing.assert_allclose(normaliser.mean.numpy(), rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normaliser.var.sqrt().numpy(), rows.std(0), rtol=1e-4)
    assert float(normaliser.count[0]) == 96
    weights = algo.policy_weights()
    assert {"normaliser.mean", "normaliser.var", "normaliser.count"} <= set(weights)
    robot = build("flow_matching", SPEC, {"horizon": 2, "steps": 2, "hidden_sizes": [16]})
    robot.load_weights(weights)
    obs = seen[-1][:4]
    with torch.no_grad():
        features = algo.flow.features(torch.as_tensor(obs))  # type: ignore[union-attr]
        learner_chunk = algo.flow.decode(features, torch.zeros(4, 4))  # type: ignore[union-attr]
    np.testing.assert_allclose(robot.act_chunk(obs, True),  # type: ignore[attr-defined]
                               learner_chunk.numpy(), atol=1e-6)
    # The network sees unit-scale inputs, not metres.
    assert float(features.abs().max()) < 4.0


def test_dsrl_starts_at_the_flow_policys_mode_and_warms_its_critics_before_steering(
        ) -> None:
    rng = np.random.default_rng(0)
    options = {"horizon": 2, "steps": 4}
    base = bc.BC(SPEC, bc.BCConfig(hidden_sizes=(32, 32)), "flow_matching", dict(options))
    for _ in range(20):
        base.update(_batch(*_bimodal(rng, 32)))
    algo = dsrl.DSRL(SPEC, dsrl.DSRLConfig(hidden_sizes=(32, 32), pretrain_updates=0,
                                           critic_warmup_updates=3), dict(options))
    own = algo.actor.state_dict()
    algo.actor.load_state_dict({**own, **{k: torch.as_tensor(v)
                                          for k, v in base.policy_weights().items()}})
    steered = {**options, "steer": True, "hidden_sizes": [32, 32]}
    plain = build("flow_matching", SPEC, {**options, "hidden_sizes": [32, 32]})
    plain.load_weights(base.policy_weights())
    obs = rng.normal(size=(16, 3)).astype(np.float32)

    def robot_chunk() -> np.ndarray:
        robot = build("flow_matching", SPEC, steered)
        robot.load_weights(algo.policy_weights())
        return robot.act_chunk(obs, True)  # type: ignore[attr-defined,no-any-return]

    steer_before = {k: v.clone() for k, v in algo.steer.state_dict().items()}
    for _ in range(3):  # critic warm-up: the steering actor does not move
        o, a = _bimodal(rng, 32)
        stats = algo.update(Batch(**{**_batch(o, a).__dict__,
                                     "reward": torch.as_tensor(a[:, 0])}))
        assert "losses/critic" in stats and "losses/actor" not in stats
    assert all(torch.equal(v, algo.steer.state_dict()[k]) for k, v in steer_before.items())
    # Zero noise: the steered policy acts as the BC policy's deterministic mode.
    np.testing.assert_allclose(robot_chunk(), plain.act_chunk(obs, True),  # type: ignore[attr-defined]
                               atol=1e-6)
    o, a = _bimodal(rng, 32)
    stats = algo.update(Batch(**{**_batch(o, a).__dict__, "reward": torch.as_tensor(a[:, 0])}))
    assert "losses/actor" in stats
    assert not all(torch.equal(v, algo.steer.state_dict()[k]) for k, v in steer_before.items())


def _fine_tuned_on_the_toy(algo: dsrl.DSRL | fql.FQL, updates: int
                           ) -> tuple[bc.BC, np.ndarray]:
    """Load a flow BC-trained on the bimodal toy into ``algo``, then ``updates`` RL updates
    for reward = action[0] (one-step episodes from the BC policy's own stochastic actions:
    the +0.8 mode pays).  Returns the BC learner and 400 fresh observations."""
    rng = np.random.default_rng(0)
    options = {"horizon": 1, "steps": 4, "hidden_sizes": [32, 32]}
    base = bc.BC(SPEC, bc.BCConfig(hidden_sizes=(32, 32), lr=2e-3, seed=0), "flow_matching",
                 dict(options))
    for _ in range(200):
        base.update(_batch(*_bimodal(rng, 128)))
    own = algo.actor.state_dict()
    algo.actor.load_state_dict({**own, **{k: torch.as_tensor(v)
                                          for k, v in base.policy_weights().items()}})
    behaviour = build("flow_matching", SPEC, options)
    behaviour.load_weights(base.policy_weights())
    for _ in range(updates):
        obs = rng.normal(size=(128, 3)).astype(np.float32)
        action = behaviour.act(obs)
        batch = _batch(obs, action)
        algo.update(Batch(**{**batch.__dict__, "reward": torch.as_tensor(action[:, 0]),
                             "terminated": torch.ones(128)}))
    return base, rng.normal(size=(400, 3)).astype(np.float32)


def _steered_on_a_toy(prior_weight: float) -> tuple[dsrl.DSRL, bc.BC, np.ndarray]:
    """DSRL steering the toy's flow (:func:`_fine_tuned_on_the_toy`)."""
    algo = dsrl.DSRL(SPEC, dsrl.DSRLConfig(hidden_sizes=(32, 32), pretrain_updates=0,
                                           critic_warmup_updates=50, critic_lr=1e-3,
                                           actor_lr=1e-3, prior_weight=prior_weight, seed=0),
                     {"horizon": 1, "steps": 4, "hidden_sizes": [32, 32], "steer_std": 0.5})
    base, obs = _fine_tuned_on_the_toy(algo, 150)
    return algo, base, obs


def test_dsrl_steering_chooses_the_noise_whose_action_the_critic_rates_higher() -> None:
    algo, base, obs = _steered_on_a_toy(0.0)
    plain = build("flow_matching", SPEC, {"horizon": 1, "steps": 4, "hidden_sizes": [32, 32]})
    plain.load_weights(base.policy_weights())
    before = float((plain.act(obs, True)[:, 0] > 0).mean())
    robot = build("flow_matching", SPEC, {"horizon": 1, "steps": 4, "hidden_sizes": [32, 32],
                                          "steer": True})
    robot.load_weights(algo.policy_weights())
    after = float((robot.act(obs, True)[:, 0] > 0).mean())
    assert before < 0.8 and after > 0.95  # the paying mode, chosen among the flow's own
    with torch.no_grad():
        f = algo.actor.features(torch.as_tensor(obs))
        w = algo.steer.mode(f)
        gain = (algo.q_a(f, algo.first_action(f, w)).mean(0)
                - algo.q_a(f, algo.first_action(f, torch.zeros_like(w))).mean(0))
    assert float(gain.mean()) > 0.3  # the critic rates the chosen action over the mode's


def test_the_noise_prior_keeps_the_steered_noise_near_the_flows_own() -> None:
    # The steering actor, free, runs its noise far from N(0, I) (where the flow's output
    # is extrapolation); with the prior it stays near, still choosing the paying mode.
    norms = {}
    for weight in (0.0, 1.0):
        algo, _, obs = _steered_on_a_toy(weight)
        with torch.no_grad():
            f = algo.actor.features(torch.as_tensor(obs))
            norms[weight] = float(algo.steer.mode(f).norm(dim=1).mean())
            chosen = algo.first_action(f, algo.steer.mode(f))
        assert float((chosen[:, 0] > 0).float().mean()) > 0.95
    assert norms[1.0] < 0.5 * norms[0.0]


def test_the_bench_keeps_the_best_evaluated_version_the_start_included() -> None:
    from infra.bench import imitation

    kept = imitation.Kept(0, 0.40, {"w": np.zeros(1)})
    kept.offer(2, 0.35, {"w": np.ones(1)})  # worse than the start: not kept
    assert (kept.round, kept.rate) == (0, 0.40)
    kept.offer(4, 0.40, {"w": np.ones(1)})  # a tie keeps the older version
    assert kept.round == 0
    kept.offer(6, 0.55, {"w": np.full(1, 6.0)})
    assert (kept.round, kept.rate, float(kept.weights["w"][0])) == (6, 0.55, 6.0)
    careful = imitation.Kept(0, 0.40, {"w": np.zeros(1)}, margin=0.1)
    careful.offer(2, 0.45, {"w": np.ones(1)})  # within the evaluation's noise: not kept
    careful.offer(4, 0.55, {"w": np.ones(1)})
    assert (careful.round, careful.rate) == (4, 0.55)


def test_robots_get_the_moving_average_of_the_weights_and_the_learning_rate_decays(
        ) -> None:
    rng = np.random.default_rng(4)
    config = bc.BCConfig(hidden_sizes=(16,), lr=1e-3, ema=0.9, lr_decay_updates=4, seed=0)
    algo = bc.BC(SPEC, config, "flow_matching", {"horizon": 2, "steps": 2})
    lrs = [algo.update(_batch(*_bimodal(rng, 16)))["charts/lr"] for _ in range(6)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[4:] == pytest.approx([1e-4, 1e-4])
    assert lrs == sorted(lrs, reverse=True)
    live = {k: v.numpy() for k, v in algo.policy.state_dict().items()}
    sent = algo.policy_weights()
    assert set(sent) == set(live)
    assert not np.allclose(sent["velocity.0.weight"], live["velocity.0.weight"])
    np.testing.assert_array_equal(sent["normaliser.mean"], live["normaliser.mean"])
    resumed = bc.BC(SPEC, config, "flow_matching", {"horizon": 2, "steps": 2})
    resumed.load_state(algo.state())
    for k, v in resumed.policy_weights().items():
        np.testing.assert_array_equal(v, sent[k])
    assert resumed.learning_rate() == pytest.approx(1e-4)


def test_a_time_limited_bench_stops_training_while_it_can_still_evaluate() -> None:
    from infra.bench import imitation

    clock = imitation.Clock(100.0)
    clock.measure_episodes(10.0, 20)  # 0.5 s an episode
    assert clock.training(50, "updates")  # 1.5 * 50 * 0.5 + 10 = 47.5 s reserve < 100 s
    assert not clock.training(200, "round 3")  # 160 s reserve > what is left
    assert clock.stopped == "stopped by the time limit during round 3"
    assert imitation.Clock(0.0).training(10**6, "anything")  # 0: no limit


def _fql_on_a_toy(alpha: float) -> tuple[fql.FQL, np.ndarray]:
    """FQL on the toy's flow (:func:`_fine_tuned_on_the_toy`): its one-step policy
    distilled from the flow, then pushed up the critic."""
    algo = fql.FQL(SPEC, fql.FQLConfig(hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32),
                                       pretrain_updates=0, distill_updates=150,
                                       critic_warmup_updates=50, alpha=alpha, critic_lr=1e-3,
                                       actor_lr=1e-3, seed=0),
                   {"horizon": 1, "steps": 4, "hidden_sizes": [32, 32],
                    "one_step_hidden_sizes": [32, 32]})
    _, obs = _fine_tuned_on_the_toy(algo, 350)
    return algo, obs


def _one_step_robot(algo: fql.FQL) -> Policy:
    options = {"horizon": 1, "steps": 4, "hidden_sizes": [32, 32], "one_step": True,
               "one_step_hidden_sizes": [32, 32]}
    blob = to_safetensors(algo.policy_weights(), weights_metadata("flow_matching", options))
    from learners.policies import load

    return load(SPEC, blob)


def test_fql_moves_the_one_step_policy_to_the_action_its_critic_rates_higher() -> None:
    free, obs = _fql_on_a_toy(alpha=0.1)
    assert free.phase() == "rl"
    robot = _one_step_robot(free)  # what robots load: one pass, no integration
    chosen = robot.act(obs, True)
    assert float((chosen[:, 0] > 0).mean()) > 0.95  # the paying mode, from ~half the states
    with torch.no_grad():  # the critic learnt what pays: the chosen action over the flow's
        f = free.actor.features(torch.as_tensor(obs))
        flow_mode = free.actor.to_robot(free.actor.integrate(f, torch.zeros(400, 2)))[:, 0]
        gain = (free.critics(f, torch.as_tensor(chosen)).mean(0)
                - free.critics(f, flow_mode).mean(0))
    assert float((flow_mode[:, 0] > 0).float().mean()) < 0.8  # the flow's own mode
    assert float(gain.mean()) > 0.3


def test_fqls_distillation_keeps_the_one_step_policy_on_the_flows_behaviour() -> None:
    # alpha weighs the flow's own noise-to-action map against the critic: held tightly,
    # the one-step policy still answers each noise as the flow does (its modes, not the
    # critic's choice); held loosely it leaves the flow where the critic pays.
    tight, obs = _fql_on_a_toy(alpha=10.0)
    loose, _ = _fql_on_a_toy(alpha=0.1)
    noise = torch.randn((400, 2), generator=torch.Generator().manual_seed(1))
    gaps = {}
    for name, algo in (("tight", tight), ("loose", loose)):
        with torch.no_grad():
            f = algo.actor.features(torch.as_tensor(obs))
            gaps[name] = float((algo.actor.one_step_normalised(f, noise)
                                - algo.actor.integrate(f, noise)).abs().mean())
    assert gaps["tight"] < 0.15 < gaps["loose"]


def test_fql_runs_its_phases_in_order_and_resumes_from_a_checkpoint() -> None:
    rng = np.random.default_rng(0)
    config = fql.FQLConfig(hidden_sizes=(16,), critic_hidden_sizes=(16,), pretrain_updates=2,
                           distill_updates=2, critic_warmup_updates=2, seed=0)
    options = {"horizon": 2, "steps": 2, "one_step_hidden_sizes": [16]}
    algo = fql.FQL(SPEC, config, dict(options))
    seen = []
    for _ in range(8):
        o, a = _bimodal(rng, 16)
        seen.append(algo.phase())
        stats = algo.update(Batch(**{**_batch(o, a, np.ones(16, bool)).__dict__,
                                     "reward": torch.as_tensor(a[:, 0])}))
    assert seen == ["pretrain"] * 2 + ["distill"] * 2 + ["critic_warmup"] * 2 + ["rl"] * 2
    assert {"losses/critic", "losses/distill", "losses/actor"} <= set(stats)
    resumed = fql.FQL(SPEC, config, dict(options))
    resumed.load_state(algo.state())
    o, a = _bimodal(rng, 16)
    batch = Batch(**{**_batch(o, a).__dict__, "reward": torch.as_tensor(a[:, 0])})
    assert resumed.update(batch) == algo.update(batch)
    with pytest.raises(ValueError, match="alpha"):
        fql.FQLConfig(alpha=-1.0)


def test_a_flow_policy_is_fine_tuned_by_one_method_and_says_which_option_is_wrong() -> None:
    from learners.policies._flow_matching import check, execution_of

    one_step = execution_of({"horizon": 4, "one_step": True})
    assert (one_step.mode, one_step.execute_steps) == ("chunk", 1)
    with pytest.raises(ValueError, match="one_step"):
        execution_of({"horizon": 4, "one_step": True, "execute": "ensemble"})
    with pytest.raises(ValueError, match="steer and one_step"):
        check({"steer": True, "one_step": True})
    with pytest.raises(ValueError, match="one_step must be true or false"):
        check({"one_step": "yes"})
    with pytest.raises(ValueError, match="hidden_sizes"):
        check({"one_step": True, "one_step_hidden_sizes": [0]})


@pytest.mark.parametrize("method", ["fql", "dsrl"])
def test_the_flow_rl_bench_fine_tunes_on_the_simulated_arm_by_either_method(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from infra.bench import imitation

    parser = argparse.ArgumentParser()
    imitation.add_arguments(parser)
    args = parser.parse_args(["flow_rl", "--method", method, "--demos", "1", "--updates", "3",
                              "--rounds", "2", "--episodes-per-round", "1",
                              "--round-updates", "2", "--eval-episodes", "1",
                              "--distill-updates", "2", "--critic-warmup", "2",
                              "--hidden", "16", "--one-step-hidden", "16", "--no-write"])
    monkeypatch.setattr(imitation, "CLOCK", imitation.Clock(0.0))  # no time limit
    outcome = imitation.flow_rl(args)
    assert ("FQL" if method == "fql" else "DSRL-NA") in outcome.run
    assert "-> " in outcome.result and "kept version" in outcome.result
    # The start's selection, then one per --select-every (2) rounds; every round a row.
    assert len(outcome.rows) == 2 + 1 + 2
    assert "2 rounds x 1 episodes" in outcome.detail


def test_robots_get_no_weights_while_fql_pretrains_and_distils() -> None:
    # Versions published during pre-training would carry an untrained one-step policy:
    # robots keep what they have until the one-step policy is distilled from the flow.
    from learners.loop import Steps

    offline = {"pretrain_updates": 12, "distill_updates": 8, "critic_warmup_updates": 6}
    spec = experiment(algorithm={"name": "fql", "batch_size": 8, "utd_ratio": 0.1,
                                 "hyperparameters": offline},
                      policy={"kind": "flow_matching", "hidden": [8, 8],
                              "options": {"horizon": 2, "steps": 2, "one_step": True}},
                      weight_sync={"every_updates": 3, "every_s": 3600})
    publishers = Publishers()
    try:
        learner = make(spec, publishers)
        for b in range(4):
            learner.add(Steps.of_batch(rewarded(REACHER, b)), "live")
        assert train_until_capped(learner) >= sum(offline.values())
        learner.publish_all()
        for p in publishers.publishers:
            p.flush(10.0)
        steps = [m.learner_step for sink in publishers.sinks.values() for m in sink.manifests]
        assert steps and min(steps) >= 12 + 8, steps
    finally:
        publishers.close()
