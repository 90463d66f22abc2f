"""``vla_transformer``: a language-conditioned transformer policy (VLA-style).

Instruction text + camera images + proprioception -> a chunk of ``chunk`` actions.

* The instruction is embedded by a frozen pretrained sentence encoder shipped in a wheel
  (:mod:`learners.policies._text`, all-MiniLM-L6-v2, 384-d) and projected to one token.
* Each camera image (uint8 HxWx3, resized to ``image_size``) is cut into
  ``patch``x``patch`` patches by a strided convolution (ViT-style), one token per patch.
* The proprioceptive state is one token; ``chunk`` learned action queries follow.
* A pre-norm transformer encoder runs over all tokens; each action query's output is
  mapped to one action, squashed by ``tanh`` into the robot's bounds.

Multi-task, multi-robot: one network for several tasks and robot types; tasks are told
apart only by the instruction (each step is learnt with the instruction its robot ran,
recorded with the step).  Observations shorter than ``observation_dim`` are zero-padded,
and a robot with fewer action dimensions reads the first ones of each action (the spec is
the widest robot's).  Shared across robot types (``policy.shared_across_types``), it is
trained and served like any shared kind (:mod:`learners.policies.shared`: observation
padded + the type's one-hot), and, registered ``pads_actions``, also across types whose
action sizes differ: one replica answers every type's requests in one forward pass.
Trained by regression on demonstrated chunks (ACT-style, L1 or MSE);
HG-DAgger-style fine-tuning feeds it the same loss on corrected actions.

Default size (``d_model`` 512, 7 layers, FF 2048) is about 22 M parameters, without the
frozen encoder.  Options: ``d_model``, ``layers``, ``heads``, ``ff``, ``chunk``,
``cameras``, ``image_size``, ``patch``, ``instruction`` (the default for :meth:`act`),
``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from learners.core import JSON, Batch, Policy, Weights
from learners.policies import _text
from learners.policies._registry import PolicySpec

KIND = "vla_transformer"


def _int(options: Mapping[str, JSON], name: str, default: int, low: int = 1) -> int:
    value = options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{KIND} option {name} must be an int >= {low}, got {value!r}")
    return value


class VlaNet(nn.Module):
    """The network: tokens in, one action per query token out (in ``[-1, 1]``)."""

    def __init__(self, observation_dim: int, action_dim: int, *, d_model: int, layers: int,
                 heads: int, ff: int, chunk: int, cameras: Sequence[str], image_size: int,
                 patch: int) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.observation_dim, self.action_dim, self.chunk = observation_dim, action_dim, chunk
        self.cameras, self.image_size = tuple(cameras), image_size
        n_patches = (image_size // patch) ** 2 * len(self.cameras)
        self.instruction = nn.Linear(_text.DIM, d_model)
        self.proprio = nn.Sequential(nn.Linear(observation_dim, d_model), nn.GELU(),
                                     nn.Linear(d_model, d_model))
        self.patches = nn.Conv2d(3, d_model, kernel_size=patch, stride=patch)
        self.queries = nn.Parameter(torch.randn(chunk, d_model) * 0.02)
        self.position = nn.Parameter(torch.randn(2 + n_patches + chunk, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, action_dim)

    def forward(self, instruction: torch.Tensor, proprio: torch.Tensor,
                images: torch.Tensor | None) -> torch.Tensor:
        """``instruction`` (B, 384), ``proprio`` (B, obs), ``images`` (B, cams, 3, S, S)
        float in [0, 1] or None -> actions (B, chunk, action_dim) in [-1, 1]."""
        batch = proprio.shape[0]
        tokens = [self.instruction(instruction)[:, None], self.proprio(proprio)[:, None]]
        if self.cameras:
            if images is None:
                images = proprio.new_zeros(batch, len(self.cameras), 3, self.image_size,
                                           self.image_size)
            flat = self.patches(images.flatten(0, 1) * 2.0 - 1.0)  # (B*cams, d, h, w)
            tokens.append(flat.flatten(2).transpose(1, 2).reshape(batch, -1, flat.shape[1]))
        tokens.append(self.queries.expand(batch, -1, -1))
        x = torch.cat(tokens, 1) + self.position
        x = self.norm(self.encoder(x))
        return torch.tanh(self.head(x[:, -self.chunk:]))


class VlaTransformerPolicy(Policy):
    """Runs and trains :class:`VlaNet`; actions scaled into the spec's bounds."""

    def __init__(self, spec: PolicySpec, net: VlaNet, instruction: str = "",
                 device: str = "cpu") -> None:
        self.spec = spec
        self.net = net.to(device)
        self.device = torch.device(device)
        self.default_instruction = instruction
        self.cameras = tuple(net.cameras)
        self._low = torch.tensor(spec.action_low, dtype=torch.float32, device=self.device)
        self._high = torch.tensor(spec.action_high, dtype=torch.float32, device=self.device)

    @property
    def chunk(self) -> int:
        return self.net.chunk

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def to(self, device: str) -> VlaTransformerPolicy:
        self.device = torch.device(device)
        self.net.to(self.device)
        self._low, self._high = self._low.to(self.device), self._high.to(self.device)
        return self

    # -- inputs ---------------------------------------------------------------------------

    def _inputs(self, observation: npt.ArrayLike, instructions: Sequence[str],
                images: Mapping[str, npt.NDArray[np.uint8]] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        obs = np.asarray(observation, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] > self.spec.observation_dim:
            raise ValueError(f"observation batch has shape {obs.shape}; expected "
                             f"(batch, <= {self.spec.observation_dim})")
        if len(instructions) != obs.shape[0]:
            raise ValueError(f"{len(instructions)} instructions for {obs.shape[0]} observations")
        padded = np.zeros((obs.shape[0], self.spec.observation_dim), np.float32)
        padded[:, :obs.shape[1]] = obs
        text = torch.from_numpy(_text.embed(tuple(instructions))).to(self.device)
        proprio = torch.from_numpy(padded).to(self.device)
        pixels = None
        if self.net.cameras and images:
            size = self.net.image_size
            per_camera = []
            for name in self.net.cameras:
                if name not in images:
                    per_camera.append(torch.zeros(obs.shape[0], 3, size, size,
                                                  device=self.device))
                    continue
                img = torch.as_tensor(np.asarray(images[name]), device=self.device)
                img = img.permute(0, 3, 1, 2).float() / 255.0
                if img.shape[-2:] != (size, size):
                    img = F.interpolate(img, size=(size, size), mode="bilinear",
                                        align_corners=False)
                per_camera.append(img)
            pixels = torch.stack(per_camera, 1)
        return text, proprio, pixels

    def _scale(self, unit: torch.Tensor) -> torch.Tensor:
        scaled: torch.Tensor = self._low + (unit + 1.0) * 0.5 * (self._high - self._low)
        return scaled

    def _unit(self, action: torch.Tensor) -> torch.Tensor:
        unit: torch.Tensor = (action - self._low) / (self._high - self._low) * 2.0 - 1.0
        return unit

    # -- inference ------------------------------------------------------------------------

    def act_chunk(self, observation: npt.ArrayLike, instructions: Sequence[str],
                  images: Mapping[str, npt.NDArray[np.uint8]] | None = None
                  ) -> npt.NDArray[np.float32]:
        """Action chunks ``(batch, chunk, action_dim)`` for a batch of requests (an empty
        instruction stands for the default one)."""
        instructions = [text or self.default_instruction for text in instructions]
        self.net.eval()
        with torch.inference_mode():
            out = self._scale(self.net(*self._inputs(observation, instructions, images)))
        return out.float().cpu().numpy()

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The first action of each chunk, for the default instruction."""
        obs = np.asarray(observation, dtype=np.float32)
        return self.act_chunk(obs, [self.default_instruction] * obs.shape[0], images)[:, 0]

    # -- training -------------------------------------------------------------------------

    def loss(self, observation: npt.ArrayLike, instructions: Sequence[str],
             actions: npt.ArrayLike, mask: npt.ArrayLike | None = None,
             images: Mapping[str, npt.NDArray[np.uint8]] | None = None) -> torch.Tensor:
        """L1 between predicted and target chunks, in unit action space.

        ``actions`` (B, chunk, <= action_dim): a robot with fewer action dimensions
        supervises only its own; ``mask`` (B, chunk) marks steps past an episode's end.
        """
        self.net.train()
        target = torch.as_tensor(np.asarray(actions, np.float32), device=self.device)
        pred = self.net(*self._inputs(observation, instructions, images))
        dims = target.shape[-1]
        unit = self._unit(F.pad(target, (0, self.spec.action_dim - dims)))[..., :dims]
        err = (pred[..., :dims] - unit).abs().mean(-1)
        if mask is None:
            return err.mean()
        m = torch.as_tensor(np.asarray(mask, np.float32), device=self.device)
        return (err * m).sum() / m.sum().clamp_min(1.0)

    def batch_loss(self, batch: Batch, instruction: str | None = None) -> torch.Tensor:
        """:meth:`loss` on a learner :class:`~learners.core.Batch` (BC / HG-DAgger): the
        target is ``batch.action_chunk`` (or ``action`` repeated), the instruction each
        row's robot ran (``batch.instruction``; where that is empty or not recorded,
        ``instruction`` or the ``instruction`` option).  HG-DAgger gets only takeover
        rows from its sampler, so the same loss learns from the operator's corrections."""
        chunk = batch.action_chunk
        if chunk is None:
            chunk = batch.action[:, None].expand(-1, self.chunk, -1)
        chunk = chunk[:, :self.chunk]
        if chunk.shape[1] < self.chunk:  # repeat the last action past a short chunk
            pad = chunk[:, -1:].expand(-1, self.chunk - chunk.shape[1], -1)
            chunk = torch.cat([chunk, pad], 1)
        text = instruction if instruction is not None else self.default_instruction
        texts = [row or text for row in (batch.instruction or ("",) * len(batch))]
        images = {c: batch.images[c].cpu().numpy() for c in self.cameras if c in batch.images}
        return self.loss(batch.observation.cpu().numpy(), texts,
                         chunk.detach().cpu().numpy(), images=images or None)

    # -- weights ----------------------------------------------------------------------------

    def load_weights(self, weights: Weights) -> None:
        own = self.net.state_dict()
        if set(weights) != set(own):
            raise ValueError(f"weights do not fit {KIND}: missing "
                             f"{sorted(set(own) - set(weights))[:5]}, unexpected "
                             f"{sorted(set(weights) - set(own))[:5]}")
        for name, value in weights.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(f"weight {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(own[name].shape)}")
        self.net.load_state_dict({name: torch.as_tensor(np.asarray(v, dtype=np.float32))
                                  for name, v in weights.items()})

    def export_weights(self) -> dict[str, np.ndarray]:
        return {name: t.detach().float().cpu().numpy().copy()
                for name, t in self.net.state_dict().items()}


def build(spec: PolicySpec, options: Mapping[str, JSON]) -> VlaTransformerPolicy:
    """Factory registered as ``vla_transformer`` (options: module docstring)."""
    seed = options.get("seed")
    if seed is not None:
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        torch.manual_seed(seed)
    cameras = options.get("cameras", [])
    if not isinstance(cameras, list | tuple) or not all(isinstance(c, str) for c in cameras):
        raise ValueError(f"cameras must be a list of camera names, got {cameras!r}")
    instruction = options.get("instruction", "")
    device = options.get("device", "cpu")
    if not isinstance(instruction, str) or not isinstance(device, str):
        raise ValueError("instruction and device must be strings")
    net = VlaNet(spec.observation_dim, spec.action_dim,
                 d_model=_int(options, "d_model", 512), layers=_int(options, "layers", 7),
                 heads=_int(options, "heads", 8), ff=_int(options, "ff", 2048),
                 chunk=_int(options, "chunk", 10), cameras=[str(c) for c in cameras],
                 image_size=_int(options, "image_size", 64), patch=_int(options, "patch", 8))
    return VlaTransformerPolicy(spec, net, instruction, device)
