"""One policy across robot types (heterogeneous co-training, issue 11 §5).

A shared policy sees every type's observation zero-padded to the longest one, followed by
a one-hot of the robot type, and acts in the action space the types have in common (the
manipulators' end-effector delta + gripper command). The learner trains one network on
all types' steps (:func:`encode`); each robot gets the same weights on its own type's
stream with :data:`OPTION` in the options, so :func:`learners.policies.build` wraps the
kind's policy in :class:`SharedInputPolicy`, which encodes the robot's own observations
the same way before acting. Weight files stay those of the wrapped kind.

A kind registered with ``pads_actions`` (``vla_transformer``) may also serve types whose
action spaces differ in size: it acts in the widest one, a narrower type's actions are
padded with the middle of the range to learn from (:func:`pad_actions`) and it reads
the first values of each action.  One inference replica serves every type: requests
name their robot type (:meth:`SharedInputPolicy.act_chunks_of`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from learners.core import JSON, Policy, Weights
from learners.policies._registry import PolicySpec

#: Options key a shared policy's weights are published with: ``{"types": [...],
#: "type": "<this robot's type>", "observation_dim": <padded length>}``.
OPTION = "shared_input"


def _action_space(specs: Mapping[str, PolicySpec], pad_actions: bool) -> PolicySpec:
    """The spec whose action space the shared policy acts in (module docstring)."""
    types = sorted(specs)
    widest = max(types, key=lambda t: specs[t].action_dim) if pad_actions else types[0]
    w = specs[widest]
    for t in types:
        s = specs[t]
        n = s.action_dim if pad_actions else w.action_dim
        if s.action_dim != n or (s.action_low, s.action_high) != (
                w.action_low[:n], w.action_high[:n]):
            raise ValueError(
                f"policy.shared_across_types: robot types {widest!r} and {t!r} have different "
                f"action spaces ({w.action_dim} vs {s.action_dim} values or other bounds); "
                + ("their common values must have the same bounds" if pad_actions else
                   "a shared policy needs a common one (the manipulators' end-effector "
                   "action)"))
    return w


def shared_spec(specs: Mapping[str, PolicySpec], pad_actions: bool = False) -> PolicySpec:
    """The spec of one policy for every type in ``specs`` (padded observation + one-hot).

    Raises ``ValueError`` (one line) when the types' action spaces differ: a shared
    policy needs a common action space — or, with ``pad_actions``, action spaces that
    agree on the values they have in common (the widest is the policy's).
    """
    w = _action_space(specs, pad_actions)
    padded = max(s.observation_dim for s in specs.values())
    return PolicySpec(padded + len(specs), w.action_dim, w.action_low, w.action_high)


def options_for(robot_type: str, specs: Mapping[str, PolicySpec],
                pad_actions: bool = False) -> dict[str, JSON]:
    """The :data:`OPTION` value robots of ``robot_type`` build their policy with (with
    ``pad_actions``, the shared action space too)."""
    out: dict[str, JSON] = {"types": sorted(specs), "type": robot_type,
                            "observation_dim": max(s.observation_dim for s in specs.values())}
    if pad_actions:
        w = _action_space(specs, pad_actions)
        out["action"] = {"dim": w.action_dim, "low": list(w.action_low),
                         "high": list(w.action_high)}
    return out


def pad_actions(action: np.ndarray, spec: PolicySpec) -> np.ndarray:
    """``(n, d)`` actions of a narrower type as ``(n, spec.action_dim)``: the missing
    values at the middle of ``spec``'s range (unit action 0), which a policy learns to
    propose for that type and the type never reads."""
    n, d = action.shape
    if d == spec.action_dim:
        return action
    middle = (np.asarray(spec.action_low, np.float32) + np.asarray(spec.action_high,
                                                                   np.float32)) / 2
    out = np.broadcast_to(middle, (n, spec.action_dim)).astype(np.float32)
    out[:, :d] = action
    return out


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


def _parse_action(options: Mapping[str, JSON], own: PolicySpec) -> PolicySpec:
    """The shared action space of an :data:`OPTION` value (``own``'s when it has none)."""
    raw = options.get(OPTION)
    action = raw.get("action") if isinstance(raw, dict) else None
    if action is None:
        return own
    if not isinstance(action, dict):
        raise ValueError(f"{OPTION}.action must be an object")
    dim, low, high = action.get("dim"), action.get("low"), action.get("high")
    bounds = [low, high]
    if (not isinstance(dim, int) or dim < own.action_dim
            or not all(isinstance(b, list) and len(b) == dim
                       and all(isinstance(x, int | float) for x in b) for b in bounds)):
        raise ValueError(f"{OPTION}.action needs dim (int >= the robot's {own.action_dim}) "
                         "and low/high lists of that many numbers")
    low_, high_ = ([float(x) for x in b if isinstance(x, int | float)]
                   for b in bounds if isinstance(b, list))
    return PolicySpec(own.observation_dim, dim, tuple(low_), tuple(high_))


class SharedInputPolicy(Policy):
    """A policy of another kind, trained across types, acting for one robot type (or,
    through :meth:`act_chunks_of`, for requests of any of its types)."""

    def __init__(self, inner: Policy, robot_type: str, types: Sequence[str],
                 observation_dim: int, action_dim: int | None = None) -> None:
        self.inner = inner
        self.cameras = inner.cameras
        self._type, self._types, self._dim = robot_type, list(types), observation_dim
        self.action_dim = action_dim
        """this robot's action size (None: the inner policy's)."""

    @property
    def types(self) -> tuple[str, ...]:
        """The robot types the policy was trained across."""
        return tuple(self._types)

    @property
    def observation_dim(self) -> int:
        """The longest observation it reads (any type's, before the one-hot)."""
        return self._dim

    def to(self, device: str) -> SharedInputPolicy:
        """Move the inner policy to a torch ``device`` where it can move (an inference
        replica on a GPU); a no-op for kinds that cannot."""
        move = getattr(self.inner, "to", None)
        if move is not None:
            move(device)
        return self

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        shared = encode(np.asarray(observation, np.float32).reshape(len(observation), -1),
                        self._type, self._types, self._dim)
        return self.inner.act(shared, deterministic, images)[:, :self.action_dim]

    def act_chunk(self, observation: np.ndarray, instructions: Sequence[str],
                  images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Action chunks ``(n, chunk, action)`` for this robot's type (chunks of one
        action for a kind that acts step by step)."""
        obs = np.asarray(observation, np.float32)
        return self.act_chunks_of([self._type] * len(obs), list(obs), instructions,
                                  images)[..., :self.action_dim]

    def act_chunks_of(self, robot_types: Sequence[str], observations: Sequence[np.ndarray],
                      instructions: Sequence[str],
                      images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """One forward pass for requests of several robot types: row ``i`` is an
        observation of ``robot_types[i]`` ("" for this policy's own type), encoded as
        that type's; returns ``(n, chunk, widest action)`` — a robot reads its first
        values (chunks of one action for a kind that acts step by step).  Raises
        ``ValueError`` for a type the policy was not trained on."""
        shared = np.zeros((len(observations), self._dim + len(self._types)), np.float32)
        for t in dict.fromkeys(robot_types):
            rows = [i for i, rt in enumerate(robot_types) if rt == t]
            shared[rows] = encode(np.stack([np.asarray(observations[i], np.float32).ravel()
                                            for i in rows]), t or self._type, self._types,
                                  self._dim)
        act_chunk = getattr(self.inner, "act_chunk", None)
        if act_chunk is None or "instructions" not in inspect.signature(act_chunk).parameters:
            # Not language-conditioned: the first action of what it would do.
            return np.asarray(self.inner.act(shared, True, images))[:, None]
        return np.asarray(act_chunk(shared, instructions, images))

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
    action = _parse_action(options, spec)
    inner_spec = PolicySpec(dim + len(types), action.action_dim, action.action_low,
                            action.action_high)
    inner = build(kind, inner_spec, {k: v for k, v in options.items() if k != OPTION})
    return SharedInputPolicy(inner, robot_type, types, dim,
                             spec.action_dim if action.action_dim != spec.action_dim else None)
