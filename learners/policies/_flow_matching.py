"""``flow_matching``: a generative policy of action chunks, by conditional flow matching.

The policy maps noise to a chunk of ``horizon`` actions conditioned on the observation:
a velocity network ``v(x, t, features)`` is integrated from ``x_0 ~ N(0, I)`` at t = 0 to
the chunk at t = 1 with ``steps`` Euler steps (rectified flow: Lipman et al. 2023, "Flow
Matching for Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast"; π0's action
expert uses the same objective, Black et al. 2024).  Chunks live in the normalised box
[-1, 1]^(H x A) and are scaled to the robot's action bounds; a Gaussian policy cannot
represent two distinct good actions for one state, a flow can (tested on a bimodal toy).

Conditioning: the flat state (``state_indices`` picks elements), or camera frames through
``cnn_gaussian``'s :class:`PixelEncoder` fused with the state (``cameras``).

Steering (DSRL, ``learners.dsrl``): with ``steer: true`` the policy also holds a small
Gaussian actor over the *noise*, trained by RL, and draws ``x_0`` from it instead of
N(0, I); the flow network itself is left as the imitation learner made it.

One-step policy (FQL, ``learners.fql``): with ``one_step: true`` the policy also holds
``mu(features, z)``, a network mapping the same noise ``z ~ N(0, I)`` to a chunk in one
pass (``tanh``, then scaled to the bounds), distilled from the flow and pushed up the
critic by RL; robots run it instead of integrating the flow (zero noise when
deterministic).  Its widths are ``one_step_hidden_sizes`` (default ``hidden_sizes``).

Options: ``horizon`` (default 4), ``steps`` (integration steps, default 10),
``hidden_sizes``, ``execute`` (``ensemble`` | ``chunk``), ``execute_steps``,
``ensemble_decay``, ``steer``, ``one_step``, ``one_step_hidden_sizes``, ``noise_bound``
(steered noise lies in ±this, default 2),
``steer_std`` (the new steering actor's pre-squash spread around zero noise, default 0.3),
``normalise`` (observation normalisation measured by the learner and shipped in the
weights, ``learners.policies._normalise``; default true),
``cameras``/``image_size``/``state_indices``/``channels``/``feature_dim``, ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from learners.core import JSON, Policy, Weights
from learners.policies._chunking import ChunkExecution
from learners.policies._networks import LOG_STD_MAX, LOG_STD_MIN, TanhGaussianActor, mlp
from learners.policies._normalise import ObservationNormaliser
from learners.policies._registry import PolicySpec
from learners.policies._spec import hidden_sizes_option

KIND = "flow_matching"
_TIME_FEATURES = 16


def _int(options: Mapping[str, JSON], key: str, default: int, low: int = 1) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
    return value


def _float(options: Mapping[str, JSON], key: str, default: float) -> float:
    value = options.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    return float(value)


def execution_of(options: Mapping[str, JSON]) -> ChunkExecution:
    """How robots execute the chunks (``learners.policies._chunking``).

    A policy fine-tuned by RL — steered (``steer: true``, DSRL) or one-step
    (``one_step: true``, FQL) — re-plans every step (``execute: chunk``,
    ``execute_steps: 1``, its default) and refuses anything else: the critic scores the
    first action of each chunk, so that must be the action the robot runs (averaged
    chunks or open-loop tails would run actions no critic judged).
    """
    rl = next((k for k in ("steer", "one_step") if options.get(k)), None)
    mode = options.get("execute", "chunk" if rl else "ensemble")
    if mode not in ("ensemble", "chunk"):
        raise ValueError(f"execute must be 'ensemble' or 'chunk', got {mode!r}")
    steps = _int(options, "execute_steps", 1 if rl else 0, low=0)
    if rl and (mode != "chunk" or steps != 1):
        raise ValueError(f"{rl}: a flow policy fine-tuned by RL runs the first action of a "
                         "new chunk every step (execute: chunk, execute_steps: 1, the "
                         f"default with {rl}), not execute {mode!r} with execute_steps "
                         f"{steps}: the RL critic judges that action only")
    return ChunkExecution(horizon=_int(options, "horizon", 4), mode=str(mode),
                          execute_steps=steps, decay=_float(options, "ensemble_decay", 0.1))


def check(options: Mapping[str, JSON]) -> None:
    """Refuse options the kind cannot build from (one line naming the option)."""
    hidden_sizes_option(options)
    _int(options, "steps", 10)
    execution_of(options)
    _float(options, "noise_bound", 2.0)
    _float(options, "steer_std", 0.3)
    for flag in ("steer", "one_step", "normalise"):
        if not isinstance(options.get(flag, flag == "normalise"), bool):
            raise ValueError(f"{flag} must be true or false, got {options.get(flag)!r}")
    if options.get("steer") and options.get("one_step"):
        raise ValueError("steer and one_step: a flow policy is fine-tuned by DSRL (steer) "
                         "or by FQL (one_step), not both")
    if options.get("one_step_hidden_sizes") is not None:
        hidden_sizes_option({"hidden_sizes": options["one_step_hidden_sizes"]})
    if options.get("cameras"):
        from learners.policies import _cnn_gaussian

        _cnn_gaussian.check(options)


class StateFeatures(nn.Module):
    """The chosen state elements (all by default) as the features."""

    index: torch.Tensor

    def __init__(self, observation_dim: int, state_indices: list[int] | None) -> None:
        super().__init__()
        indices = list(range(observation_dim)) if state_indices is None else state_indices
        self.register_buffer("index", torch.tensor(indices, dtype=torch.long), persistent=False)
        self.out_dim = len(indices)

    def forward(self, observation: torch.Tensor, images: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        return observation.index_select(1, self.index)


def time_features(t: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features of the flow time t in [0, 1], shape (B, 16)."""
    freqs = torch.exp(torch.linspace(0.0, math.log(100.0), _TIME_FEATURES // 2))
    angles = t[:, None] * freqs[None, :] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def start_at_the_flow_mode(steer: TanhGaussianActor, std: float) -> None:
    """Make a new steering actor answer zero noise (its mode) with pre-squash spread
    ``std`` for every state: the steered policy then starts as the imitation policy's own
    deterministic behaviour (what it was evaluated at), and RL moves it from there
    (DSRL starts from the base policy; an untrained actor's random noise does not)."""
    with torch.no_grad():
        steer.mean.weight.zero_()
        steer.mean.bias.zero_()
        steer.log_std.weight.zero_()
        # distribution(): log_std = MIN + (MAX - MIN) * (tanh(b) + 1) / 2 = log(std).
        scaled = 2.0 * (math.log(max(std, 1e-6)) - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN)
        steer.log_std.bias.fill_(math.atanh(min(max(scaled - 1.0, -0.999), 0.999)))


class FlowActor(nn.Module):
    """Encoder, velocity network and (optionally) the steering actor: what robots load."""

    action_scale: torch.Tensor
    action_bias: torch.Tensor

    def __init__(self, spec: PolicySpec, options: Mapping[str, JSON]) -> None:
        super().__init__()
        check(options)
        self.horizon = _int(options, "horizon", 4)
        self.steps = _int(options, "steps", 10)
        self.action_dim = spec.action_dim
        self.chunk_dim = self.horizon * spec.action_dim
        self.noise_bound = _float(options, "noise_bound", 2.0)
        hidden = hidden_sizes_option(options)
        indices = options.get("state_indices")
        self.normaliser: ObservationNormaliser | None = (
            ObservationNormaliser(spec.observation_dim) if options.get("normalise", True)
            else None)
        self.encoder: nn.Module
        if options.get("cameras"):
            from learners.policies import _cnn_gaussian

            actor = _cnn_gaussian._build(spec, options)
            self.encoder = actor.encoder
            feature_dim = actor.encoder.out_dim
            self.cameras: tuple[str, ...] = actor.encoder.cameras
        else:
            picked = None if not isinstance(indices, list | tuple) else [
                int(i) for i in indices if isinstance(i, int)]
            self.encoder = StateFeatures(spec.observation_dim, picked)
            feature_dim = self.encoder.out_dim
            self.cameras = ()
        self.feature_dim = feature_dim
        self.velocity = mlp([feature_dim + self.chunk_dim + _TIME_FEATURES, *hidden,
                             self.chunk_dim])
        self.steer: TanhGaussianActor | None = None
        if options.get("steer"):
            bound = torch.full((self.chunk_dim,), self.noise_bound)
            self.steer = TanhGaussianActor(feature_dim, self.chunk_dim, -bound, bound,
                                           hidden)
            start_at_the_flow_mode(self.steer, _float(options, "steer_std", 0.3))
        self.one_step: nn.Module | None = None
        if options.get("one_step"):
            widths = hidden_sizes_option({"hidden_sizes": options.get(
                "one_step_hidden_sizes", list(hidden))})
            self.one_step = mlp([feature_dim + self.chunk_dim, *widths, self.chunk_dim])
        low = torch.tensor(spec.action_low, dtype=torch.float32)
        high = torch.tensor(spec.action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0, persistent=False)
        self.register_buffer("action_bias", (high + low) / 2.0, persistent=False)

    def features(self, observation: torch.Tensor,
                 images: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.normaliser is not None:
            observation = self.normaliser(observation)
        out: torch.Tensor = self.encoder(observation, images or {})
        return out

    def v(self, x: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.velocity(torch.cat([features, x, time_features(t)], dim=1))
        return out

    def normalise(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, H, A) robot-unit actions -> (B, H*A) in [-1, 1]."""
        return ((chunk - self.action_bias) / self.action_scale).reshape(len(chunk), -1)

    def integrate(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Integrate the flow from ``noise`` (B, H*A): the chunk (B, H*A) in the
        normalised box [-1, 1], differentiable in ``noise`` and the networks."""
        x = noise
        dt = 1.0 / self.steps
        for k in range(self.steps):
            t = torch.full((len(x),), k * dt)
            x = x + dt * self.v(x, t, features)
        return x.clamp(-1.0, 1.0)

    def one_step_normalised(self, features: torch.Tensor, noise: torch.Tensor
                            ) -> torch.Tensor:
        """The one-step policy's chunk for ``noise`` (B, H*A), in [-1, 1] (B, H*A).
        Raises ``RuntimeError`` when the actor has none (``one_step`` not set)."""
        if self.one_step is None:
            raise RuntimeError("this flow policy has no one-step policy (one_step: false)")
        return torch.tanh(self.one_step(torch.cat([features, noise], dim=1)))

    def to_robot(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, H*A) in [-1, 1] -> (B, H, A) robot-unit actions."""
        return self.action_bias + self.action_scale * chunk.reshape(
            len(chunk), self.horizon, self.action_dim)

    def decode(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The chunk (B, H, A) in robot units for ``noise`` (B, H*A): the one-step
        policy's when the actor has one, else the flow integrated from ``noise``."""
        if self.one_step is not None:
            return self.to_robot(self.one_step_normalised(features, noise))
        return self.to_robot(self.integrate(features, noise))

    def flow_loss(self, features: torch.Tensor, chunk: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Conditional flow matching on straight paths: per-row squared error of the
        velocity, (B,)."""
        x1 = self.normalise(chunk)
        x0 = torch.randn(x1.shape, generator=generator)
        t = torch.rand((len(x1),), generator=generator)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return (self.v(xt, t, features) - (x1 - x0)).pow(2).mean(dim=1)

    def noise(self, features: torch.Tensor, deterministic: bool,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """The starting noise: the steering actor's (DSRL) or N(0, I) (zeros when
        ``deterministic``)."""
        if self.steer is not None:
            if deterministic:
                return self.steer.mode(features)
            return self.steer.sample(features, generator)[0]
        if deterministic:
            return torch.zeros(len(features), self.chunk_dim)
        return torch.randn((len(features), self.chunk_dim), generator=generator)


class FlowMatchingPolicy(Policy):
    """Runs a :class:`FlowActor` on numpy observations, on CPU, without grads.

    :meth:`act` returns each chunk's first action (a receding horizon of one);
    :meth:`act_chunk` the whole chunk, for :class:`~learners.policies._chunking.
    ChunkExecutor` on the robot (:attr:`execution` says how).
    """

    def __init__(self, spec: PolicySpec, actor: FlowActor, execution: ChunkExecution,
                 seed: int | None = None) -> None:
        self.spec = spec
        self.actor = actor.eval()
        self.cameras = actor.cameras
        self.execution = execution
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def act_chunk(self, observation: np.ndarray, deterministic: bool = False,
                  images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Chunks (batch, horizon, action_dim) for a batch of observations."""
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        if obs.ndim != 2 or obs.shape[1] != self.spec.observation_dim:
            raise ValueError(f"observation batch has shape {tuple(obs.shape)}; expected "
                             f"(batch, {self.spec.observation_dim})")
        frames = {c: torch.from_numpy(np.asarray(images[c])) for c in self.cameras
                  if images is not None and c in images}
        if len(frames) != len(self.cameras):
            raise ValueError(f"{KIND} needs cameras {list(self.cameras)} in images; the "
                             "robot must render them (USER_AGENT_CAMERAS)")
        with torch.inference_mode():
            features = self.actor.features(obs, frames)
            chunk = self.actor.decode(features, self.actor.noise(features, deterministic,
                                                                 self._generator))
        return chunk.numpy().astype(np.float32, copy=False)

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        return self.act_chunk(observation, deterministic, images)[:, 0]

    def load_weights(self, weights: Weights) -> None:
        own = self.actor.state_dict()
        if set(weights) != set(own):
            raise ValueError(f"weights do not fit {KIND}: missing "
                             f"{sorted(set(own) - set(weights))}, unexpected "
                             f"{sorted(set(weights) - set(own))}")
        for name, value in weights.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(f"weight {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(own[name].shape)}")
        self.actor.load_state_dict({n: torch.as_tensor(np.array(v, np.float32, copy=True))
                                    for n, v in weights.items()})

    def export_weights(self) -> dict[str, np.ndarray]:
        return {n: t.detach().cpu().numpy().copy() for n, t in self.actor.state_dict().items()}


def build(spec: PolicySpec, options: Mapping[str, JSON]) -> FlowMatchingPolicy:
    """Factory registered as ``flow_matching`` (options: module docstring)."""
    seed = options.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return FlowMatchingPolicy(spec, FlowActor(spec, options), execution_of(options), seed)
