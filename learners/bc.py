"""Behaviour cloning (``bc``) and HG-DAgger (``hg_dagger``) for any trainable policy kind.

BC: regress the executed actions — for ``mlp_gaussian`` / ``cnn_gaussian`` the squared error
of the tanh-Gaussian's mode (the action robots run deterministically) plus a small weight
of its negative log-likelihood (which sets the exploration noise; the likelihood alone fits
the mode poorly where the data are hard), for ``flow_matching`` the conditional
flow-matching loss on action chunks (``learners.policies._flow_matching``), for
``vla_transformer`` (the large language-conditioned policy) the L1 loss on action chunks
of its ``batch_loss``.

HG-DAgger (Kelly et al. 2019, "HG-DAgger: Interactive Imitation Learning with Human
Experts"): the robot runs the learner's policy, a human (here: the scripted operator,
``agents.takeover``) takes over when it strays and hands back when it is safe; the policy
is trained on the aggregated data of those takeover segments (and demonstrations) only —
the steps where the *human* chose the action.  This is how the π0 experiment the issue
cites learns online from people.  The same update as BC; what differs is the sampler
(:class:`learners.replay.TakeoverSampler`, mode ``takeovers``), so rows the policy chose
itself never teach it.

Read top to bottom: config, the algorithm, registration.  No Kafka, no Delta here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learners import registry
from learners.core import JSON, Algorithm, Batch, NonFiniteUpdate, TrainingState
from learners.policies import FlowActor, PolicySpec, VlaTransformerPolicy, actor_parts, build
from learners.replay import NumpyReplayBuffer, TakeoverSampler
from learners.sac import _flatten_optimizer, _jsonable, _load_optimizer
from schemas.experiment import ExperimentSpec

FLOW_KIND = "flow_matching"
VLA_KIND = "vla_transformer"


@dataclass(frozen=True)
class BCConfig:
    """Hyper-parameters of BC / HG-DAgger."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the policy's hidden layers."""
    lr: float = 3e-4
    """Adam learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 10.0
    """gradient norm clip (0: off)."""
    nll_weight: float = 0.01
    """Gaussian heads: the loss is the squared error of the mode plus this weight times
    the negative log-likelihood (which sets the exploration noise); 0: mode only."""
    ema: float = 0.0
    """decay of an exponential moving average of the policy's weights, which is what
    robots get (Chi et al. 2023, "Diffusion Policy", for generative policies; warmed up as
    min(ema, (1 + t) / (10 + t))); 0: the trained weights themselves."""
    lr_decay_updates: int = 0
    """cosine decay of the learning rate to 10 % over this many updates, then flat
    (0: constant); computed from the update step, so a resumed run continues it."""
    seed: int = 0
    """seeds initialisation and the flow loss's noise."""


