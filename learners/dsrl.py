"""RL fine-tuning of a flow policy: DSRL (``dsrl``), steering the flow's noise.

Method: DSRL-NA, Wagenmaker et al. 2025, "Steering Your Diffusion Policy with Latent Space
Reinforcement Learning" (arXiv:2506.15799).  The flow network is kept as imitation made it;
RL learns a small Gaussian actor ``pi_w(s)`` over the flow's *starting noise* ``w``, so the
action is ``flow(s, w)``.  "Noise aliasing": one critic ``Q_A(s, a)`` learns from the
executed actions in the buffer by TD, and a latent critic ``Q_W(s, w)`` is distilled from
``Q_A(s, flow(s, w))``; ``pi_w`` is SAC's actor against ``Q_W``.

Why it was the first method here: (1) its critic learns from *executed* actions, so
takeovers, demos and any earlier policy's steps feed it unchanged — the data this system
records; (2) the flow network is never moved by RL, so fine-tuning cannot destroy the
imitation policy, only choose among the behaviours it already represents; (3) no
back-propagation through the integration steps.  (2) is also its limit: on push it did
not lift the 10-demo flow (below), and :mod:`learners.fql` — a one-step policy that may
leave the flow's support where its critic pays, held near it by a distillation term — is
the method that did.  It needs ``policy.options.steer: true`` (the robots then run the
steering actor too).

The flow is first fitted by BC on demonstration/takeover rows (``pretrain_updates``, the
flow-matching loss), so one experiment can import demos and fine-tune; with a flow already
fitted elsewhere set ``pretrain_updates: 0`` and ``init_weights`` to its safetensors file.
As in the paper, RL starts from the base policy: the steering actor starts answering zero
noise — the flow's deterministic mode, the behaviour BC was evaluated at
(``_flow_matching.start_at_the_flow_mode``) — and stays there for
``critic_warmup_updates`` while the critics learn, so early steering follows a critic that
has seen data rather than its initialisation.  The observation normaliser belongs to the
flow: it is measured during pre-training and frozen with it.
Chunks: the critic scores the first action of a chunk, so a steered policy re-plans every
step and runs exactly that action (``execute: chunk``, ``execute_steps: 1``, enforced by
``_flow_matching.execution_of``): temporal ensembling would run a mix of chunks made from
several noises, and open-loop tails actions no critic judged (measured on the bench's
10-demo push flow: receding horizon 1 succeeds 40 %, open-loop 4-step chunks 15 %, so
DSRL's open-loop chunked setting would start far below the BC policy).  The reward should
pay for what the success rate counts (the bench uses ``push_dense@2``, which pays for
success; ``push_dense@1`` pays for the hand near the cube on any side).

Conservatism: the steered noise is bounded (``noise_bound``, the paper's tanh box) and,
optionally, pulled toward the flow's own noise distribution: ``prior_weight`` adds the
cross-entropy ``E[|w|^2] / 2`` to SAC's actor loss; with SAC's entropy term at the same
weight that is ``KL(pi_w(.|s) || N(0, I))`` — behaviour-regularised actor-critic (BRAC,
Wu, Tucker & Nachum 2019, arXiv:1911.11361) in noise space, and by the data-processing
inequality a bound on the KL between the steered and the imitation policy's chunks.  On a bimodal
toy the free actor runs its noise out to |w| ~ 1.8 (where the flow extrapolates); the
prior keeps it near 0.6 while choosing the same paying mode (tests/unit/test_imitation.py).
The bench (``userctl bench imitation flow_rl``) also keeps the best version by evaluation
on selection seeds, the start included, and reports final and kept versions on held-out
seeds.  On push (10-demo flow, 40 %) the method has not lifted the start at γ 0.5/0.9/0.99
(BENCHMARKS.md, "imitation", session 4).  An oracle with the simulator as the critic,
picking each step the best of 32 of the flow's own chunks by a 4-step return, reaches 75 %:
the flow's samples hold most of the lift.  Best-of-32 by this learnt Q_A gets 20–25 %: the
one-step critic cannot rank them (a step moves the hand at most 1.5 cm, the reward by
<= 0.015, 0.075 while pushing, against a Q of units).  Next: a critic over the chunk with
chunk-length backups (Q-chunking, Li, Zhou & Levine 2025) choosing among N samples (EMaQ,
Ghasemipour et al. 2021), which needs H-step rewards from the replay sampler.  Moving
the flow by imitating its own successful episodes (reward-weighted regression with binary
returns) did not lift it either: 57–58 successes added over 12 rounds, 15–40 % (session 5).

Read top to bottom: config, networks (SAC's critic ensemble), update, registration.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from learners import _flow_rl, registry
from learners.core import JSON, Algorithm, Batch, TrainingState
from learners.policies import FlowActor, PolicySpec
from learners.sac import CriticEnsemble
from schemas.experiment import ExperimentSpec


@dataclass(frozen=True)
class DSRLConfig:
    """Hyper-parameters of DSRL-NA."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the flow's, the steering actor's and the critics' hidden layers."""
    gamma: float = 0.99
    """discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the action critics' targets."""
    critic_lr: float = 3e-4
    """Adam learning rate of both critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the steering actor."""
    flow_lr: float = 3e-4
    """Adam learning rate of the flow while it is pre-trained."""
    init_alpha: float = 0.1
    """initial entropy temperature of the steering actor."""
    target_entropy_per_dim: float = -1.0
    """target entropy per noise dimension."""
    num_critics: int = 2
    """action critics in the ensemble (their minimum forms targets)."""
    critic_layer_norm: bool = True
    """LayerNorm in the critics (RLPD's stabiliser)."""
    pretrain_updates: int = 2000
    """flow-matching updates on demonstration/takeover rows before RL starts."""
    critic_warmup_updates: int = 1000
    """after pre-training, updates of the critics alone before the steering actor moves
    (it answers zero noise, the flow's mode, until the critics have something to say)."""
    init_weights: str = ""
    """a flow_matching safetensors file to start the flow from (empty: none)."""
    noise_samples: int = 1
    """random noises per state for the latent critic's distillation (besides pi_w's)."""
    prior_weight: float = 0.0
    """weight of the steering actor's cross-entropy to the flow's own noise N(0, I)
    (``prior_weight * E[|w|^2] / 2``; with SAC's entropy term at the same weight, a KL to
    the noise the flow was trained on), so steered noise stays where the flow's output is
    imitation rather than extrapolation (0: the bound alone, as in the paper)."""
    seed: int = 0
    """seeds initialisation and the update's noise."""


