"""SAC / RLPD updates on hand-made batches (no buffer, no environment)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from learners import core, policies, sac

torch.set_num_threads(1)

SPEC = policies.PolicySpec(
    observation_dim=5, action_dim=3, action_low=(-1.0, 0.0, -2.0), action_high=(1.0, 0.5, 6.0)
)
SMALL: dict[str, Any] = {"hidden_sizes": (32, 32)}


def _batch(n: int = 64, seed: int = 0) -> core.Batch:
    g = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(SPEC.action_low), torch.tensor(SPEC.action_high)
    return core.Batch(
        observation=torch.randn(n, SPEC.observation_dim, generator=g),
        action=low + (high - low) * torch.rand(n, SPEC.action_dim, generator=g),
        reward=torch.randn(n, generator=g),
        next_observation=torch.randn(n, SPEC.observation_dim, generator=g),
        terminated=(torch.rand(n, generator=g) < 0.1).float(),
        policy_version=torch.zeros(n, dtype=torch.int64),
    )


def test_networks_have_the_documented_shapes() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL, num_critics=4, num_min_critics=2))
    batch = _batch(17)
    action, log_prob = algo.actor.sample(batch.observation)
    assert action.shape == (17, 3)
    assert log_prob.shape == (17,)
    assert algo.qf(batch.observation, action).shape == (4, 17)
    assert algo.qf_target(batch.observation, action).shape == (4, 17)


def test_actions_respect_asymmetric_bounds() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL))
    obs = 100.0 * torch.randn(4096, SPEC.observation_dim)  # drive the squash to saturation
    for action in (algo.actor.sample(obs)[0], algo.actor.mode(obs)):
        assert torch.all(action >= torch.tensor(SPEC.action_low))
        assert torch.all(action <= torch.tensor(SPEC.action_high))


def test_an_update_returns_finite_namespaced_metrics() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL))
    stats = algo.update(_batch())
    expected = {
        "losses/critic",
        "losses/actor",
        "losses/alpha",
        "values/q",
        "values/target_q",
        "charts/alpha",
        "charts/entropy",
        "charts/update_step",
    }
    assert expected <= set(stats)
    assert all("/" in k and math.isfinite(v) for k, v in stats.items())
    assert stats["charts/update_step"] == 1.0


def test_the_critics_regress_onto_rewards_when_nothing_is_bootstrapped() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL, critic_lr=1e-3, gamma=0.0))
    batch = _batch(128)
    first = algo.update_critic(batch)["losses/critic"]
    for _ in range(300):
        last = algo.update_critic(batch)["losses/critic"]
    assert last < 0.25 * first


def test_target_networks_follow_the_critics_by_polyak_averaging() -> None:
    tau = 0.1
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL, tau=tau))
    before = [p.detach().clone() for p in algo.qf_target.parameters()]
    algo.update_critic(_batch())  # moves the online critics, not the targets
    for old, new in zip(before, algo.qf_target.parameters(), strict=True):
        assert torch.equal(old, new)
    online = [p.detach().clone() for p in algo.qf.parameters()]
    algo.update_target()
    for old, target, param in zip(before, algo.qf_target.parameters(), online, strict=True):
        torch.testing.assert_close(target, (1 - tau) * old + tau * param)
    assert not any(p.requires_grad for p in algo.qf_target.parameters())


@pytest.mark.parametrize(("target_per_dim", "direction"), [(5.0, 1.0), (-20.0, -1.0)])
def test_temperature_tuning_moves_alpha_toward_the_target_entropy(
    target_per_dim: float, direction: float
) -> None:
    """Entropy below target (an unreachable +5/dim) raises alpha; above (-20/dim) lowers it."""
    config = sac.SACConfig(**SMALL, init_alpha=0.5, target_entropy_per_dim=target_per_dim)
    algo = sac.SAC(SPEC, config)
    for i in range(20):
        algo.update(_batch(seed=i))
    assert direction * (algo.alpha - 0.5) > 0.0


def test_a_fixed_temperature_stays_fixed() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL, init_alpha=0.3, autotune=False))
    stats = algo.update(_batch())
    assert algo.alpha == pytest.approx(0.3)
    assert "losses/alpha" not in stats


def test_rlpd_preset_uses_a_layer_normed_ensemble_with_a_random_min_subset() -> None:
    config = sac.SACConfig.rlpd(**SMALL)
    assert (config.num_critics, config.num_min_critics, config.utd_ratio) == (10, 2, 20)
    algo = sac.SAC(SPEC, config)
    assert algo.target_entropy == -1.5
    assert any(isinstance(m, sac.EnsembleLayerNorm) for m in algo.qf.modules())
    assert algo.qf(_batch().observation, _batch().action).shape == (10, 64)


def test_a_high_utd_update_takes_one_critic_step_per_minibatch_and_one_actor_step() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig.rlpd(**SMALL, utd_ratio=4))
    algo.update(_batch(4 * 32))

    def steps(optimizer: torch.optim.Optimizer) -> int:
        return int(next(iter(optimizer.state.values()))["step"])

    assert steps(algo.q_optimizer) == 4
    assert steps(algo.actor_optimizer) == 1
    with pytest.raises(ValueError, match="split"):
        algo.update(_batch(30))


def test_an_ensemble_subset_larger_than_the_ensemble_is_refused() -> None:
    with pytest.raises(ValueError, match="num_min_critics"):
        sac.SACConfig(num_critics=2, num_min_critics=3)


def test_published_weights_drive_an_agent_policy_like_the_learners_actor() -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL))
    algo.update(_batch())
    policy = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": [32, 32]})
    policy.load_weights(algo.policy_weights())
    obs = _batch().observation
    with torch.no_grad():
        expected = algo.actor.mode(obs).numpy()
    assert (policy.act(obs.numpy(), deterministic=True) == expected).all()


def test_normalised_observations_are_measured_by_the_learner_and_shipped_to_robots() -> None:
    """``normalise``: the critics and the actor read (obs - mean) / std of the rows the
    learner trained on; a robot loading the published weights acts exactly like the
    learner's actor on raw observations, and a checkpoint keeps the statistics."""
    options = {"hidden_sizes": [32, 32], "normalise": True}
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL), "mlp_gaussian", options)
    batch = _batch(256)
    shifted = dataclasses.replace(batch, observation=3.0 + 0.01 * batch.observation)
    algo.update(shifted)
    weights = algo.policy_weights()
    assert set(weights) >= {"normaliser.mean", "normaliser.var", "normaliser.count"}
    assert weights["normaliser.mean"] == pytest.approx(
        shifted.observation.mean(0).numpy(), abs=1e-5)
    features = algo.encoder(shifted.observation, {})
    assert features.mean().abs() < 0.05 and features.std() == pytest.approx(1.0, abs=0.05)

    policy = policies.build("mlp_gaussian", SPEC, options)
    policy.load_weights(weights)
    with torch.no_grad():
        expected = algo.policy.mode(shifted.observation).numpy()
    assert (policy.act(shifted.observation.numpy(), deterministic=True) == expected).all()
    raw = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": [32, 32]})
    with pytest.raises(ValueError, match="normaliser"):
        raw.load_weights(weights)  # a robot built without the option refuses them
    # What an agent does with a published blob: the kind and options travel in its
    # header (the numpy twin does not normalise, so this takes the torch path).
    blob = policies.to_safetensors(weights, policies.weights_metadata("mlp_gaussian", options))
    agent = policies.load_for_inference(SPEC, blob)
    assert (agent.act(shifted.observation.numpy(), deterministic=True) == expected).all()

    again = sac.SAC(SPEC, sac.SACConfig(**SMALL), "mlp_gaussian", options)
    again.load_state(algo.state())
    assert torch.equal(again.encoder.normaliser.mean, algo.encoder.normaliser.mean)