class BC(Algorithm):
    """Supervised learning of the executed actions (module docstring)."""

    def __init__(self, spec: PolicySpec, config: BCConfig, kind: str,
                 options: dict[str, JSON], *, takeovers_only: bool = False) -> None:
        self.spec, self.config, self.kind = spec, config, kind
        self.takeovers_only = takeovers_only
        options = {**options, "hidden_sizes": list(config.hidden_sizes)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.vla: VlaTransformerPolicy | None = None
            if kind == FLOW_KIND:
                self.flow: FlowActor | None = FlowActor(spec, options)
                self.policy: nn.Module = self.flow
                self.horizon = self.flow.horizon
                self.cameras = self.flow.cameras
            elif kind == VLA_KIND:  # the large policy: its own chunk loss (batch_loss)
                self.flow = None
                vla = build(kind, spec, options)
                assert isinstance(vla, VlaTransformerPolicy)
                self.vla, self.policy = vla, vla.net
                self.horizon, self.cameras = vla.chunk, vla.cameras
            else:
                self.flow = None
                parts = actor_parts(kind, spec, options)
                self.encoder, self.head = parts.encoder, parts.head
                self.policy = parts.policy
                self.horizon = 1
                self.cameras = parts.cameras
        whole = self.flow is not None or self.vla is not None
        self.trainable = nn.ModuleList([self.policy] if whole else [self.encoder, self.head])
        self.optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.ema_policy: nn.Module | None = (
            copy.deepcopy(self.policy).requires_grad_(False) if config.ema > 0 else None)
        self.update_step = 0


    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-batch imitation loss and its metrics."""
        if self.vla is not None:
            loss = self.vla.batch_loss(batch)
            return loss, {"losses/chunk_l1": loss.item()}
        images = {c: batch.images[c] for c in self.cameras}
        if self.flow is not None:
            chunk = batch.action_chunk if batch.action_chunk is not None \
                else batch.action[:, None].expand(-1, self.horizon, -1)
            features = self.flow.features(batch.observation, images)
            loss = self.flow.flow_loss(features, chunk, self.generator).mean()
            return loss, {"losses/flow": loss.item()}
        features = self.encoder(batch.observation, images)
        mean, std = self.head.distribution(features)
        scale, bias = self.head.action_scale, self.head.action_bias
        y = ((batch.action - bias) / scale).clamp(-0.999, 0.999)
        u = torch.atanh(y)
        log_prob = (torch.distributions.Normal(mean, std).log_prob(u).sum(-1)
                    - torch.log1p(-y.pow(2) + 1e-6).sum(-1))
        nll = -log_prob.mean()
        mse = (bias + scale * torch.tanh(mean) - batch.action).pow(2).sum(-1).mean()
        loss = mse + self.config.nll_weight * nll
        return loss, {"losses/nll": nll.item(), "losses/mode_mse": mse.item()}

    def update(self, batch: Batch) -> dict[str, float]:
        if self.flow is not None and self.flow.normaliser is not None:
            self.flow.normaliser.observe(batch.observation)  # frozen after its first rows
        loss, stats = self.loss(batch)
        self.optimizer.zero_grad()
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteUpdate(f"imitation loss is {loss.item()}")
        torch.autograd.backward(loss)
        norm = nn.utils.clip_grad_norm_(self.trainable.parameters(),
                                        self.config.grad_clip or float("inf"))
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad()
            raise NonFiniteUpdate(f"imitation gradient norm is {norm.item()}")
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.update_step += 1
        self._average()
        took = 0.0 if batch.intervention is None else float(batch.intervention.float().mean())
        return {**stats, "charts/update_step": float(self.update_step),
                "charts/takeover_rows": took, "charts/lr": lr}

    def learning_rate(self) -> float:
        """This update's learning rate (``lr_decay_updates``: cosine to 10 %)."""
        n = self.config.lr_decay_updates
        if n <= 0:
            return self.config.lr
        done = min(self.update_step / n, 1.0)
        return self.config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * done)))

    def _average(self) -> None:
        if self.ema_policy is None:
            return
        t = self.update_step
        decay = min(self.config.ema, (1.0 + t) / (10.0 + t))
        with torch.no_grad():
            for avg, p in zip(self.ema_policy.parameters(), self.policy.parameters(),
                              strict=True):
                avg.lerp_(p, 1.0 - decay)
            for kept, b in zip(self.ema_policy.buffers(), self.policy.buffers(), strict=True):
                kept.copy_(b)  # statistics (the observation normaliser): the live ones

    # ------------------------------------------------------------------ weights and state

    def policy_weights(self) -> dict[str, np.ndarray]:
        acting = self.ema_policy if self.ema_policy is not None else self.policy
        return {k: v.detach().cpu().numpy().copy() for k, v in acting.state_dict().items()}

    def state(self) -> TrainingState:
        tensors = {f"policy.{k}": v.detach().clone()
                   for k, v in self.trainable.state_dict().items()}
        tensors["generator"] = self.generator.get_state()
        if self.ema_policy is not None:
            tensors |= {f"ema.{k}": v.detach().clone()
                        for k, v in self.ema_policy.state_dict().items()}
        meta: dict[str, JSON] = {
            "algorithm": "hg_dagger" if self.takeovers_only else "bc",
            "update_step": self.update_step,
            "config": _jsonable(dataclasses.asdict(self.config)),
            "spec": _jsonable(dataclasses.asdict(self.spec)),
            "optimizer/bc": _flatten_optimizer("bc", self.optimizer, tensors),
        }
        return TrainingState(tensors, meta)

    def load_state(self, state: TrainingState) -> None:
        if state.meta.get("spec") != _jsonable(dataclasses.asdict(self.spec)):
            raise ValueError(f"checkpoint is for spec {state.meta.get('spec')}, not {self.spec}")
        t = state.tensors
        self.trainable.load_state_dict({k[len("policy."):]: v for k, v in t.items()
                                        if k.startswith("policy.")})
        self.generator.set_state(t["generator"])
        if self.ema_policy is not None:
            self.ema_policy.load_state_dict({k[len("ema."):]: v for k, v in t.items()
                                             if k.startswith("ema.")})
        _load_optimizer(self.optimizer, state.meta["optimizer/bc"], t)
        step = state.meta["update_step"]
        if not isinstance(step, int):
            raise ValueError(f"checkpoint update_step is {step!r}, not an int")
        self.update_step = step


