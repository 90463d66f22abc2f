"""Learning sanity: SAC solves the pure-numpy point-mass reach, fed as agents feed it.

The loop mimics the real system in one process: four "robots" emit step batches into the
replay buffer, the learner updates, and every few steps the robots' policy gets the
learner's weights through the safetensors bytes agents receive, stamped with a version.
"""

from __future__ import annotations

import numpy as np
import torch

from learners import core, fakes, policies, replay, sac

torch.set_num_threads(1)

ENV_STEPS = 2000  # per robot; 4 robots -> 8000 transitions
RANDOM_STEPS = 250
PUBLISH_EVERY = 10
HIDDEN = [64, 64]


def _success_rate(policy: core.Policy, episodes: int = 100) -> float:
    env = fakes.PointMassReach(fakes.PointMassConfig(num_envs=10, seed=123))
    while len(env.successes) < episodes:
        env.step(policy.act(env.observation, deterministic=True))
    return float(np.mean(env.successes[:episodes]))


def test_sac_reaches_80_percent_success_on_point_mass_reach_within_8000_steps() -> None:
    env = fakes.PointMassReach(fakes.PointMassConfig(num_envs=4, seed=0))
    config = sac.SACConfig(hidden_sizes=tuple(HIDDEN), init_alpha=0.1, alpha_lr=1e-3, seed=0)
    algo = sac.SAC(env.spec, config)
    buffer = replay.NumpyReplayBuffer(replay.ReplayConfig((4,), (2,), 4_000_000, seed=0))
    options: dict[str, core.JSON] = {"hidden_sizes": HIDDEN, "seed": 0}
    robot_policy: core.Policy = policies.build("mlp_gaussian", env.spec, options)
    rng = np.random.default_rng(0)
    version = 0
    stats: dict[str, float] = {}

    for step in range(ENV_STEPS):
        if step < RANDOM_STEPS:
            action = rng.uniform(-1.0, 1.0, size=(4, 2))
        else:
            action = robot_policy.act(env.observation)
        buffer.add(env.step(action, policy_version=version))
        if step < RANDOM_STEPS:
            continue
        batch = buffer.sample(256, current_version=version)
        stats = {**batch.stats, **algo.update(batch)}
        if step % PUBLISH_EVERY == 0:
            version += 1
            data = policies.to_safetensors(
                algo.policy_weights(), policies.weights_metadata("mlp_gaussian", options)
            )
            robot_policy = policies.load(env.spec, data)

    assert 0 < stats["replay/version_lag_mean"] <= stats["replay/version_lag_max"]
    assert _success_rate(robot_policy) >= 0.8
