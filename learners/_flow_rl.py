"""What the two RL fine-tuners of a flow policy share (``learners.dsrl``, ``learners.fql``).

The flow's behaviour-cloning step, loading a flow fitted elsewhere, the guarded optimiser
step, checkpoint state over named modules and optimisers, config from an experiment, and
the sampler (every step, takeovers and demos routed to the prior half, chunks of the flow's
horizon).  Private to ``learners``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from learners.core import JSON, Batch, NonFiniteUpdate, TrainingState
from learners.policies import FlowActor, PolicySpec, from_safetensors
from learners.replay import NumpyReplayBuffer, TakeoverSampler
from learners.sac import _flatten_optimizer, _jsonable, _load_optimizer
from schemas.experiment import ExperimentSpec

C = TypeVar("C")


def human_rows(batch: Batch) -> torch.Tensor:
    """bool (B,): the rows a human or a demonstration chose; every row when the batch
    has none marked (a flow fitted on a plain demo buffer)."""
    if batch.intervention is not None and bool(batch.intervention.any()):
        return batch.intervention
    return torch.ones(len(batch), dtype=torch.bool)


def fit_flow(actor: FlowActor, optimizer: torch.optim.Optimizer, batch: Batch,
             generator: torch.Generator) -> dict[str, float]:
    """One flow-matching step on the batch's human rows (the normaliser observes them)."""
    rows = human_rows(batch)
    chunk = batch.action_chunk if batch.action_chunk is not None \
        else batch.action[:, None].expand(-1, actor.horizon, -1)
    if actor.normaliser is not None:
        actor.normaliser.observe(batch.observation[rows])
    features = actor.features(batch.observation[rows])
    loss = actor.flow_loss(features, chunk[rows], generator).mean()
    step(optimizer, loss, "flow")
    return {"losses/flow": loss.item()}


def load_init_weights(actor: FlowActor, path: str) -> None:
    """Start ``actor`` from a flow_matching safetensors file (its tensors that ``actor``
    has; the RL parts it lacks keep their initialisation)."""
    weights = from_safetensors(Path(path).read_bytes())
    own = actor.state_dict()
    actor.load_state_dict({**own, **{k: torch.as_tensor(np.array(v, copy=True))
                                     for k, v in weights.items() if k in own}})


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str) -> None:
    """One optimiser step with the gradient clipped to norm 10; nothing moves when the
    loss or the gradient is not finite (:class:`NonFiniteUpdate`)."""
    optimizer.zero_grad()
    if not bool(torch.isfinite(loss.detach())):
        raise NonFiniteUpdate(f"{name} loss is {loss.item()}")
    torch.autograd.backward(loss)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = nn.utils.clip_grad_norm_(params, 10.0)
    if not bool(torch.isfinite(norm)):
        optimizer.zero_grad()
        raise NonFiniteUpdate(f"{name} gradient norm is {norm.item()}")
    optimizer.step()


def state_of(algorithm: str, update_step: int, config: object, spec: PolicySpec,
             modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
             generator: torch.Generator, extra: Mapping[str, torch.Tensor]) -> TrainingState:
    """A checkpoint of named modules, optimisers, the update's RNG and ``extra`` tensors."""
    tensors = {f"{p}.{k}": v.detach().clone() for p, m in modules.items()
               for k, v in m.state_dict().items()}
    tensors.update({k: v.detach().clone() for k, v in extra.items()})
    tensors["generator"] = generator.get_state()
    meta: dict[str, JSON] = {"algorithm": algorithm, "update_step": update_step,
                             "config": _jsonable(dataclasses.asdict(config)),  # type: ignore[call-overload]
                             "spec": _jsonable(dataclasses.asdict(spec))}
    for name, optimizer in optimizers.items():
        meta[f"optimizer/{name}"] = _flatten_optimizer(name, optimizer, tensors)
    return TrainingState(tensors, meta)


def load_state_into(state: TrainingState, spec: PolicySpec, modules: Mapping[str, nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer],
                    generator: torch.Generator, extra: Mapping[str, torch.Tensor]) -> int:
    """Restore what :func:`state_of` saved; returns the update step.  Raises
    ``ValueError`` for a checkpoint of another policy spec or without an int step."""
    if state.meta.get("spec") != _jsonable(dataclasses.asdict(spec)):
        raise ValueError(f"checkpoint is for spec {state.meta.get('spec')}, not {spec}")
    t = state.tensors
    for prefix, module in modules.items():
        module.load_state_dict({k: t[f"{prefix}.{k}"] for k in module.state_dict()})
    with torch.no_grad():
        for name, tensor in extra.items():
            tensor.copy_(t[name])
    generator.set_state(t["generator"])
    for name, optimizer in optimizers.items():
        _load_optimizer(optimizer, state.meta[f"optimizer/{name}"], t)
    update_step = state.meta["update_step"]
    if not isinstance(update_step, int):
        raise ValueError(f"checkpoint update_step is {update_step!r}, not an int")
    return update_step


def config_of(cls: type[C], spec: ExperimentSpec, method: str) -> C:
    """``cls`` (a frozen dataclass) from ``algorithm.hyperparameters``, ``policy.hidden``
    and ``algorithm.seed``.  Raises ``ValueError`` naming an unknown setting."""
    overrides: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in spec.algorithm.hyperparameters.items()
    }
    overrides.setdefault("hidden_sizes", tuple(spec.policy.hidden))
    overrides.setdefault("seed", spec.algorithm.seed)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"algorithm.hyperparameters: {', '.join(unknown)} not {method} "
                         f"settings (known: {', '.join(sorted(known))})")
    return cls(**overrides)


def check_flow_spec(spec: ExperimentSpec, name: str, option: str, why: str) -> None:
    """Refuse an experiment whose policy is not a flow with ``option: true``."""
    if spec.policy.kind != "flow_matching":
        raise ValueError(f"algorithm.name: {name} fine-tunes policy.kind flow_matching, not "
                         f"{spec.policy.kind!r}")
    if spec.policy.options.get(option) is not True:
        raise ValueError(f"policy.options.{option}: {name} needs true ({why})")


def sampler(online: NumpyReplayBuffer, prior: NumpyReplayBuffer | None,
            spec: ExperimentSpec) -> TakeoverSampler:
    """Every step, with takeovers and demos routed to the prior half (HIL-SERL), chunks
    of the flow's horizon for its pre-training."""
    horizon = spec.policy.options.get("horizon", 4)
    return TakeoverSampler(online, prior, mode="routed", prior_fraction=spec.buffer.prior_ratio,
                           horizon=horizon if isinstance(horizon, int) and horizon > 0 else 4,
                           seed=spec.algorithm.seed)
