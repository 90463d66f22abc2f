"""Policy kinds by name, built from a robot's observation/action description."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from learners.core import JSON, Policy
from learners.policies import _spec, _weights
from learners.policies._networks import TanhGaussianActor

#: Moved to ``_spec`` (torch-free, for agents); the kinds import it from here too.
PolicySpec = _spec.PolicySpec

#: Builds a policy of one kind from its spec and kind-specific JSON options.
PolicyFactory = Callable[[PolicySpec, Mapping[str, JSON]], Policy]
#: Refuses options a kind cannot build from: raises ``ValueError`` naming the option.
OptionsCheck = Callable[[Mapping[str, JSON]], None]


@dataclass
class ActorParts:
    """A policy kind's networks as an actor-critic learner trains them (DrQ's split).

    ``encoder(observation, images) -> features`` (B, ``feature_dim``) is shared with the
    critics and trained by their loss; ``head`` (a :class:`TanhGaussianActor` over
    features) is the actor, fed detached features.  ``policy`` is the module whose
    ``state_dict`` is exactly what robots load (:meth:`Policy.load_weights` of the kind),
    e.g. the head alone for ``mlp_gaussian`` (its encoder has no parameters).
    """

    encoder: nn.Module
    head: TanhGaussianActor
    feature_dim: int
    policy: nn.Module
    cameras: tuple[str, ...] = ()
    """cameras the encoder reads (empty: state only)."""


#: Builds the trainable networks of one kind (called under the learner's seeded RNG).
PartsFactory = Callable[[PolicySpec, Mapping[str, JSON]], ActorParts]

_FACTORIES: dict[str, PolicyFactory] = {}
_CHECKS: dict[str, OptionsCheck] = {}
_PARTS: dict[str, PartsFactory] = {}
_PADS_ACTIONS: set[str] = set()

#: Header metadata keys that make a weights blob self-describing (home: ``_spec``).
KIND_KEY = _spec.KIND_KEY
OPTIONS_KEY = _spec.OPTIONS_KEY


def register(kind: str, factory: PolicyFactory, *, pads_actions: bool = False) -> None:
    """Make ``kind`` buildable. Raises ``ValueError`` if the name is already taken.

    ``pads_actions``: shared across robot types, the kind learns in the widest type's
    action space, narrower types' actions padded (:func:`pads_actions`)."""
    if kind in _FACTORIES and _FACTORIES[kind] is not factory:
        raise ValueError(f"policy kind {kind!r} is already registered")
    _FACTORIES[kind] = factory
    if pads_actions:
        _PADS_ACTIONS.add(kind)


def pads_actions(kind: str) -> bool:
    """Whether ``kind``, shared across robot types, may serve types whose action spaces
    differ in size (the widest's, the others padded; :mod:`learners.policies.shared`)."""
    if kind not in _FACTORIES:
        _discover()
    return kind in _PADS_ACTIONS


def register_parts(kind: str, parts: PartsFactory, check: OptionsCheck | None = None) -> None:
    """Make ``kind`` trainable by actor-critic algorithms (``learners.sac``), and give
    the options check submit time runs (:func:`check_options`)."""
    _PARTS[kind] = parts
    if check is not None:
        _CHECKS[kind] = check


def register_check(kind: str, check: OptionsCheck) -> None:
    """Give ``kind`` the options check submit time runs, for a kind trained by its own
    algorithm rather than by actor-critic parts (``flow_matching``)."""
    _CHECKS[kind] = check


def actor_parts(kind: str, spec: PolicySpec, options: Mapping[str, JSON] | None = None
                ) -> ActorParts:
    """The trainable networks of ``kind``. Raises ``KeyError`` if the kind has none
    (e.g. a generative policy trained by its own algorithm)."""
    if kind not in _PARTS:
        _discover()
    try:
        factory = _PARTS[kind]
    except KeyError:
        raise KeyError(f"policy kind {kind!r} has no actor-critic networks; kinds with them: "
                       f"{', '.join(sorted(_PARTS))}") from None
    return factory(spec, dict(options or {}))


def check_options(kind: str, options: Mapping[str, JSON]) -> None:
    """Raise ``ValueError`` (one line, naming the option) if ``kind`` cannot be built
    with ``options``; kinds without a check accept anything."""
    if kind not in _CHECKS:
        _discover()
    check = _CHECKS.get(kind)
    if check is not None:
        check(options)


def _discover() -> None:
    """Import the ``user.policies`` plug-in modules (their import registers their kinds).

    Imported here, not at module level: ``import learners.policies`` stays free of other
    layers for the agents' inference path.  The built-in kinds register on the same
    first use (:mod:`learners.policies._builtin`; their networks import torch).
    """
    from learners.policies import _builtin  # noqa: F401  (registers on import)
    from topics import plugins

    plugins.load("user.policies")


def kinds() -> tuple[str, ...]:
    """The registered policy kinds (``user.policies`` plug-ins included), sorted."""
    _discover()
    return tuple(sorted(_FACTORIES))


def build(kind: str, spec: PolicySpec, options: Mapping[str, JSON] | None = None) -> Policy:
    """A freshly initialised policy. Raises ``KeyError`` naming the known kinds."""
    if kind not in _FACTORIES:
        _discover()
    try:
        factory = _FACTORIES[kind]
    except KeyError:
        raise KeyError(f"unknown policy kind {kind!r}; known: {', '.join(kinds())}") from None
    options = dict(options or {})
    from learners.policies import shared  # here: it imports this module
    if shared.OPTION in options:  # weights trained across robot types (issue 11 §5)
        return shared.wrap(kind, spec, options, build)
    return factory(spec, options)


def weights_metadata(kind: str, options: Mapping[str, JSON] | None = None) -> dict[str, str]:
    """Header metadata that lets :func:`load` rebuild the policy from the bytes alone."""
    return {KIND_KEY: kind, OPTIONS_KEY: json.dumps(dict(options or {}), sort_keys=True)}


def load(spec: PolicySpec, data: bytes) -> Policy:
    """Build the policy a self-describing weights blob names, and load its weights.

    The blob must carry :func:`weights_metadata` in its header. Raises ``ValueError`` on
    malformed bytes, missing metadata or weights that do not fit ``spec``.
    """
    kind, options = _weights.kind_and_options(data, KIND_KEY, OPTIONS_KEY)
    policy = build(kind, spec, options)
    policy.load_weights(_weights.from_safetensors(data))
    return policy
