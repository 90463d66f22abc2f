"""Soft Actor-Critic for state observations, with the RLPD variant as a config preset.

SAC: Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications" (twin critics,
target networks with Polyak averaging, automatic temperature tuning).
RLPD: Ball et al. 2023, "Efficient Online Reinforcement Learning with Offline Data" — the
same algorithm with a LayerNorm critic ensemble whose target takes the minimum over a
random subset, a high update-to-data ratio, and 50/50 sampling of online and prior data
(the last is :class:`learners.replay.MixingSampler`, not this file's business).

Pixels: with a policy kind whose networks read cameras (``cnn_gaussian``), the conv
encoder is shared by the critics and trained by their loss only, the actor sees its
features detached, and frames get DrQ's random shift (Kostrikov et al. 2020, "Image
Augmentation Is All You Need"; Yarats et al. 2021, DrQ-v2) — ``image_pad`` pixels.
The policy kind's networks come from ``learners.policies.actor_parts``; with
``mlp_gaussian`` the encoder is the identity and the update is plain SAC.

Read top to bottom: config, networks, then the update, then the registration of ``sac``
and ``rlpd`` (``learners.registry``). No Kafka, no Delta here.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from learners import registry, replay
from learners.core import JSON, Algorithm, Batch, NonFiniteUpdate, TrainingState
from learners.policies import PolicySpec, actor_parts
from schemas.experiment import ExperimentSpec


@dataclass(frozen=True)
class SACConfig:
    """Hyper-parameters of SAC / RLPD. Defaults are SAC's; :meth:`rlpd` gives RLPD's."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the hidden layers of the actor and of each critic."""
    gamma: float = 0.99
    """discount factor."""
    tau: float = 0.005
    """Polyak coefficient: target <- (1 - tau) * target + tau * online, per critic step."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log(alpha)."""
    init_alpha: float = 1.0
    """initial entropy temperature."""
    autotune: bool = True
    """tune alpha so the policy's entropy tracks target_entropy; else alpha stays fixed."""
    target_entropy_per_dim: float = -1.0
    """target entropy per action dimension (SAC: -1, RLPD: -1/2), in the [-1, 1] box."""
    num_critics: int = 2
    """critics in the ensemble (SAC: 2 = q1, q2; RLPD: 10)."""
    num_min_critics: int = 2
    """size of the random critic subset whose minimum forms the target (RLPD: 2)."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden critic layer (RLPD: on)."""
    actor_q: Literal["min", "mean"] = "min"
    """how the actor reduces the critics: min (SAC) or ensemble mean (RLPD)."""
    backup_entropy: bool = True
    """subtract alpha * log pi(a'|s') in the target (the soft Bellman backup)."""
    utd_ratio: int = 1
    """critic updates per update() call; the batch is split into this many minibatches."""
    bc_weight: float = 0.0
    """behaviour cloning on the rows a human chose (``Batch.intervention``: demos and
    takeovers), added to the actor's loss: ``bc_weight * mean|Q| * |mode(s) - a|^2`` (in
    the normalised action box).  Scaled by the critics' mean |Q| (at least 1) as TD3+BC does
    (Fujimoto & Gu 2021, arXiv:2106.06860; their alpha = 2.5 is ``bc_weight`` 0.4), and
    Q-filtered as in Nair et al. 2018 (arXiv:1709.10089): a row teaches only where the
    critics rate the human's action above the policy's own mode.  0 (the default, and
    RLPD's): off."""
    bc_q_filter: bool = True
    """apply the BC term only where Q(s, a_human) > Q(s, mode(s)) (Nair et al.'s Q-filter)."""
    seed: int = 0
    """seeds network initialisation and the update's own noise."""
    image_pad: int = 4
    """DrQ random shift: frames move by up to this many pixels (edges repeated); 0: off.
    Only policies that read cameras see frames."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_min_critics <= self.num_critics:
            raise ValueError(
                f"num_min_critics={self.num_min_critics} must lie in [1, num_critics="
                f"{self.num_critics}]"
            )
        if self.utd_ratio < 1:
            raise ValueError(f"utd_ratio must be at least 1, got {self.utd_ratio}")
        if self.bc_weight < 0:
            raise ValueError(f"bc_weight must be at least 0, got {self.bc_weight}")

    @classmethod
    def rlpd(cls, **overrides: Any) -> SACConfig:
        """RLPD's published settings, with ``overrides`` on top."""
        settings: dict[str, Any] = {
            "num_critics": 10,
            "num_min_critics": 2,
            "critic_layer_norm": True,
            "actor_q": "mean",
            "target_entropy_per_dim": -0.5,
            "utd_ratio": 20,
        }
        return cls(**(settings | overrides))


