"""Inference without torch: ``mlp_gaussian`` run with numpy (the agents' path, issue 17).

An agent only acts; importing torch for that costs ~0.5 GB of RSS per agent process and
~50 µs of framework overhead per batch-of-one forward pass.  :func:`load_for_inference`
builds the numpy twin of a kind when one exists (here: ``mlp_gaussian``, the same
:class:`~learners.policies._networks.TanhGaussianActor` layout and formulas, weights read
from the same safetensors blob) and otherwise falls back to the kind's torch policy
(:func:`learners.policies.load`, which imports torch then).  The two agree to float32
rounding (numpy's and torch's BLAS sum in different orders); sampling draws from numpy's
generator, so a seeded numpy policy samples other noise than a seeded torch one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from learners.policies import _weights
from learners.policies._spec import KIND_KEY, OPTIONS_KEY, PolicySpec, hidden_sizes_option

#: Same constants as ``_networks`` (which imports torch): log-std squashed into this range.
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


class NumpyMlpGaussianPolicy:
    """``mlp_gaussian``'s actor on numpy: ``trunk`` (Linear+ReLU layers), ``mean`` and
    ``log_std`` heads; ``action = bias + scale * tanh(u)``, ``u ~ N(mean, std)``."""

    cameras: tuple[str, ...] = ()

    def __init__(self, spec: PolicySpec, weights: Mapping[str, np.ndarray],
                 hidden_sizes: tuple[int, ...], seed: int | None = None) -> None:
        self.spec = spec
        sizes = [spec.observation_dim, *hidden_sizes]
        layers = [(n_out, n_in) for n_in, n_out in itertools.pairwise(sizes)]
        want = {f"trunk.{2 * i}.{p}": (shape if p == "weight" else shape[:1])
                for i, shape in enumerate(layers) for p in ("weight", "bias")}
        for head in ("mean", "log_std"):
            want[f"{head}.weight"] = (spec.action_dim, hidden_sizes[-1])
            want[f"{head}.bias"] = (spec.action_dim,)
        if set(weights) != set(want):
            raise ValueError(
                f"weights do not fit mlp_gaussian: missing {sorted(set(want) - set(weights))}, "
                f"unexpected {sorted(set(weights) - set(want))}")
        for name, shape in want.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"weight {name!r} has shape {tuple(weights[name].shape)}, "
                                 f"expected {shape}")

        def layer(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            # ``x @ w.T + b``: a transposed view (BLAS reads it as is), no copy per version;
            # the arrays are the parsed blob's own (read-only here).
            return (np.asarray(weights[f"{prefix}.weight"], np.float32).T,
                    np.asarray(weights[f"{prefix}.bias"], np.float32))

        self._trunk = [layer(f"trunk.{2 * i}") for i in range(len(hidden_sizes))]
        self._mean = layer("mean")
        self._log_std = layer("log_std")
        low = np.asarray(spec.action_low, np.float32)
        high = np.asarray(spec.action_high, np.float32)
        self._scale = (high - low) / np.float32(2.0)
        self._bias = (high + low) / np.float32(2.0)
        self._rng = np.random.default_rng(seed)

    def distribution(self, observation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the pre-squash Gaussian, (batch, action_dim)."""
        h = observation
        for w, b in self._trunk:
            h = np.maximum(h @ w + b, np.float32(0.0))
        mean = h @ self._mean[0] + self._mean[1]
        log_std = np.tanh(h @ self._log_std[0] + self._log_std[1])
        log_std = np.float32(LOG_STD_MIN) + np.float32(
            0.5 * (LOG_STD_MAX - LOG_STD_MIN)) * (log_std + np.float32(1.0))
        return mean, np.exp(log_std)

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        obs = np.asarray(observation, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.spec.observation_dim:
            raise ValueError(f"observation batch has shape {tuple(obs.shape)}; expected "
                             f"(batch, {self.spec.observation_dim})")
        mean, std = self.distribution(obs)
        u = mean if deterministic else (
            mean + std * self._rng.standard_normal(mean.shape, dtype=np.float32))
        action: np.ndarray = self._bias + self._scale * np.tanh(u)
        return action.astype(np.float32, copy=False)


def _mlp_gaussian(spec: PolicySpec, options: Mapping[str, Any],
                  weights: Mapping[str, np.ndarray]) -> NumpyMlpGaussianPolicy:
    seed = options.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return NumpyMlpGaussianPolicy(spec, weights, hidden_sizes_option(options), seed)


#: kind -> numpy builder (spec, options, weights); only options listed in ``_PLAIN`` are
#: understood, anything else (a shared-input wrapper, cameras) takes the torch path.
_BUILDERS: dict[str, Callable[[PolicySpec, Mapping[str, Any], Mapping[str, np.ndarray]],
                              NumpyMlpGaussianPolicy]] = {"mlp_gaussian": _mlp_gaussian}
_PLAIN = frozenset({"hidden_sizes", "seed"})


def numpy_kinds() -> tuple[str, ...]:
    """Kinds :func:`load_for_inference` runs without torch."""
    return tuple(sorted(_BUILDERS))


def load_for_inference(spec: PolicySpec, data: bytes,
                       tensors: Mapping[str, np.ndarray] | None = None) -> Any:
    """The policy a self-describing weights blob names, ready to act: the numpy twin of
    its kind when there is one and its options are plain, else the torch policy
    (``learners.policies.load``, importing torch).  ``tensors``: the blob already parsed
    (saves a second parse).  Raises ``ValueError``/``KeyError`` as ``load`` does."""
    kind, options = _weights.kind_and_options(data, KIND_KEY, OPTIONS_KEY)
    builder = _BUILDERS.get(kind)
    if builder is not None and set(options) <= _PLAIN:
        return builder(spec, options,
                       tensors if tensors is not None else _weights.from_safetensors(data))
    from learners.policies import _registry  # the torch path (imports torch)

    return _registry.load(spec, data)

