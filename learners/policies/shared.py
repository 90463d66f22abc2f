"""One policy across robot types (heterogeneous co-training, issue 11 §5).

A shared policy sees every type's observation zero-padded to the longest one, followed by
a one-hot of the robot type, and acts in the action space the types have in common (the
manipulators' end-effector delta + gripper command). The learner trains one network on
all types' steps (:func:`encode`); each robot gets the same weights on its own type's
stream with :data:`OPTION` in the options, so :func:`learners.policies.build` wraps the
kind's policy in :class:`SharedInputPolicy`, which encodes the robot's own observations
the same way before acting. Weight files stay those of the wrapped kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from learners.core import JSON, Policy, Weights
from learners.policies._registry import PolicySpec

#: Options key a shared policy's weights are published with: ``{"types": [...],
#: "type": "<this robot's type>", "observation_dim": <padded length>}``.
OPTION = "shared_input"


def shared_spec(specs: Mapping[str, PolicySpec]) -> PolicySpec:
    """The spec of one policy for every type in ``specs`` (padded observation + one-hot).

    Raises ``ValueError`` (one line) when the types' action spaces differ: a shared
    policy needs a common action space.
    """
    types = sorted(specs)
    first = specs[types[0]]
    for t in types[1:]:
        s = specs[t]
        if (s.action_dim, s.action_low, s.action_high) != (
                first.action_dim, first.action_low, first.action_high):
            raise ValueError(
                f"policy.shared_across_types: robot types {types[0]!r} and {t!r} have different "
                f"action spaces ({first.action_dim} vs {s.action_dim} values or other bounds); "
                "a shared policy needs a common one (the manipulators' end-effector action)")
    padded = max(s.observation_dim for s in specs.values())
    return PolicySpec(padded + len(types), first.action_dim, first.action_low, first.action_high)


def options_for(robot_type: str, specs: Mapping[str, PolicySpec]) -> dict[str, JSON]:
    """The :data:`OPTION` value robots of ``robot_type`` build their policy with."""
    return {"types": sorted(specs), "type": robot_type,
            "observation_dim": max(s.observation_dim for s in specs.values())}


def encode(observation: np.ndarray, robot_type: str, types: Sequence[str],
           observation_dim: int) -> np.ndarray:
    """``(n, d)`` observations of ``robot_type`` as ``(n, observation_dim + len(types))``:
    zero-padded, then the type's one-hot. Raises ``ValueError`` for an unknown type or an
    observation longer than ``observation_dim``."""
    if robot_type not in types:
        raise ValueError(f"robot type {robot_type!r} is not one of the shared policy's "
                         f"{', '.join(types)}")
    n, d = observation.shape
    if d > observation_dim:
        raise ValueError(f"{robot_type}: observation of {d} values, shared policy takes "
                         f"{observation_dim}")
    out = np.zeros((n, observation_dim + len(types)), dtype=np.float32)
    out[:, :d] = observation
    out[:, observation_dim + list(types).index(robot_type)] = 1.0
    return out


def parse(options: Mapping[str, JSON]) -> tuple[str, list[str], int]:
    """``(type, types, observation_dim)`` of an :data:`OPTION` value; ``ValueError`` if
    malformed."""
    raw = options.get(OPTION)
    if not isinstance(raw, dict):
        raise ValueError(f"{OPTION} must be an object")
    types, robot_type, dim = raw.get("types"), raw.get("type"), raw.get("observation_dim")
    if (not isinstance(types, list) or not all(isinstance(t, str) for t in types)
            or not isinstance(robot_type, str) or not isinstance(dim, int)):
        raise ValueError(f"{OPTION} needs types (list of str), type (str), observation_dim (int)")
    return robot_type, [str(t) for t in types], dim


class SharedInputPolicy(Policy):
    """A policy of another kind, trained across types, acting for one robot type."""

    def __init__(self, inner: Policy, robot_type: str, types: Sequence[str],
                 observation_dim: int) -> None:
        self.inner = inner
        self.cameras = inner.cameras
        self._type, self._types, self._dim = robot_type, list(types), observation_dim

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        shared = encode(np.asarray(observation, np.float32).reshape(len(observation), -1),
                        self._type, self._types, self._dim)
        return self.inner.act(shared, deterministic, images)

    def load_weights(self, weights: Weights) -> None:
        self.inner.load_weights(weights)

    def export_weights(self) -> dict[str, np.ndarray]:
        return self.inner.export_weights()


def wrap(kind: str, spec: PolicySpec, options: Mapping[str, JSON],
         build: Callable[[str, PolicySpec, Mapping[str, JSON]], Policy]) -> Policy:
    """``kind``'s policy for a robot of ``spec`` that acts with shared weights."""
    robot_type, types, dim = parse(options)
    if spec.observation_dim > dim:
        raise ValueError(f"{robot_type}: observation of {spec.observation_dim} values, shared "
                         f"policy takes {dim}")
    inner_spec = PolicySpec(dim + len(types), spec.action_dim, spec.action_low, spec.action_high)
    inner = build(kind, inner_spec, {k: v for k, v in options.items() if k != OPTION})
    return SharedInputPolicy(inner, robot_type, types, dim)
