"""Actor networks shared by learners (training) and agents (inference)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


def mlp(sizes: list[int], activate_last: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if activate_last or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TanhGaussianActor(nn.Module):
    """A Gaussian over pre-squash actions, squashed by tanh and scaled to the bounds.

    ``action = bias + scale * tanh(u)``, ``u ~ N(mean(s), std(s))``. Log-probabilities are
    those of ``tanh(u)`` in the normalised box [-1, 1]^d, so entropy targets do not depend
    on the robot's action units. The bounds are non-persistent buffers: they come from
    the robot spec, not from the weights.
    """

    action_scale: torch.Tensor
    action_bias: torch.Tensor

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        action_low: torch.Tensor,
        action_high: torch.Tensor,
        hidden_sizes: tuple[int, ...] = (256, 256),
    ) -> None:
        super().__init__()
        self.trunk = mlp([observation_dim, *hidden_sizes], activate_last=True)
        self.mean = nn.Linear(hidden_sizes[-1], action_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], action_dim)
        self.register_buffer("action_scale", (action_high - action_low) / 2.0, persistent=False)
        self.register_buffer("action_bias", (action_high + action_low) / 2.0, persistent=False)

    def distribution(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the pre-squash Gaussian."""
        h = self.trunk(observation)
        log_std = torch.tanh(self.log_std(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1.0)
        return self.mean(h), log_std.exp()

    def sample(
        self, observation: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in bounds and its log-probability, shape (batch,)."""
        mean, std = self.distribution(observation)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=mean.device)
        u = mean + std * noise
        log_prob = (-0.5 * noise.pow(2) - std.log() - 0.5 * math.log(2.0 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2), written stably.
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return self.action_bias + self.action_scale * torch.tanh(u), log_prob

    def mode(self, observation: torch.Tensor) -> torch.Tensor:
        """The deterministic action: the squashed mean."""
        mean, _ = self.distribution(observation)
        return self.action_bias + self.action_scale * torch.tanh(mean)