# ---------------------------------------------------------------------------- networks


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul: (E, B, i) -> (E, B, o)."""

    def __init__(self, ensemble: int, n_in: int, n_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default initialisation, per member
        self.weight = nn.Parameter(torch.empty(ensemble, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.baddbmm(self.bias, x, self.weight)
        return out


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over features with a separate affine transform per ensemble member."""

    def __init__(self, ensemble: int, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble, 1, n))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """``num_critics`` Q-networks Q(s, a); returns shape (num_critics, batch)."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        num_critics: int,
        layer_norm: bool,
    ) -> None:
        super().__init__()
        self.num_critics = num_critics
        sizes = [observation_dim + action_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(
            EnsembleLinear(num_critics, n_in, n_out) for n_in, n_out in itertools.pairwise(sizes)
        )
        self.norms = nn.ModuleList(
            EnsembleLayerNorm(num_critics, n) if layer_norm else nn.Identity() for n in hidden_sizes
        )
        self.out = EnsembleLinear(num_critics, hidden_sizes[-1], 1)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([observation, action], dim=-1)
        x = x.unsqueeze(0).expand(self.num_critics, *x.shape)
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            x = F.relu(norm(linear(x)))
        q: torch.Tensor = self.out(x).squeeze(-1)
        return q


# ---------------------------------------------------------------------------- algorithm


class SAC(Algorithm):
    """SAC / RLPD over a policy kind's encoder (state or pixels) and Gaussian head."""

    def __init__(self, spec: PolicySpec, config: SACConfig | None = None,
                 kind: str = "mlp_gaussian", options: dict[str, JSON] | None = None,
                 device: str = "cpu") -> None:
        self.spec = spec
        self.config = config = config or SACConfig()
        self.minibatches = config.utd_ratio
        self.kind = kind
        with torch.random.fork_rng(devices=[]):  # seed initialisation, leave global RNG be
            torch.manual_seed(config.seed)
            parts = actor_parts(kind, spec, {**(options or {}),
                                             "hidden_sizes": list(config.hidden_sizes)})
            self.actor = parts.head
            self.qf = CriticEnsemble(
                parts.feature_dim,
                spec.action_dim,
                config.hidden_sizes,
                config.num_critics,
                config.critic_layer_norm,
            )
        self.encoder = parts.encoder
        """observation (+ frames) -> features; trained by the critics' loss only."""
        self.cameras = parts.cameras
        self.policy = parts.policy
        """the module whose state dict robots load (encoder + head for pixels)."""
        self.device = torch.device(device)
        """where networks train (``cpu``; ``cuda`` for the GPU benchmark: checkpoints and
        published weights are copied to the CPU)."""
        for module in (self.actor, self.qf, self.encoder, self.policy):
            module.to(self.device)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), requires_grad=True,
                                      device=self.device)
        self.target_entropy = config.target_entropy_per_dim * spec.action_dim
        # On CUDA one fused kernel per optimiser step instead of a dozen (launch-bound).
        fused = True if self.device.type == "cuda" else None
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr,
                                                fused=fused)
        self.q_optimizer = torch.optim.Adam(
            [*self.qf.parameters(), *self.encoder.parameters()], lr=config.critic_lr,
            fused=fused)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr,
                                                fused=fused)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._features: torch.Tensor | None = None
        self.update_step = 0

    @property
    def alpha(self) -> float:
        return self.log_alpha.exp().item()

    def update(self, batch: Batch) -> dict[str, float]:
        stats: dict[str, float] = {}
        if self.device.type != "cpu":
            batch = batch.to(self.device)
        minibatches = batch.split(self.config.utd_ratio)
        pending: dict[str, torch.Tensor] = {}
        for minibatch in minibatches:
            pending |= self._critic_step(minibatch)
            self.update_target()
        pending |= self._actor_and_alpha_step(minibatches[-1], self._features)
        self._features = None
        # One device-to-host copy for every statistic: on a GPU each .item() would wait
        # for the queue to drain, and the update is launch-bound.
        stats |= dict(zip(pending, torch.stack([v.float() for v in pending.values()])
                          .tolist(), strict=True))
        self.update_step += 1
        stats["charts/update_step"] = float(self.update_step)
        return stats

    def frames(self, images: dict[str, torch.Tensor] | Any) -> dict[str, torch.Tensor]:
        """The encoder's cameras of ``images``, randomly shifted (DrQ) when ``image_pad``."""
        if not self.cameras:
            return {}
        return {c: random_shift(images[c], self.config.image_pad, self.generator)
                if self.config.image_pad else images[c] for c in self.cameras}

    def update_critic(self, batch: Batch) -> dict[str, float]:
        """One gradient step of every critic (and the encoder) towards the soft Bellman
        target."""
        return {k: v.item() for k, v in self._critic_step(batch).items()}

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        images, next_images = self.frames(batch.images), self.frames(batch.next_images)
        observe = getattr(self.encoder, "observe", None)
        if observe is not None:  # observation statistics (mlp_gaussian's ``normalise``)
            observe(batch.observation)
        with torch.no_grad():
            alpha = self.log_alpha.exp()
            next_features = self.encoder(batch.next_observation, next_images)
            next_action, next_log_prob = self.actor.sample(next_features, self.generator)
            target_qs = self.qf_target(next_features, next_action)
            subset = torch.randperm(cfg.num_critics, generator=self.generator,
                                    device=self.device)
            min_qf_next_target = target_qs[subset[: cfg.num_min_critics]].min(dim=0).values
            if cfg.backup_entropy:
                min_qf_next_target = min_qf_next_target - alpha * next_log_prob
            next_q_value = batch.reward + (1.0 - batch.terminated) * cfg.gamma * min_qf_next_target

        features = self.encoder(batch.observation, images)
        # DrQ-v2: the actor reuses these (augmented) features, detached.
        self._features = features.detach()
        qs = self.qf(features, batch.action)
        qf_loss = F.mse_loss(qs, next_q_value.expand_as(qs))
        finite_step(self.q_optimizer, qf_loss, "critic")
        return {
            "losses/critic": qf_loss.detach(),
            "values/q": qs.detach().mean(),
            "values/target_q": next_q_value.mean(),
        }

    def update_target(self) -> None:
        """Polyak-average the critics into their targets."""
        with torch.no_grad():
            for param, target_param in zip(
                self.qf.parameters(), self.qf_target.parameters(), strict=True
            ):
                target_param.lerp_(param, self.config.tau)

    def update_actor_and_alpha(self, batch: Batch, features: torch.Tensor | None = None
                               ) -> dict[str, float]:
        """One step of the actor (max Q + alpha * entropy) and of the temperature, on
        ``features`` of ``batch`` (the critic step's, detached) or freshly encoded ones."""
        return {k: v.item() for k, v in self._actor_and_alpha_step(batch, features).items()}

    def _actor_and_alpha_step(self, batch: Batch, features: torch.Tensor | None
                              ) -> dict[str, torch.Tensor]:
        alpha = self.log_alpha.exp().detach()
        if features is None:
            features = self.encoder(batch.observation, self.frames(batch.images)).detach()
        self.qf.requires_grad_(False)  # the actor's loss needs dQ/da, not dQ/dtheta
        action, log_prob = self.actor.sample(features, self.generator)
        qs = self.qf(features, action)
        self.qf.requires_grad_(True)
        q = self._reduce(qs)
        actor_loss = (alpha * log_prob - q).mean()
        stats = {"charts/entropy": -log_prob.detach().mean()}
        if self.config.bc_weight > 0 and batch.intervention is not None:
            bc, taught = self._bc_term(features, batch, q.detach().abs().mean())
            actor_loss = actor_loss + bc
            stats |= {"losses/bc": bc.detach(), "charts/bc_rows": taught}
        finite_step(self.actor_optimizer, actor_loss, "actor")
        stats["losses/actor"] = actor_loss.detach()

        if self.config.autotune:
            # d/d(log alpha) < 0 when entropy is below target, so alpha rises, and vice versa.
            alpha_loss = (-self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
            finite_step(self.alpha_optimizer, alpha_loss, "alpha")
            stats["losses/alpha"] = alpha_loss.detach()
        stats["charts/alpha"] = self.log_alpha.detach().exp()
        return stats

    def _reduce(self, qs: torch.Tensor) -> torch.Tensor:
        """(E, B) critic values -> (B,): the actor's view (``actor_q``)."""
        return qs.min(dim=0).values if self.config.actor_q == "min" else qs.mean(dim=0)

    def _bc_term(self, features: torch.Tensor, batch: Batch, q_scale: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Q-filtered BC loss on the batch's human rows (see ``bc_weight``) and the
        fraction of the batch it taught; zero when the batch holds no human row."""
        assert batch.intervention is not None
        human = batch.intervention.to(device=features.device, dtype=torch.bool)
        if not bool(human.any()):
            zero = features.new_zeros(())
            return zero, zero
        f, target = features[human], batch.action[human]
        mode = self.actor.mode(f)
        scale = self.actor.action_scale
        err = ((mode - target) / scale).pow(2).sum(-1)
        keep = torch.ones_like(err)
        if self.config.bc_q_filter:
            with torch.no_grad():
                keep = (self._reduce(self.qf(f, target))
                        > self._reduce(self.qf(f, mode.detach()))).to(err.dtype)
        bc = self.config.bc_weight * q_scale.clamp_min(1.0) * (err * keep).sum() / len(human)
        return bc, keep.sum() / len(human)

    # ------------------------------------------------------------------ weights and state

    def policy_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.policy.state_dict().items()}

    def state(self) -> TrainingState:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in self._modules().items():
            for name, t in module.state_dict().items():
                tensors[f"{prefix}.{name}"] = t.detach().clone()
        tensors["log_alpha"] = self.log_alpha.detach().clone()
        tensors["generator"] = self.generator.get_state()
        meta: dict[str, JSON] = {
            "algorithm": "sac",
            "update_step": self.update_step,
            "config": _jsonable(dataclasses.asdict(self.config)),
            "spec": _jsonable(dataclasses.asdict(self.spec)),
        }
        for name, optimizer in self._optimizers().items():
            meta[f"optimizer/{name}"] = _flatten_optimizer(name, optimizer, tensors)
        return TrainingState(tensors, meta)

    def load_state(self, state: TrainingState) -> None:
        if state.meta.get("spec") != _jsonable(dataclasses.asdict(self.spec)):
            raise ValueError(
                f"checkpoint is for spec {state.meta.get('spec')}, not {self.spec}; "
                "resume with the robot spec it was trained on"
            )
        t = state.tensors
        for prefix, module in self._modules().items():
            own = module.state_dict()
            module.load_state_dict({name: t[f"{prefix}.{name}"] for name in own})
        with torch.no_grad():
            self.log_alpha.copy_(t["log_alpha"])
        self.generator.set_state(t["generator"])
        for name, optimizer in self._optimizers().items():
            _load_optimizer(optimizer, state.meta[f"optimizer/{name}"], t)
        step = state.meta["update_step"]
        if not isinstance(step, int):
            raise ValueError(f"checkpoint update_step is {step!r}, not an int")
        self.update_step = step

    def _modules(self) -> dict[str, nn.Module]:
        modules = {"actor": self.actor, "qf": self.qf, "qf_target": self.qf_target}
        if self.encoder.state_dict():  # weights, or an observation normaliser's statistics
            modules["encoder"] = self.encoder
        return modules

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "actor": self.actor_optimizer,
            "q": self.q_optimizer,
            "alpha": self.alpha_optimizer,
        }


def random_shift(frames: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ's augmentation: each (h, w, 3) uint8 frame of the batch moved by its own random
    integer offset in [-pad, pad] per axis, edge pixels repeated (replicate padding)."""
    n, h, w = frames.shape[:3]
    device = frames.device
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=generator, device=device)
    rows = (torch.arange(h, device=device)[None, :] + shift[:, :1]).clamp_(0, h - 1)
    cols = (torch.arange(w, device=device)[None, :] + shift[:, 1:]).clamp_(0, w - 1)
    return frames[torch.arange(n, device=device)[:, None, None], rows[:, :, None],
                  cols[:, None, :]]


def finite_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str) -> None:
    """Backpropagate ``loss`` and take one ``optimizer`` step, unless the loss or the
    gradient is not finite: then the gradients are cleared, no parameter moves, and
    :class:`~learners.core.NonFiniteUpdate` is raised.

    A gradient whose norm overflows float32 counts as non-finite: stepping on it is how
    a diverging run ends in NaN weights.
    """
    optimizer.zero_grad()
    torch.autograd.backward(loss)
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    norm = (torch.nn.utils.get_total_norm(grads) if grads
            else torch.zeros((), device=loss.device))
    # Both checks in one host sync (on a GPU each sync drains the launch queue).
    loss_ok, norm_ok = torch.isfinite(torch.stack([loss.detach().float(),
                                                   norm.detach().float()])).tolist()
    if not (loss_ok and norm_ok):
        optimizer.zero_grad()
        if not loss_ok:
            raise NonFiniteUpdate(f"{name} loss is {loss.item()}")
        raise NonFiniteUpdate(f"{name} gradient norm is {norm.item()}")
    optimizer.step()


