"""Policies by kind, for learners and for agents' on-robot inference (DESIGN §5, §6).

Agents may import this package (the one exception to the layering), so it imports only
the network modules and the weight format, never training code, Kafka or Delta::

    spec = policies.PolicySpec.from_robot_spec(robot_spec)
    policy = policies.load(spec, weights_bytes)          # kind + options from the header
    action = policy.act(observation[None], deterministic=True)[0]

Weights travel as safetensors bytes (:func:`to_safetensors`) with a SHA-256
(:func:`sha256_hex`); never pickle or ``torch.save``.
"""

from learners.policies import _cnn_gaussian, _flow_matching, _mlp_gaussian, _vla_transformer
from learners.policies._chunking import ChunkExecution
from learners.policies._cnn_gaussian import CnnGaussianPolicy
from learners.policies._flow_matching import FlowActor, FlowMatchingPolicy
from learners.policies._mlp_gaussian import MlpGaussianPolicy, build_actor, hidden_sizes_option
from learners.policies._networks import TanhGaussianActor
from learners.policies._registry import (
    ActorParts,
    PolicyFactory,
    PolicySpec,
    actor_parts,
    build,
    check_options,
    kinds,
    load,
    register,
    register_check,
    register_parts,
    weights_metadata,
)
from learners.policies._streams import weights_stream
from learners.policies._vla_transformer import VlaTransformerPolicy
from learners.policies._weights import (
    bytes_to_state_dict,
    from_safetensors,
    non_finite,
    safetensors_metadata,
    sha256_hex,
    state_dict_to_bytes,
    to_safetensors,
)

register(_mlp_gaussian.KIND, _mlp_gaussian.build)
register_parts(_mlp_gaussian.KIND, _mlp_gaussian.parts, _mlp_gaussian.check)
register(_cnn_gaussian.KIND, _cnn_gaussian.build)
register(_flow_matching.KIND, _flow_matching.build)
register_check(_flow_matching.KIND, _flow_matching.check)
register_parts(_cnn_gaussian.KIND, _cnn_gaussian.parts, _cnn_gaussian.check)
register(_vla_transformer.KIND, _vla_transformer.build)

__all__ = [
    "ActorParts",
    "ChunkExecution",
    "CnnGaussianPolicy",
    "FlowActor",
    "FlowMatchingPolicy",
    "MlpGaussianPolicy",
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
    "non_finite",
    "register",
    "register_check",
    "register_parts",
    "safetensors_metadata",
    "sha256_hex",
    "state_dict_to_bytes",
    "to_safetensors",
    "weights_metadata",
    "weights_stream",
]
