"""``cnn_gaussian``: a tanh-squashed Gaussian over camera frames fused with state.

DrQ (Kostrikov et al. 2020) / DrQ-v2 (Yarats et al. 2021) style: each camera's uint8 RGB
frame goes through a small conv stack (shared across cameras), the flattened maps of all
cameras through one linear layer, LayerNorm and tanh (``feature_dim``), then the chosen
state elements are appended.  The learner trains the encoder through the critics' loss
and feeds the actor detached features (``learners.sac``); robots run encoder + head.

Options (from the experiment: ``learners.registry.policy_options``): ``cameras`` (list,
required), ``image_size`` ([h, w], default [64, 64]), ``state_indices`` (list of ints or
absent: the whole state), ``hidden_sizes``, ``channels`` (default 32), ``feature_dim``
(default 50), ``seed``.  Strides 2, 2, 2, 1 keep a 64×64 frame cheap on a robot's CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from learners.core import JSON, Policy, Weights
from learners.policies._networks import TanhGaussianActor
from learners.policies._registry import ActorParts
from learners.policies._spec import PolicySpec, hidden_sizes_option

KIND = "cnn_gaussian"
_STRIDES = (2, 2, 2, 1)


def _int_list(options: Mapping[str, JSON], key: str) -> list[int] | None:
    raw = options.get(key)
    if raw is None:
        return None
    if not isinstance(raw, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw):
        raise ValueError(f"{key} must be a list of ints, got {raw!r:.80}")
    return [int(v) for v in raw]


def _positive(options: Mapping[str, JSON], key: str, default: int) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{key} must be a positive int, got {value!r}")
    return value


def check(options: Mapping[str, JSON]) -> None:
    """Raise ``ValueError`` naming the option ``cnn_gaussian`` cannot be built with."""
    cameras = options.get("cameras")
    if not isinstance(cameras, list | tuple) or not cameras or not all(
            isinstance(c, str) for c in cameras):
        raise ValueError(f"{KIND} needs observation.cameras (a non-empty list of camera "
                         f"names), got {cameras!r}")
    size = _int_list(options, "image_size") or [64, 64]
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be [height, width], each at least 8, got {size}")
    _int_list(options, "state_indices")
    _positive(options, "channels", 32)
    _positive(options, "feature_dim", 50)
    hidden_sizes_option(options)


class PixelEncoder(nn.Module):
    """``(state, camera frames) -> features``: conv maps of every camera, projected to
    ``feature_dim`` (LayerNorm, tanh), with the chosen state elements appended.

    Frames are (B, h, w, 3) uint8; they are scaled to [-0.5, 0.5] here, so what travels
    and is stored stays uint8.
    """

    state_index: torch.Tensor

    def __init__(self, observation_dim: int, cameras: tuple[str, ...],
                 image_size: tuple[int, int], state_indices: tuple[int, ...] | None,
                 channels: int = 32, feature_dim: int = 50) -> None:
        super().__init__()
        self.cameras = cameras
        self.image_size = image_size
        indices = tuple(range(observation_dim)) if state_indices is None else state_indices
        if any(i >= observation_dim for i in indices):
            raise ValueError(f"state_indices {list(indices)} reach past the robot's "
                             f"{observation_dim} state elements")
        self.register_buffer("state_index", torch.tensor(indices, dtype=torch.long),
                             persistent=False)
        layers: list[nn.Module] = []
        n_in = 3
        for stride in _STRIDES:
            layers += [nn.Conv2d(n_in, channels, 3, stride=stride), nn.ReLU(inplace=True)]
            n_in = channels
        self.conv = nn.Sequential(*layers)
        h, w = image_size
        for stride in _STRIDES:  # 3×3 kernels, no padding
            h, w = (h - 3) // stride + 1, (w - 3) // stride + 1
        if min(h, w) < 1:
            raise ValueError(f"image_size {list(image_size)} is too small for {KIND}'s convs")
        flat = channels * h * w
        self.project = nn.Sequential(nn.Linear(flat * len(cameras), feature_dim),
                                     nn.LayerNorm(feature_dim), nn.Tanh())
        self.out_dim = feature_dim + len(indices)

    def forward(self, observation: torch.Tensor, images: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        try:
            frames = [images[c] for c in self.cameras]
        except KeyError as exc:
            raise ValueError(f"{KIND} needs camera {exc.args[0]!r}; got "
                             f"{sorted(images)}") from None
        batch = observation.shape[0]
        x = torch.cat(frames).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)
        maps = self.conv(x).reshape(len(frames), batch, -1).transpose(0, 1).reshape(batch, -1)
        state = observation.index_select(1, self.state_index)
        return torch.cat([self.project(maps), state], dim=1)


class CnnActor(nn.Module):
    """What robots run: the encoder and the Gaussian head over its features."""

    def __init__(self, encoder: PixelEncoder, head: TanhGaussianActor) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head


def _build(spec: PolicySpec, options: Mapping[str, JSON]) -> CnnActor:
    check(options)
    cameras = tuple(str(c) for c in options["cameras"])  # type: ignore[union-attr]
    h, w = _int_list(options, "image_size") or [64, 64]
    indices = _int_list(options, "state_indices")
    encoder = PixelEncoder(spec.observation_dim, cameras, (h, w),
                           None if indices is None else tuple(indices),
                           _positive(options, "channels", 32),
                           _positive(options, "feature_dim", 50))
    head = TanhGaussianActor(encoder.out_dim, spec.action_dim,
                             torch.tensor(spec.action_low, dtype=torch.float32),
                             torch.tensor(spec.action_high, dtype=torch.float32),
                             hidden_sizes_option(options))
    return CnnActor(encoder, head)


def parts(spec: PolicySpec, options: Mapping[str, JSON]) -> ActorParts:
    """The networks an actor-critic learner trains: encoder (shared with its critics),
    head (the actor), and the module robots load (both)."""
    actor = _build(spec, options)
    return ActorParts(encoder=actor.encoder, head=actor.head,
                      feature_dim=actor.encoder.out_dim, policy=actor,
                      cameras=actor.encoder.cameras)


class CnnGaussianPolicy(Policy):
    """Runs a :class:`CnnActor` on numpy observations and uint8 frames, on CPU."""

    def __init__(self, spec: PolicySpec, actor: CnnActor, seed: int | None = None) -> None:
        self.spec = spec
        self.actor = actor.eval()
        self.cameras = actor.encoder.cameras
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        if obs.ndim != 2 or obs.shape[1] != self.spec.observation_dim:
            raise ValueError(f"observation batch has shape {tuple(obs.shape)}; expected "
                             f"(batch, {self.spec.observation_dim})")
        h, w = self.actor.encoder.image_size
        frames: dict[str, torch.Tensor] = {}
        for cam in self.cameras:
            img = None if images is None else images.get(cam)
            if img is None:
                raise ValueError(f"{KIND} needs camera {cam!r} in images; the robot must "
                                 "render it (USER_AGENT_CAMERAS)")
            arr = np.asarray(img)
            if arr.dtype != np.uint8 or arr.shape != (obs.shape[0], h, w, 3):
                raise ValueError(f"camera {cam!r} frames are {arr.dtype} {arr.shape}, expected "
                                 f"uint8 {(obs.shape[0], h, w, 3)}")
            frames[cam] = torch.from_numpy(arr)
        with torch.inference_mode():
            features = self.actor.encoder(obs, frames)
            if deterministic:
                action = self.actor.head.mode(features)
            else:
                action, _ = self.actor.head.sample(features, self._generator)
        return action.numpy().astype(np.float32, copy=False)

    def load_weights(self, weights: Weights) -> None:
        own = self.actor.state_dict()
        if set(weights) != set(own):
            raise ValueError(f"weights do not fit {KIND}: missing {sorted(set(own) - set(weights))}"
                             f", unexpected {sorted(set(weights) - set(own))}")
        for name, value in weights.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(f"weight {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(own[name].shape)}")
        self.actor.load_state_dict({name: torch.as_tensor(np.array(v, copy=True))
                                    for name, v in weights.items()})

    def export_weights(self) -> dict[str, np.ndarray]:
        return {n: t.detach().cpu().numpy().copy() for n, t in self.actor.state_dict().items()}


def build(spec: PolicySpec, options: Mapping[str, JSON]) -> CnnGaussianPolicy:
    """Factory registered as ``cnn_gaussian``."""
    seed = options.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return CnnGaussianPolicy(spec, _build(spec, options), seed)
