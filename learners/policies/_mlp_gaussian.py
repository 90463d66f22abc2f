"""``mlp_gaussian``: a tanh-squashed Gaussian MLP over a flat state observation.

Options: ``hidden_sizes`` (default 256x2), ``seed``, and ``normalise`` (default false):
observation normalisation measured by the learner on the rows it trains on and shipped in
the weights (:mod:`learners.policies._normalise`).  With it the published state dict is
``normaliser.{mean,var,count}`` + ``actor.*``; without it the actor's alone.  Manipulation
tasks whose expert reacts to centimetres want it on: behaviour cloning of 10 ``pick_place``
demos reached 80 % success with it and 30 % without (``infra/bench/imitation.py``,
session 5 probe), and the critics of :mod:`learners.sac` read the same normalised state.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from learners.core import JSON, Policy, Weights
from learners.policies._networks import TanhGaussianActor
from learners.policies._normalise import ObservationNormaliser
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


class NormalisedActor(nn.Module):
    """A :class:`TanhGaussianActor` behind an :class:`ObservationNormaliser` (the option
    ``normalise``): ``distribution`` / ``sample`` / ``mode`` take raw observations
    (B, observation_dim) float32 and normalise them first."""

    def __init__(self, normaliser: ObservationNormaliser, actor: TanhGaussianActor) -> None:
        super().__init__()
        self.normaliser = normaliser
        self.actor = actor

    def distribution(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.distribution(self.normaliser(observation))

    def sample(self, observation: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.sample(self.normaliser(observation), generator)

    def mode(self, observation: torch.Tensor) -> torch.Tensor:
        return self.actor.mode(self.normaliser(observation))


def normalise_option(options: Mapping[str, JSON]) -> bool:
    """The ``normalise`` option (default false), validated."""
    value = options.get("normalise", False)
    if not isinstance(value, bool):
        raise ValueError(f"normalise must be true or false, got {value!r}")
    return value


class MlpGaussianPolicy(Policy):
    """Runs a :class:`TanhGaussianActor` (or a :class:`NormalisedActor`) on numpy
    observations, on CPU, without grads."""

    def __init__(self, spec: PolicySpec, actor: TanhGaussianActor | NormalisedActor,
                 seed: int | None = None):
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
    """Factory registered as ``mlp_gaussian``; options: ``hidden_sizes``, ``seed``,
    ``normalise``."""
    seed = options.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    actor = build_actor(spec, hidden_sizes_option(options))
    if normalise_option(options):
        return MlpGaussianPolicy(
            spec, NormalisedActor(ObservationNormaliser(spec.observation_dim), actor), seed)
    return MlpGaussianPolicy(spec, actor, seed)


class StateEncoder(nn.Module):
    """``mlp_gaussian``'s features: the flat state, normalised when ``normaliser`` is
    given (the learner folds each training batch in through :meth:`observe`)."""

    def __init__(self, normaliser: ObservationNormaliser | None = None) -> None:
        super().__init__()
        self.normaliser = normaliser

    def forward(self, observation: torch.Tensor, images: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        return observation if self.normaliser is None else self.normaliser(observation)

    def observe(self, observation: torch.Tensor) -> None:
        """Fold a training batch (B, observation_dim) into the normaliser's statistics
        (frozen after its ``limit`` rows); a no-op without one."""
        if self.normaliser is not None:
            self.normaliser.observe(observation)


def check(options: Mapping[str, JSON]) -> None:
    """``mlp_gaussian`` sees the whole flat state and no camera."""
    if options.get("cameras"):
        raise ValueError(f"{KIND} sees no cameras (observation.cameras is "
                         f"{options['cameras']}); use policy.kind cnn_gaussian")
    if options.get("state_indices") is not None:
        raise ValueError(f"{KIND} sees the whole state; leave observation.state_indices unset")
    hidden_sizes_option(options)
    normalise_option(options)


def parts(spec: PolicySpec, options: Mapping[str, JSON]) -> ActorParts:
    """The actor an actor-critic learner trains: the head alone is the published policy,
    or with ``normalise`` the encoder's normaliser and the head (:class:`NormalisedActor`,
    sharing the encoder's statistics)."""
    head = build_actor(spec, hidden_sizes_option(options))
    if not normalise_option(options):
        return ActorParts(encoder=StateEncoder(), head=head,
                          feature_dim=spec.observation_dim, policy=head)
    normaliser = ObservationNormaliser(spec.observation_dim)
    return ActorParts(encoder=StateEncoder(normaliser), head=head,
                      feature_dim=spec.observation_dim,
                      policy=NormalisedActor(normaliser, head))
