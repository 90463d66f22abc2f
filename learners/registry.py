"""Algorithms by name, and what an experiment spec asks of them (STYLE §18, DESIGN §9).

The learner loop (``learners.loop``) never names an algorithm or a policy kind: it looks
up ``spec.algorithm.name`` here and ``spec.policy.kind`` in ``learners.policies``.  A new
algorithm is one file plus one registration line, run when its module is imported::

    # mylab/algorithms.py  (declared under [project.entry-points."user.algorithms"])
    from learners import registry

    def build(ctx: registry.AlgorithmContext) -> core.Algorithm:
        return MyAlgorithm(ctx.policy_spec, ctx.policy_kind, ctx.policy_options, ...)

    def check(spec: ExperimentSpec) -> None:   # optional: refuse bad hyper-parameters
        ...                                     # raise ValueError("algorithm.hyperparameters: …")

    registry.register_algorithm("my_algo", build, check)

Built-ins (``sac``, ``rlpd`` in :mod:`learners.sac`; ``bc``, ``hg_dagger`` in
:mod:`learners.bc`; ``dsrl`` in :mod:`learners.dsrl`; ``fql`` in :mod:`learners.fql`)
register the same way on first lookup; plug-ins come from the ``user.algorithms`` entry-point group
(:mod:`topics.plugins`).  A policy kind registers with :func:`learners.policies.register`
(the agent side: a :class:`~learners.core.Policy` from a spec and options) and, to be
trainable by actor-critic algorithms, :func:`learners.policies.register_parts`.

:func:`problems` is the one submit-time check (``userctl experiments submit``) and the
learner's start-up check: each problem is one line naming the spec field.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from learners import core, policies, replay
from schemas.experiment import ExperimentSpec

__all__ = [
    "AlgorithmContext",
    "AlgorithmFactory",
    "ExperimentCheck",
    "algorithm_names",
    "build_algorithm",
    "policy_options",
    "problems",
    "register_algorithm",
    "sampler_factory",
]


@dataclass(frozen=True)
class AlgorithmContext:
    """What an algorithm factory gets: the experiment, and the policy it trains for one
    robot type."""

    experiment: ExperimentSpec
    robot_type: str
    policy_spec: policies.PolicySpec
    """the robot type's observation/action sizes and action bounds."""
    policy_kind: str
    """``experiment.policy.kind``: what robots run (``learners.policies.build``)."""
    policy_options: Mapping[str, core.JSON] = field(default_factory=dict)
    """the kind's options robots build it with (:func:`policy_options`)."""
    device: str = "cpu"
    """where the algorithm trains (``cpu``, ``cuda``); algorithms that only run on the CPU
    may ignore it."""


#: Builds one robot type's algorithm. Raises ``ValueError`` naming a bad setting.
AlgorithmFactory = Callable[[AlgorithmContext], core.Algorithm]
#: Refuses an experiment the algorithm cannot run: raises ``ValueError`` whose message
#: starts with the spec field (``algorithm.hyperparameters: …``).
ExperimentCheck = Callable[[ExperimentSpec], None]
#: The sampler an algorithm draws from: ``(online buffer, prior buffer or None,
#: experiment) -> Sampler``.  Without one the learner uses the online buffer, mixed with
#: prior data at ``buffer.prior_ratio`` (``learners.replay.MixingSampler``).
SamplerFactory = Callable[[replay.NumpyReplayBuffer, replay.NumpyReplayBuffer | None,
                           ExperimentSpec], core.Sampler]


@dataclass(frozen=True)
class _Entry:
    factory: AlgorithmFactory
    check: ExperimentCheck | None
    sampler: SamplerFactory | None


_ALGORITHMS: dict[str, _Entry] = {}
_lock = threading.Lock()
_builtins_loaded = False


def register_algorithm(name: str, factory: AlgorithmFactory,
                       check: ExperimentCheck | None = None,
                       sampler: SamplerFactory | None = None) -> None:
    """Make ``name`` an ``algorithm.name`` experiments may ask for. Registering the same
    factory again is a no-op; another factory under a taken name raises ``ValueError``."""
    entry = _ALGORITHMS.get(name)
    if entry is not None and entry.factory is not factory:
        raise ValueError(f"algorithm {name!r} is already registered")
    _ALGORITHMS[name] = _Entry(factory, check, sampler)


def _discover() -> None:
    """Built-ins, then the ``user.algorithms`` plug-ins (their import registers them)."""
    global _builtins_loaded
    with _lock:
        if not _builtins_loaded:
            import learners.bc
            import learners.dsrl
            import learners.fql
            import learners.sac  # noqa: F401  (registers sac and rlpd)

            _builtins_loaded = True
    from topics import plugins

    plugins.load("user.algorithms")


def algorithm_names() -> tuple[str, ...]:
    """The registered algorithms (plug-ins included), sorted."""
    _discover()
    return tuple(sorted(_ALGORITHMS))


def _entry(name: str) -> _Entry:
    if name not in _ALGORITHMS:
        _discover()
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"algorithm.name: unknown algorithm {name!r}; registered: "
                       f"{', '.join(algorithm_names())}") from None


def build_algorithm(ctx: AlgorithmContext) -> core.Algorithm:
    """A fresh algorithm for one robot type. Raises ``KeyError`` for an unknown name,
    ``ValueError`` for settings it refuses."""
    return _entry(ctx.experiment.algorithm.name).factory(ctx)


def sampler_factory(name: str) -> SamplerFactory | None:
    """The sampler algorithm ``name`` registered (None: the learner's default)."""
    return _entry(name).sampler


def policy_options(spec: ExperimentSpec) -> dict[str, core.JSON]:
    """The options robots build ``spec.policy.kind`` with (they travel in the weights
    header): hidden sizes, plus the observation spec's cameras, image size and state
    indices when it names any, plus ``spec.policy.options``.  For a plain state policy
    this is ``{"hidden_sizes": [...]}`` alone."""
    options: dict[str, core.JSON] = {"hidden_sizes": list(spec.policy.hidden)}
    obs = spec.observation
    if obs.cameras:
        options["cameras"] = list(obs.cameras)
        options["image_size"] = list(obs.image_size)
    if obs.state_indices is not None:
        options["state_indices"] = list(obs.state_indices)
    options.update(spec.policy.options)
    return options


def problems(spec: ExperimentSpec) -> list[str]:
    """Field-level problems with ``spec``'s algorithm and policy kind, one line each (empty:
    the learner can run it). Checks that the algorithm and the policy kind are registered,
    the algorithm's own check (hyper-parameters), and that the policy kind accepts the
    experiment's options (observation spec)."""
    out: list[str] = []
    try:
        entry = _entry(spec.algorithm.name)
    except KeyError as exc:
        out.append(str(exc.args[0]))
    else:
        if entry.check is not None:
            try:
                entry.check(spec)
            except ValueError as exc:
                out.append(str(exc))
    if spec.policy.kind not in policies.kinds():
        out.append(f"policy.kind: unknown policy kind {spec.policy.kind!r}; registered: "
                   f"{', '.join(policies.kinds())}")
    else:
        try:
            policies.check_options(spec.policy.kind, policy_options(spec))
        except ValueError as exc:
            out.append(f"policy: {exc}")
    return out