# ---------------------------------------------------------------------------- registration


def config_of(spec: ExperimentSpec) -> BCConfig:
    """The config an experiment asks for. Raises ``ValueError`` naming a bad setting."""
    overrides: dict[str, object] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in spec.algorithm.hyperparameters.items()
    }
    overrides.setdefault("hidden_sizes", tuple(spec.policy.hidden))
    overrides.setdefault("seed", spec.algorithm.seed)
    known = {f.name for f in dataclasses.fields(BCConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"algorithm.hyperparameters: {', '.join(unknown)} not BC settings "
                         f"(known: {', '.join(sorted(known))})")
    return BCConfig(**overrides)  # type: ignore[arg-type]


def _check(spec: ExperimentSpec) -> None:
    config_of(spec)


def _bc(ctx: registry.AlgorithmContext) -> BC:
    return BC(ctx.policy_spec, config_of(ctx.experiment), ctx.policy_kind,
              dict(ctx.policy_options))


def _hg_dagger(ctx: registry.AlgorithmContext) -> BC:
    return BC(ctx.policy_spec, config_of(ctx.experiment), ctx.policy_kind,
              dict(ctx.policy_options), takeovers_only=True)


def chunk_horizon(spec: ExperimentSpec) -> int:
    """The action chunk length the policy learns (1 unless ``flow_matching`` or
    ``vla_transformer``)."""
    if spec.policy.kind == VLA_KIND:
        chunk = spec.policy.options.get("chunk", 10)
        return chunk if isinstance(chunk, int) and chunk > 0 else 10
    if spec.policy.kind != FLOW_KIND:
        return 1
    horizon = spec.policy.options.get("horizon", 4)
    return horizon if isinstance(horizon, int) and horizon > 0 else 4


def _all_steps(online: NumpyReplayBuffer, prior: NumpyReplayBuffer | None,
               spec: ExperimentSpec) -> TakeoverSampler:
    """BC: every step, prior data mixed in at ``buffer.prior_ratio``."""
    return TakeoverSampler(online, prior, mode="all", prior_fraction=spec.buffer.prior_ratio,
                           horizon=chunk_horizon(spec), seed=spec.algorithm.seed)


def _takeover_steps(online: NumpyReplayBuffer, prior: NumpyReplayBuffer | None,
                    spec: ExperimentSpec) -> TakeoverSampler:
    """HG-DAgger: takeover steps and prior (demonstration) data only."""
    return TakeoverSampler(online, prior, mode="takeovers", horizon=chunk_horizon(spec),
                           seed=spec.algorithm.seed)


registry.register_algorithm("bc", _bc, _check, sampler=_all_steps)
registry.register_algorithm("hg_dagger", _hg_dagger, _check, sampler=_takeover_steps)
