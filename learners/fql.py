"""RL fine-tuning of a flow policy: FQL (``fql``), a one-step policy distilled from the flow.

Method: Flow Q-Learning, Park, Li & Levine 2025, "Flow Q-Learning" (arXiv:2502.02538).
The flow network keeps doing what imitation does (behaviour cloning by flow matching on
the human rows: demos and takeovers); RL never back-propagates through its integration
steps.  Instead a *one-step policy* ``mu(s, z)`` maps the same noise ``z ~ N(0, I)`` to an
action chunk in one network pass, trained to

    maximise  Q(s, mu(s, z)[0]) / mean|Q|   while   alpha * |mu(s, z) - flow(s, z)|^2

stays small (the distillation term: mu stays a map of the flow's own noise-to-chunk,
so it keeps the demonstrated behaviour where the critic has nothing to say).  The critics
learn by TD from executed actions with next actions from ``mu``.  The policy robots run
is ``mu`` (``policy.options.one_step: true``): one pass instead of ``steps`` integration
steps, zero noise when deterministic.

Why FQL here and not only DSRL (``learners.dsrl``, kept): DSRL chooses among the flow's
own samples, and on the bench's 10-demo push flow (40 %) even a perfect 4-step critic
choosing the best of 32 of them reaches only 75 % (the session-4 oracle), while the learnt
steering stayed at 30–40 %.  FQL's one-step policy may leave the flow's support where the
critic says it pays, held near it by ``alpha`` — the recipe that made RLPD learn
pick_place (a BC term beside the Q term; BENCHMARKS.md "imitation", session 5).  It is
also the cheapest at acting time, and its critic, like DSRL's, learns from executed
actions, so demos, takeovers and any earlier policy's steps feed it unchanged.

Choices (measured on push, BENCHMARKS.md "imitation", session 6):
* Q loss normalised by ``mean|Q|`` (the paper's ``normalize_q_loss``), so ``alpha`` does
  not depend on the reward's scale; the distillation term is the chunk's *summed* squared
  error in the normalised box [-1, 1].  ``alpha`` 0.3 (the default) lifted the 10-demo
  push flow from 36-47 % to 85-90 % (three seeds, 100 held-out episodes each); 1 lifted
  it less (75-90 %, 20 episodes); 10 held it at its start.
* Chunks: the critic scores the first action of ``mu``'s chunk and robots re-plan every
  step (``execute: chunk``, ``execute_steps: 1``, enforced by
  ``_flow_matching.execution_of``) — open-loop 4-step chunks start at 15 % where receding
  horizon 1 starts at 40 % on that flow.
* Phases by update count, so one experiment can import demos and fine-tune:
  ``pretrain_updates`` of flow matching on the human rows (skip with 0 and
  ``init_weights`` for a flow fitted elsewhere), then ``distill_updates`` fitting ``mu`` to
  the flow alone (the fine-tuning starts from the BC policy's behaviour), then
  ``critic_warmup_updates`` of the critics alone, then critics and ``mu`` together.  The
  flow and its observation normaliser are frozen after pre-training.

Read top to bottom: config, the algorithm, registration.
"""

from __future__ import annotations

import copy
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
class FQLConfig:
    """Hyper-parameters of FQL (module docstring; defaults as measured on push)."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the flow's hidden layers (``policy.hidden``); the one-step policy's are
    the policy option ``one_step_hidden_sizes`` (default the same), which robots read."""
    critic_hidden_sizes: tuple[int, ...] = (256, 256, 256)
    """widths of the critics' hidden layers."""
    alpha: float = 0.3
    """weight of the distillation term (summed squared error over the chunk in [-1, 1])
    against the normalised Q term (push: 0.3 lifted 36-47 % to 85-90 %, 1 to 75-90 %, 10
    held the policy at its start)."""
    normalize_q_loss: bool = True
    """divide the actor's Q term by the batch's mean |Q| (scale-free ``alpha``)."""
    gamma: float = 0.99
    """discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the critics' targets."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the one-step policy."""
    flow_lr: float = 3e-4
    """Adam learning rate of the flow while it is pre-trained."""
    num_critics: int = 2
    """critics in the ensemble (their minimum forms targets, their mean drives mu)."""
    critic_layer_norm: bool = True
    """LayerNorm in the critics (RLPD's stabiliser)."""
    pretrain_updates: int = 2000
    """flow-matching updates on demonstration/takeover rows before anything else."""
    distill_updates: int = 3000
    """then updates fitting the one-step policy to the flow alone."""
    critic_warmup_updates: int = 3000
    """then updates of the critics alone before the one-step policy follows them."""
    init_weights: str = ""
    """a flow_matching safetensors file to start the flow from (empty: none)."""
    seed: int = 0
    """seeds initialisation and the update's noise."""

    def __post_init__(self) -> None:
        for name in ("alpha", "tau", "pretrain_updates", "distill_updates",
                     "critic_warmup_updates"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma!r}")
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics!r}")