def _jsonable(value: Any) -> JSON:
    """Tuples to lists, recursively, so a round-trip through JSON compares equal."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _flatten_optimizer(
    name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> JSON:
    """Optimizer state as JSON, its tensors moved into ``tensors`` under ``optim/...`` keys."""
    sd = optimizer.state_dict()
    state: dict[str, JSON] = {}
    for param_id, param_state in sd["state"].items():
        entry: dict[str, JSON] = {}
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensor_key = f"optim/{name}/{param_id}/{key}"
                tensors[tensor_key] = value.detach().clone()
                entry[key] = {"tensor": tensor_key}
            else:
                entry[key] = _jsonable(value)
        state[str(param_id)] = entry
    return {"state": state, "param_groups": _jsonable(sd["param_groups"])}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, flat: JSON, tensors: dict[str, torch.Tensor]
) -> None:
    if not isinstance(flat, dict) or not isinstance(flat.get("state"), dict):
        raise ValueError("checkpoint optimizer entry is malformed")
    state: dict[int, dict[str, Any]] = {}
    flat_state = flat["state"]
    assert isinstance(flat_state, dict)
    for param_id, entry in flat_state.items():
        assert isinstance(entry, dict)
        state[int(param_id)] = {
            key: tensors[str(value["tensor"])]
            if isinstance(value, dict) and "tensor" in value
            else value
            for key, value in entry.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": flat["param_groups"]})


# ---------------------------------------------------------------------------- registration


def config_of(spec: ExperimentSpec) -> SACConfig:
    """The SAC/RLPD config an experiment asks for (``rlpd``: RLPD's preset). Raises
    ``ValueError`` naming a bad hyper-parameter."""
    overrides: dict[str, object] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in spec.algorithm.hyperparameters.items()
    }
    overrides.setdefault("hidden_sizes", tuple(spec.policy.hidden))
    overrides.setdefault("seed", spec.algorithm.seed)
    known = {f.name for f in dataclasses.fields(SACConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"algorithm.hyperparameters: {', '.join(unknown)} not SAC settings "
                         f"(known: {', '.join(sorted(known))})")
    try:
        if spec.algorithm.name == "rlpd":
            return SACConfig.rlpd(**overrides)
        return SACConfig(**overrides)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"algorithm.hyperparameters: {exc}") from None


def _build(ctx: registry.AlgorithmContext) -> SAC:
    return SAC(ctx.policy_spec, config_of(ctx.experiment), ctx.policy_kind,
               dict(ctx.policy_options), device=ctx.device)


def _check(spec: ExperimentSpec) -> None:
    config_of(spec)


def _rlpd_sampler(online: replay.NumpyReplayBuffer, prior: replay.NumpyReplayBuffer | None,
                  spec: ExperimentSpec) -> replay.TakeoverSampler:
    """RLPD's 50/50 batches, with takeover steps routed to the demo half as HIL-SERL does
    (Luo et al. 2024, "Precise and Dexterous Robotic Manipulation via Human-in-the-Loop
    Reinforcement Learning"): the demo half draws from prior data and this experiment's
    takeover steps alike; without either it is plain online sampling."""
    return replay.TakeoverSampler(online, prior, mode="routed",
                                  prior_fraction=spec.buffer.prior_ratio,
                                  seed=spec.algorithm.seed)


registry.register_algorithm("sac", _build, _check)
registry.register_algorithm("rlpd", _build, _check, sampler=_rlpd_sampler)