def test_a_normalise_option_that_is_not_a_bool_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="normalise"):
        policies.check_options("mlp_gaussian", {"normalise": "yes"})


class _FixedCritic(torch.nn.Module):
    """Q(s, a) = sign * |a - best|^2 for every member: the critics' verdict, fixed."""

    def __init__(self, best: torch.Tensor, sign: float, members: int = 2) -> None:
        super().__init__()
        self.best, self.sign, self.members = best, sign, members

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        q = self.sign * (action - self.best).pow(2).sum(-1)
        return q.expand(self.members, -1)


def _human_batch(n: int, human: bool) -> core.Batch:
    batch = _batch(n)
    target = torch.tensor([0.5, 0.25, 4.0]).expand(n, -1)
    return dataclasses.replace(batch, action=target.clone(),
                               intervention=torch.full((n,), human))


def test_bc_on_human_rows_pulls_the_actor_to_the_human_action_and_nothing_else_does() -> None:
    """``bc_weight`` (TD3+BC-scaled, unfiltered here): the mode moves to the action the
    human chose on rows flagged as human; the same rows unflagged teach nothing."""
    target = torch.tensor([0.5, 0.25, 4.0])
    errors = {}
    for human in (True, False):
        algo = sac.SAC(SPEC, sac.SACConfig(**SMALL, bc_weight=5.0, bc_q_filter=False))
        batch = _human_batch(128, human)
        for _ in range(600):
            stats = algo.update_actor_and_alpha(batch)
        with torch.no_grad():
            mode = algo.actor.mode(batch.observation)
        errors[human] = float(((mode - target) / algo.actor.action_scale).abs().max())
        assert stats["charts/bc_rows"] == (1.0 if human else 0.0)
    assert errors[True] < 0.2 < errors[False], errors


