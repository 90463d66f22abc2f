"""``mlp_gaussian``: a tanh-squashed Gaussian MLP over a flat state observation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from learners.core import JSON, Policy, Weights
from learners.policies._networks import TanhGaussianActor
from learners.policies._registry import ActorParts, PolicySpec
from learners.policies._spec import hidden_sizes_option

KIND = "mlp_gaussian"


def build_actor(spec: PolicySpec, hidden_sizes: tuple[int, ...]) -> TanhGaussianActor:
    """The actor network for ``spec`` (what the learner trains)."""
    return TanhGaussianActor(
        spec.observation_dim,
        spec.action_dim,
        torch.tensor(spec.action_low, dtype=torch.float32),
        torch.tensor(spec.action_high, dtype=torch.float32),
        hidden_sizes,
    )


class MlpGaussianPolicy(Policy):
    """Runs a :class:`TanhGaussianActor` on numpy observations, on CPU, without grads."""

    def __init__(self, spec: PolicySpec, actor: TanhGaussianActor, seed: int | None = None):
        self.spec = spec
        self.actor = actor.eval()
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        if obs.ndim != 2 or obs.shape[1] != self.spec.observation_dim:
            raise ValueError(
                f"observation batch has shape {tuple(obs.shape)}; expected "
                f"(batch, {self.spec.observation_dim})"
            )
        with torch.inference_mode():
            if deterministic:
                action = self.actor.mode(obs)
            else:
                action, _ = self.actor.sample(obs, self._generator)
        return action.numpy().astype(np.float32, copy=False)

    def load_weights(self, weights: Weights) -> None:
        own = self.actor.state_dict()
        if set(weights) != set(own):
            raise ValueError(
                f"weights do not fit {KIND}: missing {sorted(set(own) - set(weights))}, "
                f"unexpected {sorted(set(weights) - set(own))}"
            )
        for name, value in weights.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"weight {name!r} has shape {tuple(value.shape)}, expected "
                    f"{tuple(own[name].shape)}"
                )
        self.actor.load_state_dict(
            {name: torch.as_tensor(np.asarray(v, dtype=np.float32)) for name, v in weights.items()}
        )

    def export_weights(self) -> dict[str, np.ndarray]:
        state = self.actor.state_dict()
        return {name: t.detach().cpu().numpy().copy() for name, t in state.items()}


def build(spec: PolicySpec, options: Mapping[str, JSON]) -> MlpGaussianPolicy:
    """Factory registered as ``mlp_gaussian``; options: ``hidden_sizes``, ``seed``."""
    seed = options.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return MlpGaussianPolicy(spec, build_actor(spec, hidden_sizes_option(options)), seed)


class StateEncoder(nn.Module):
    """The identity on the flat state: ``mlp_gaussian``'s features are the observation."""

    def forward(self, observation: torch.Tensor, images: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        return observation


def check(options: Mapping[str, JSON]) -> None:
    """``mlp_gaussian`` sees the whole flat state and no camera."""
    if options.get("cameras"):
        raise ValueError(f"{KIND} sees no cameras (observation.cameras is "
                         f"{options['cameras']}); use policy.kind cnn_gaussian")
    if options.get("state_indices") is not None:
        raise ValueError(f"{KIND} sees the whole state; leave observation.state_indices unset")
    hidden_sizes_option(options)


def parts(spec: PolicySpec, options: Mapping[str, JSON]) -> ActorParts:
    """The actor an actor-critic learner trains (the head alone is the published policy)."""
    head = build_actor(spec, hidden_sizes_option(options))
    return ActorParts(encoder=StateEncoder(), head=head, feature_dim=spec.observation_dim,
                      policy=head)