class FQL(Algorithm):
    """Fine-tunes a :class:`FlowActor` through its one-step policy (module docstring)."""

    def __init__(self, spec: PolicySpec, config: FQLConfig, options: dict[str, JSON]
                 ) -> None:
        self.spec, self.config = spec, config
        options = {**options, "hidden_sizes": list(config.hidden_sizes), "one_step": True}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.actor = FlowActor(spec, options)
            self.critics = CriticEnsemble(self.actor.feature_dim, spec.action_dim,
                                          config.critic_hidden_sizes, config.num_critics,
                                          config.critic_layer_norm)
        if config.init_weights:
            _flow_rl.load_init_weights(self.actor, config.init_weights)
        assert self.actor.one_step is not None
        self.mu: nn.Module = self.actor.one_step
        self.target = copy.deepcopy(self.critics).requires_grad_(False)
        flow_params = [*self.actor.encoder.parameters(), *self.actor.velocity.parameters()]
        self.flow_optimizer = torch.optim.Adam(flow_params, lr=config.flow_lr)
        self.critic_optimizer = torch.optim.Adam(self.critics.parameters(), lr=config.critic_lr)
        self.actor_optimizer = torch.optim.Adam(self.mu.parameters(), lr=config.actor_lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.update_step = 0
        # Pre-training, distillation and critic warm-up run on the demos at once, not at
        # the UTD ratio (9,000 updates at utd 0.8 would be 11,250 env steps of robots
        # running an unfitted policy; at once they take the learner ~1.5 min on a CPU).
        self.offline_updates = (config.pretrain_updates + config.distill_updates
                                + config.critic_warmup_updates)

    # ------------------------------------------------------------------------ update

    def phase(self) -> str:
        """``pretrain`` | ``distill`` | ``critic_warmup`` | ``rl``: what the next update does."""
        c, n = self.config, self.update_step
        for name, length in (("pretrain", c.pretrain_updates), ("distill", c.distill_updates),
                             ("critic_warmup", c.critic_warmup_updates)):
            if n < length:
                return name
            n -= length
        return "rl"

    def ready_to_act(self) -> bool:
        """The one-step policy is worth running once it is distilled from the fitted flow
        (critic warm-up onwards); before that the learner publishes nothing."""
        return self.phase() in ("critic_warmup", "rl")

    def update(self, batch: Batch) -> dict[str, float]:
        phase = self.phase()
        if phase == "pretrain":
            stats = _flow_rl.fit_flow(self.actor, self.flow_optimizer, batch, self.generator)
        elif phase == "distill":
            stats = self.update_one_step(batch, q_weight=0.0)
        elif phase == "critic_warmup":
            stats = self.update_critics(batch)
        else:
            stats = self.update_critics(batch) | self.update_one_step(batch, q_weight=1.0)
        self.update_step += 1
        stats["charts/update_step"] = float(self.update_step)
        return stats

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.actor.chunk_dim), generator=self.generator)

    def _first(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, H*A) normalised chunk -> its first action (B, A) in robot units."""
        return self.actor.to_robot(chunk)[:, 0]

    def update_critics(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():
            features = self.actor.features(batch.observation)
            next_features = self.actor.features(batch.next_observation)
            next_action = self._first(self.actor.one_step_normalised(
                next_features, self._noise(len(batch))))
            target = self.target(next_features, next_action).min(dim=0).values
            y = batch.reward + (1.0 - batch.terminated) * cfg.gamma * target
        q = self.critics(features, batch.action)
        loss = F.mse_loss(q, y.expand_as(q))
        _flow_rl.step(self.critic_optimizer, loss, "critic")
        with torch.no_grad():
            for p, tp in zip(self.critics.parameters(), self.target.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        return {"losses/critic": loss.item(), "values/q": q.mean().item()}

    def update_one_step(self, batch: Batch, q_weight: float) -> dict[str, float]:
        """The one-step policy's step: ``alpha * distillation`` alone while distilling
        (``q_weight`` 0), with ``-Q / mean|Q|`` once RL runs."""
        with torch.no_grad():
            features = self.actor.features(batch.observation)
            noise = self._noise(len(batch))
            flow_chunk = self.actor.integrate(features, noise)
        chunk = self.actor.one_step_normalised(features, noise)
        distill = (chunk - flow_chunk).pow(2).sum(dim=1).mean()
        stats = {"losses/distill": distill.item()}
        if q_weight == 0.0:
            _flow_rl.step(self.actor_optimizer, distill, "one-step policy")
            return stats
        self.critics.requires_grad_(False)
        q = self.critics(features, self._first(chunk)).mean(dim=0)
        self.critics.requires_grad_(True)
        q_loss = -q.mean()
        if self.config.normalize_q_loss:
            q_loss = q_loss / q.abs().mean().detach().clamp_min(1e-6)
        loss = q_weight * q_loss + self.config.alpha * distill
        _flow_rl.step(self.actor_optimizer, loss, "one-step policy")
        return stats | {"losses/actor": loss.item(), "values/q_policy": q.mean().item()}

    # ------------------------------------------------------------------ weights and state

    def policy_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.actor.state_dict().items()}

    def _modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critics": self.critics, "target": self.target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flow": self.flow_optimizer, "critic": self.critic_optimizer,
                "actor": self.actor_optimizer}

    def state(self) -> TrainingState:
        return _flow_rl.state_of("fql", self.update_step, self.config, self.spec,
                                 self._modules(), self._optimizers(), self.generator, {})

    def load_state(self, state: TrainingState) -> None:
        self.update_step = _flow_rl.load_state_into(
            state, self.spec, self._modules(), self._optimizers(), self.generator, {})


# ---------------------------------------------------------------------------- registration


def config_of(spec: ExperimentSpec) -> FQLConfig:
    """The config an experiment asks for. Raises ``ValueError`` naming a bad setting."""
    return _flow_rl.config_of(FQLConfig, spec, "FQL")


def _check(spec: ExperimentSpec) -> None:
    config_of(spec)
    _flow_rl.check_flow_spec(spec, "fql", "one_step", "robots then run the one-step policy")


def _build(ctx: registry.AlgorithmContext) -> FQL:
    return FQL(ctx.policy_spec, config_of(ctx.experiment), dict(ctx.policy_options))


registry.register_algorithm("fql", _build, _check, sampler=_flow_rl.sampler)