@pytest.mark.parametrize(("sign", "taught"), [(-1.0, 1.0), (1.0, 0.0)])
def test_the_q_filter_teaches_only_where_the_critics_prefer_the_human_action(
        sign: float, taught: float) -> None:
    """Nair et al.'s filter: a human action the critics rate above the policy's mode is
    imitated (every row), one they rate below it is not (no row, no BC loss)."""
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL, bc_weight=1.0))
    algo.qf = _FixedCritic(torch.tensor([0.5, 0.25, 4.0]), sign)  # type: ignore[assignment]
    stats = algo.update_actor_and_alpha(_human_batch(64, True))
    assert stats["charts/bc_rows"] == taught
    assert (stats["losses/bc"] > 0) is bool(taught)


# -- finite or nothing (issue 10, failing input 4) -------------------------------------------


def _parameters(algo: sac.SAC) -> dict[str, torch.Tensor]:
    return {k: v for k, v in algo.state().tensors.items() if k != "generator"}


@pytest.mark.parametrize("poison", ["huge observation", "infinite reward"])
def test_a_non_finite_loss_skips_the_update_and_moves_no_parameter(poison: str) -> None:
    algo = sac.SAC(SPEC, sac.SACConfig(**SMALL))
    algo.update(_batch(seed=1))  # optimiser state exists, so an unguarded step would move
    before = _parameters(algo)
    batch = _batch(seed=2)
    if poison == "huge observation":  # finite, yet the critic's square overflows float32
        batch.observation[3, 0] = 1e30
    else:
        batch.reward[5] = math.inf
    with pytest.raises(core.NonFiniteUpdate):
        algo.update(batch)
    after = _parameters(algo)
    assert algo.update_step == 1
    assert after.keys() == before.keys()
    for name, value in after.items():
        assert torch.equal(value, before[name]), name
        assert torch.isfinite(value).all(), name
    algo.update(_batch(seed=3))  # a clean batch trains again
    assert algo.update_step == 2


def test_a_finite_loss_with_an_overflowing_gradient_is_not_stepped() -> None:
    weight = torch.nn.Parameter(torch.full((2,), 1e-3))
    optimizer = torch.optim.Adam([weight])
    loss = (weight * 3e38).sum()  # 6e35: finite; its gradient's norm, 4.2e38, is not
    assert torch.isfinite(loss)
    with pytest.raises(core.NonFiniteUpdate, match="gradient"):
        sac.finite_step(optimizer, loss, "test")
    assert torch.equal(weight.detach(), torch.full((2,), 1e-3))
    assert weight.grad is None
