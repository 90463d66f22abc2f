"""The reward-function registry: ``name@version`` -> a pure vectorised function."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.events import RejectReason, SchemaError
from schemas.transitions import RewardedTransitionBatch, TransitionBatch
from topics import plugins

#: Imported before a lookup when no ``user.rewards`` entry point is installed (a source
#: tree never pip-installed). Plug-ins — the built-ins included — are modules declared
#: under the ``user.rewards`` entry-point group, whose ``@register`` lines run on import.
PLUGIN_MODULES: tuple[str, ...] = ("pipeline.rewards.reach", "pipeline.rewards.manipulation")
#: The entry-point group reward modules are discovered in.
ENTRY_POINTS = "user.rewards"

_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class RewardError(SchemaError):
    """A batch a reward function cannot score (e.g. it lacks an ``info`` array the
    function needs).  A ``SchemaError``, so stream jobs dead-letter the record."""

    def __init__(self, detail: str) -> None:
        super().__init__(RejectReason.SPEC_MISMATCH, detail)


@dataclass(frozen=True, eq=False)
class Rewards:
    """One reward function's verdict on ``n`` steps.

    ``reward`` float32 (n,), finite; ``success`` bool (n,): the task is solved at this
    step; ``terminated`` bool (n,): the episode truly ends after this step (a learner
    does not bootstrap past it).
    """

    reward: npt.NDArray[np.float32]
    success: npt.NDArray[np.bool_]
    terminated: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        reward = np.asarray(self.reward, np.float32)
        success = np.asarray(self.success, np.bool_)
        terminated = np.asarray(self.terminated, np.bool_)
        if not (reward.ndim == success.ndim == terminated.ndim == 1
                and len(reward) == len(success) == len(terminated)):
            raise ValueError(
                f"reward {reward.shape}, success {success.shape} and terminated "
                f"{terminated.shape} must all be (n,)")
        if not np.isfinite(reward).all():
            raise ValueError("a reward function returned NaN or inf")
        object.__setattr__(self, "reward", reward)
        object.__setattr__(self, "success", success)
        object.__setattr__(self, "terminated", terminated)


#: A reward function: pure and vectorised over the batch's steps.
RewardFn = Callable[[TransitionBatch], Rewards]


@dataclass(frozen=True)
class Registered:
    """A registered reward function and what it reads."""

    name: str
    version: str
    fn: RewardFn
    needs: tuple[str, ...]
    doc: str

    @property
    def id(self) -> str:
        """``name@version``, as it appears in the ``reward_fn`` column."""
        return f"{self.name}@{self.version}"

    def __call__(self, batch: TransitionBatch) -> Rewards:
        """Score ``batch``; raises :class:`RewardError` if it lacks a needed info array
        or the function returns rewards of the wrong length."""
        missing = [k for k in self.needs if k not in batch.info]
        if missing:
            raise RewardError(
                f"{self.id} needs info {list(self.needs)}; robot {batch.robot_id} "
                f"({batch.event.robot_type}) sends {sorted(batch.info)}")
        out = self.fn(batch)
        if len(out.reward) != len(batch):
            raise RewardError(f"{self.id} returned {len(out.reward)} rewards for "
                              f"{len(batch)} steps")
        return out


_REGISTRY: dict[str, Registered] = {}


def register(name: str, version: str, *, needs: tuple[str, ...] = ()
             ) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn`` as ``name@version``; ``needs`` names the ``info``
    arrays it reads.  Raises ``ValueError`` for a malformed name or a second, different
    function under the same id."""
    if not _NAME.match(name) or not _VERSION.match(version):
        raise ValueError(f"{name}@{version} is not a valid reward id (name@version: "
                         "lowercase name, version of letters, digits and ._+-)")

    def deco(fn: RewardFn) -> RewardFn:
        entry = Registered(name, version, fn, needs, (fn.__doc__ or "").strip())
        old = _REGISTRY.get(entry.id)
        if old is not None and old.fn is not fn:
            raise ValueError(f"reward {entry.id} is registered twice; register a new version")
        _REGISTRY[entry.id] = entry
        return fn

    return deco


def _load_plugins() -> None:
    # A broken plug-in is logged in one line by topics.plugins and skipped.
    if not plugins.load(ENTRY_POINTS):
        for module in PLUGIN_MODULES:
            importlib.import_module(module)
    # Learned rewards (``userctl rewards train``): versions found under USER_HOME/rewards.
    from pipeline.rewards import classifier

    classifier.register_learned()


def available() -> dict[str, Registered]:
    """Every registered reward function by id, built-ins included."""
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))


def lookup(reward_id: str) -> Registered:
    """The function registered as ``reward_id`` (``name@version``); raises ``KeyError``
    with a one-line message naming the known ids."""
    _load_plugins()
    try:
        return _REGISTRY[reward_id]
    except KeyError:
        raise KeyError(f"no reward function {reward_id!r} (known: "
                       f"{', '.join(sorted(_REGISTRY)) or 'none'}); see pipeline/README.md "
                       "to add one") from None


def apply(fn: Registered, batch: TransitionBatch) -> RewardedTransitionBatch:
    """``batch``'s steps with ``fn``'s rewards: the record a reward job publishes."""
    out = fn(batch)
    return RewardedTransitionBatch.from_raw(
        batch, reward_fn=fn.id, reward=out.reward, success=out.success,
        terminated=out.terminated)
