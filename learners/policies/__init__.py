"""Policies by kind, for learners and for agents' on-robot inference (DESIGN §5, §6).

Agents may import this package (the one exception to the layering), so it imports only
the network modules and the weight format, never training code, Kafka or Delta::

    spec = policies.PolicySpec.from_robot_spec(robot_spec)
    policy = policies.load(spec, weights_bytes)          # kind + options from the header
    action = policy.act(observation[None], deterministic=True)[0]

Weights travel as safetensors bytes (:func:`to_safetensors`) with a SHA-256
(:func:`sha256_hex`); never pickle or ``torch.save``.
"""

from learners.policies import _mlp_gaussian
from learners.policies._mlp_gaussian import MlpGaussianPolicy, build_actor, hidden_sizes_option
from learners.policies._networks import TanhGaussianActor
from learners.policies._registry import (
    PolicyFactory,
    PolicySpec,
    build,
    kinds,
    load,
    register,
    weights_metadata,
)
from learners.policies._streams import weights_stream
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

__all__ = [
    "MlpGaussianPolicy",
    "PolicyFactory",
    "PolicySpec",
    "TanhGaussianActor",
    "build",
    "build_actor",
    "bytes_to_state_dict",
    "from_safetensors",
    "hidden_sizes_option",
    "kinds",
    "load",
    "non_finite",
    "register",
    "safetensors_metadata",
    "sha256_hex",
    "state_dict_to_bytes",
    "to_safetensors",
    "weights_metadata",
    "weights_stream",
]
