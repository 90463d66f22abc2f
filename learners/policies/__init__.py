"""Policies by kind, for learners and for agents' on-robot inference (DESIGN §5, §6).

Agents may import this package (the one exception to the layering), so it imports only
the network modules and the weight format, never training code, Kafka or Delta::

    spec = policies.PolicySpec.from_robot_spec(robot_spec)
    policy = policies.load(spec, weights_bytes)          # kind + options from the header
    action = policy.act(observation[None], deterministic=True)[0]

``import learners.policies`` loads no torch: the spec, weight format and the numpy
inference of ``mlp_gaussian`` (:func:`load_for_inference`) are torch-free; every other
name imports its module (and registers the built-in kinds) on first use.

Weights travel as safetensors bytes (:func:`to_safetensors`) with a SHA-256
(:func:`sha256_hex`); never pickle or ``torch.save``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from learners.policies._chunking import ChunkExecution
from learners.policies._numpy import NumpyMlpGaussianPolicy, load_for_inference, numpy_kinds
from learners.policies._spec import PolicySpec, hidden_sizes_option
from learners.policies._streams import weights_stream
from learners.policies._weights import (
    bytes_to_state_dict,
    from_safetensors,
    non_finite,
    safetensors_header,
    safetensors_metadata,
    sha256_hex,
    state_dict_to_bytes,
    to_safetensors,
)

if TYPE_CHECKING:
    from learners.policies._cnn_gaussian import CnnGaussianPolicy
    from learners.policies._flow_matching import FlowActor, FlowMatchingPolicy
    from learners.policies._mlp_gaussian import MlpGaussianPolicy, build_actor
    from learners.policies._networks import TanhGaussianActor
    from learners.policies._registry import (
        ActorParts,
        PolicyFactory,
        actor_parts,
        build,
        check_options,
        kinds,
        load,
        pads_actions,
        register,
        register_check,
        register_parts,
        weights_metadata,
    )
    from learners.policies._vla_transformer import VlaTransformerPolicy

#: Names that need torch: imported (and the built-in kinds registered) on first lookup, so
#: ``import learners.policies`` stays torch-free for agents (issue 17).
_LAZY = {
    "CnnGaussianPolicy": "_cnn_gaussian",
    "FlowActor": "_flow_matching",
    "FlowMatchingPolicy": "_flow_matching",
    "MlpGaussianPolicy": "_mlp_gaussian",
    "build_actor": "_mlp_gaussian",
    "TanhGaussianActor": "_networks",
    "VlaTransformerPolicy": "_vla_transformer",
    **{name: "_registry" for name in (
        "ActorParts", "PolicyFactory", "actor_parts", "build", "check_options", "kinds",
        "load", "pads_actions", "register", "register_check", "register_parts",
        "weights_metadata")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module("learners.policies._builtin")  # registers the built-in kinds
    value = getattr(importlib.import_module(f"learners.policies.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ActorParts",
    "ChunkExecution",
    "CnnGaussianPolicy",
    "FlowActor",
    "FlowMatchingPolicy",
    "MlpGaussianPolicy",
    "NumpyMlpGaussianPolicy",
    "PolicyFactory",
    "PolicySpec",
    "TanhGaussianActor",
    "VlaTransformerPolicy",
    "actor_parts",
    "build",
    "build_actor",
    "bytes_to_state_dict",
    "check_options",
    "from_safetensors",
    "hidden_sizes_option",
    "kinds",
    "load",
    "load_for_inference",
    "non_finite",
    "numpy_kinds",
    "pads_actions",
    "register",
    "register_check",
    "register_parts",
    "safetensors_header",
    "safetensors_metadata",
    "sha256_hex",
    "state_dict_to_bytes",
    "to_safetensors",
    "weights_metadata",
    "weights_stream",
]
