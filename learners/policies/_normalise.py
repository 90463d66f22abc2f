"""Observation normalisation measured from the training data and shipped with the weights.

Robot observations mix metres, metres per second and gripper openings whose spreads differ
by orders of magnitude; an MLP fed them raw spends its first layer rescaling them, and an
imitation policy whose expert reacts to millimetres (``agents.sim.experts``) fits those
reactions poorly.  The learner measures each element's mean and standard deviation on the
rows it trains on (Chan et al.'s parallel update over batches), freezes them after
``limit`` rows, and keeps them as *persistent buffers*: they travel in the published
safetensors beside the network, so the robot normalises exactly as the learner did (the
same practice as Diffusion Policy's (Chi et al. 2023) and LeRobot's dataset-statistics
normalisers, kept inside the policy's weights rather than beside them).
"""

from __future__ import annotations

import torch
from torch import nn


class ObservationNormaliser(nn.Module):
    """``(obs - mean) / std`` clipped to ±``clip``; identity until it has seen data.

    :meth:`observe` folds a batch into the statistics (a no-op once ``limit`` rows were
    seen, so a policy's inputs stop moving early in training); call it from the learner
    only.  ``std`` is floored at ``min_std`` so a constant element stays finite.
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int, *, limit: int = 100_000, min_std: float = 1e-3,
                 clip: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.zeros(1))  # (1,): safetensors keeps no 0-d
        self.limit, self.min_std, self.clip = limit, min_std, clip

    @torch.no_grad()
    def observe(self, observation: torch.Tensor) -> None:
        """Fold a batch (B, size) into the running statistics (until ``limit`` rows)."""
        n = float(self.count)
        if n >= self.limit or len(observation) == 0:
            return
        x = observation.detach().to(self.mean.dtype)
        m = float(len(x))
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)
        if n == 0:
            self.mean.copy_(batch_mean)
            self.var.copy_(batch_var)
        else:
            delta = batch_mean - self.mean
            total = n + m
            self.var.copy_((self.var * n + batch_var * m + delta.pow(2) * n * m / total) / total)
            self.mean.add_(delta * m / total)
        self.count.fill_(n + m)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if float(self.count) == 0:
            return observation
        std = self.var.sqrt().clamp_min(self.min_std)
        return ((observation - self.mean) / std).clamp(-self.clip, self.clip)