class DSRL(Algorithm):
    """Steers a :class:`FlowActor`'s noise by RL (module docstring)."""

    def __init__(self, spec: PolicySpec, config: DSRLConfig, options: dict[str, JSON]
                 ) -> None:
        self.spec, self.config = spec, config
        options = {**options, "hidden_sizes": list(config.hidden_sizes), "steer": True}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.actor = FlowActor(spec, options)
            features, noise_dim = self.actor.feature_dim, self.actor.chunk_dim
            self.q_a = CriticEnsemble(features, spec.action_dim, config.hidden_sizes,
                                      config.num_critics, config.critic_layer_norm)
            self.q_w = CriticEnsemble(features, noise_dim, config.hidden_sizes, 1,
                                      config.critic_layer_norm)
        if config.init_weights:
            _flow_rl.load_init_weights(self.actor, config.init_weights)
        assert self.actor.steer is not None
        self.steer = self.actor.steer
        self.q_a_target = copy.deepcopy(self.q_a).requires_grad_(False)
        self.horizon = self.actor.horizon
        self.log_alpha = torch.tensor(math.log(config.init_alpha), requires_grad=True)
        self.target_entropy = config.target_entropy_per_dim * noise_dim
        flow_params = [*self.actor.encoder.parameters(), *self.actor.velocity.parameters()]
        self.flow_optimizer = torch.optim.Adam(flow_params, lr=config.flow_lr)
        self.q_optimizer = torch.optim.Adam([*self.q_a.parameters(), *self.q_w.parameters()],
                                            lr=config.critic_lr)
        self.actor_optimizer = torch.optim.Adam(self.steer.parameters(), lr=config.actor_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.actor_lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.update_step = 0
        # The flow's pre-training runs on the demos at once, not at the UTD ratio.
        self.offline_updates = config.pretrain_updates


    def ready_to_act(self) -> bool:
        """The steered flow is worth running once the flow is fitted (pre-training done);
        before that the learner publishes nothing."""
        return self.update_step >= self.config.pretrain_updates

    def update(self, batch: Batch) -> dict[str, float]:
        rl_step = self.update_step - self.config.pretrain_updates
        if rl_step < 0:
            stats = self.update_flow(batch)
        elif rl_step < self.config.critic_warmup_updates:
            stats = self.update_critics(batch)
        else:
            stats = self.update_critics(batch) | self.update_steering(batch)
        self.update_step += 1
        stats["charts/update_step"] = float(self.update_step)
        return stats

    def update_flow(self, batch: Batch) -> dict[str, float]:
        """Flow matching on the rows a human (or a demonstration) chose."""
        return _flow_rl.fit_flow(self.actor, self.flow_optimizer, batch, self.generator)

    def first_action(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The chunk's first action for ``noise`` (the flow frozen, differentiable in
        nothing but what the caller tracks)."""
        return self.actor.decode(features, noise)[:, 0]

    def update_critics(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            features = self.actor.features(batch.observation)
            next_features = self.actor.features(batch.next_observation)
            next_noise = self.steer.sample(next_features, self.generator)[0]
            next_action = self.first_action(next_features, next_noise)
            target = self.q_a_target(next_features, next_action).min(dim=0).values
            y = batch.reward + (1.0 - batch.terminated) * cfg.gamma * target
            # Noise aliasing: Q_W(s, w) := Q_A(s, flow(s, w)) for the actor's noise and
            # random noise.
            noises = [self.steer.sample(features, self.generator)[0]] + [
                torch.randn((len(features), self.actor.chunk_dim), generator=self.generator)
                for _ in range(cfg.noise_samples)]
            targets_w = [self.q_a(features, self.first_action(features, w)).mean(dim=0)
                         for w in noises]
        q_a = self.q_a(features, batch.action)
        loss_a = F.mse_loss(q_a, y.expand_as(q_a))
        loss_w = sum((F.mse_loss(self.q_w(features, w)[0], t)
                      for w, t in zip(noises, targets_w, strict=True)),
                     torch.zeros(()))
        _flow_rl.step(self.q_optimizer, loss_a + loss_w, "critic")
        with torch.no_grad():
            for p, tp in zip(self.q_a.parameters(), self.q_a_target.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        return {"losses/critic": loss_a.item(), "losses/latent_critic": float(loss_w.detach()),
                "values/q": q_a.mean().item()}

    def update_steering(self, batch: Batch) -> dict[str, float]:
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            features = self.actor.features(batch.observation)
        self.q_w.requires_grad_(False)
        noise, log_prob = self.steer.sample(features, self.generator)
        q = self.q_w(features, noise)[0]
        self.q_w.requires_grad_(True)
        prior = 0.5 * noise.pow(2).sum(dim=1)  # -log N(w; 0, I) + const
        actor_loss = (alpha * log_prob - q + self.config.prior_weight * prior).mean()
        _flow_rl.step(self.actor_optimizer, actor_loss, "steering actor")
        alpha_loss = (-self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
        _flow_rl.step(self.alpha_optimizer, alpha_loss, "alpha")
        return {"losses/actor": actor_loss.item(), "charts/alpha": self.log_alpha.exp().item(),
                "charts/entropy": -log_prob.mean().item(),
                "charts/noise_norm": noise.detach().norm(dim=1).mean().item()}

    # ------------------------------------------------------------------ weights and state

    def policy_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.actor.state_dict().items()}

    def _modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "q_a": self.q_a, "q_w": self.q_w,
                "q_a_target": self.q_a_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flow": self.flow_optimizer, "q": self.q_optimizer,
                "actor": self.actor_optimizer, "alpha": self.alpha_optimizer}

    def state(self) -> TrainingState:
        return _flow_rl.state_of("dsrl", self.update_step, self.config, self.spec,
                                 self._modules(), self._optimizers(), self.generator,
                                 {"log_alpha": self.log_alpha})

    def load_state(self, state: TrainingState) -> None:
        self.update_step = _flow_rl.load_state_into(
            state, self.spec, self._modules(), self._optimizers(), self.generator,
            {"log_alpha": self.log_alpha})


# ---------------------------------------------------------------------------- registration


def config_of(spec: ExperimentSpec) -> DSRLConfig:
    """The config an experiment asks for. Raises ``ValueError`` naming a bad setting."""
    return _flow_rl.config_of(DSRLConfig, spec, "DSRL")


def _check(spec: ExperimentSpec) -> None:
    config_of(spec)
    _flow_rl.check_flow_spec(spec, "dsrl", "steer", "robots then run the steering actor")


def _build(ctx: registry.AlgorithmContext) -> DSRL:
    return DSRL(ctx.policy_spec, config_of(ctx.experiment), dict(ctx.policy_options))


registry.register_algorithm("dsrl", _build, _check, sampler=_flow_rl.sampler)
