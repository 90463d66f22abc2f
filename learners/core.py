"""The learner's roles as small interfaces, and the data that flows between them.

Acme-style: each role is one abstract class of a few methods; nothing here knows about
Kafka or Delta. A learner process wires them together roughly like this::

    buffer: ReplayBuffer = replay.ReplayBuffer(config)      # fed by an adapter
    sampler: Sampler = replay.MixingSampler(buffer, prior)   # RLPD; or just `buffer`
    algorithm: Algorithm = sac.SAC(policy_spec, sac.SACConfig.rlpd())
    for steps in transition_batches:                         # an iterator, never a Consumer
        buffer.add(steps)
        batch = sampler.sample(batch_size * utd_ratio, current_version=version)
        stats = {**batch.stats, **algorithm.update(batch)}
        if time_to_publish:
            weights_bytes = policies.to_safetensors(algorithm.policy_weights())

and an agent runs a policy it got from ``learners.policies``::

    policy: Policy = policies.build("mlp_gaussian", spec)
    policy.load_weights(policies.from_safetensors(weights_bytes))
    while running:
        action = policy.act(observation[None], deterministic=False)[0]

Arrays cross these interfaces as numpy (what robots and topics speak); tensors appear only
inside a learner, in :class:`Batch` and :class:`TrainingState`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

#: A JSON value, for checkpoint metadata and caller-given source positions.
JSON = None | bool | int | float | str | Sequence["JSON"] | Mapping[str, "JSON"]

#: Policy weights: a flat name -> array mapping, the safetensors layout.
Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class StepBatch:
    """Consecutive steps of one or more episodes, as numpy columns of equal length ``n``.

    This is what the transition topics carry (one row per control step). Row ``i`` says:
    in ``observation[i]`` the robot took ``action[i]``, got ``reward[i]``, and the episode
    then ``terminated[i]`` (a true end: no bootstrapping) or was ``truncated[i]`` (cut off,
    e.g. by a time limit: bootstrap from the next observation).

    The next observation of step ``t`` is the observation of step ``t + 1`` of the same
    ``(robot_id, episode_id)``, whether it is in this batch or a later one. A step that
    ends an episode by truncation has no successor, so its row must carry
    ``next_observation`` (the final observation); that column is read only for such rows
    and may hold anything (e.g. NaN) elsewhere.
    """

    robot_id: np.ndarray
    """(n,) robot identifiers (any dtype np.unique accepts: str, int)."""
    episode_id: np.ndarray
    """(n,) episode identifiers, unique per robot."""
    step: np.ndarray
    """(n,) int step index within the episode."""
    observation: np.ndarray
    """(n, *obs_shape) state observation."""
    action: np.ndarray
    """(n, *action_shape) action the robot executed (a human's where ``intervention``)."""
    reward: np.ndarray
    """(n,) reward for that step."""
    terminated: np.ndarray
    """(n,) bool: the episode ended for real after this step."""
    policy_version: np.ndarray
    """(n,) int policy version that chose the action."""
    truncated: np.ndarray | None = None
    """(n,) bool: the episode was cut off after this step; None means all False."""
    next_observation: np.ndarray | None = None
    """(n, *obs_shape) final observation, required where ``truncated`` is true."""
    images: Mapping[str, np.ndarray] = field(default_factory=dict)
    """camera name -> (n, h, w, 3) uint8 images, seen with ``observation``."""
    next_images: Mapping[str, np.ndarray] = field(default_factory=dict)
    """camera name -> (n, h, w, 3) uint8 final images, like ``next_observation``."""
    intervention: np.ndarray | None = None
    """(n,) bool: a human overrode the policy (``action`` is the human's); None means
    all False."""
    instruction: np.ndarray | None = None
    """(n,) str: the task in words the robot ran the step under ("": the experiment's
    default); None means all ""."""

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray]) -> StepBatch:
        """Build from a column mapping (e.g. an Arrow batch converted to numpy).

        Columns this class does not know (``site``, ``produced_at`` …) are ignored.
        Raises ``KeyError`` naming a missing required column.
        """
        known = {f.name for f in fields(cls)} - {"images", "next_images"}
        kwargs: dict[str, Any] = {
            name: np.asarray(col) for name, col in columns.items() if name in known
        }
        return cls(**kwargs)


@dataclass(frozen=True)
class Batch:
    """Sampled transitions ``(s, a, r, s', terminated)`` as torch tensors, first dim = batch.

    ``stats`` holds sampling metrics (``replay/version_lag_mean`` …) to log with the
    update's own metrics.
    """

    observation: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_observation: torch.Tensor
    terminated: torch.Tensor
    """float 0/1: 1 means do not bootstrap from ``next_observation``."""
    policy_version: torch.Tensor
    """int64 version of the policy that chose ``action``."""
    images: Mapping[str, torch.Tensor] = field(default_factory=dict)
    next_images: Mapping[str, torch.Tensor] = field(default_factory=dict)
    stats: Mapping[str, float] = field(default_factory=dict)
    intervention: torch.Tensor | None = None
    """bool: a human chose ``action`` (None: not recorded, i.e. no interventions)."""
    action_chunk: torch.Tensor | None = None
    """(batch, H, *action_shape): ``action`` and the H - 1 actions executed after it in
    its episode, the last one repeated past the episode's end (None: not asked for;
    samplers fill it for algorithms that learn action chunks)."""
    instruction: tuple[str, ...] | None = None
    """each row's instruction ("": the experiment's default; None: not recorded)."""

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The same rows on ``device`` (stats unchanged)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Batch(
            observation=move(self.observation), action=move(self.action),
            reward=move(self.reward), next_observation=move(self.next_observation),
            terminated=move(self.terminated), policy_version=move(self.policy_version),
            images={k: move(v) for k, v in self.images.items()},
            next_images={k: move(v) for k, v in self.next_images.items()},
            stats=self.stats,
            intervention=None if self.intervention is None else move(self.intervention),
            action_chunk=None if self.action_chunk is None else move(self.action_chunk),
            instruction=self.instruction)

    def split(self, n: int) -> list[Batch]:
        """Cut into ``n`` equal consecutive minibatches (for update-to-data ratio ``n``).

        Raises ``ValueError`` if ``len(self)`` is not a multiple of ``n``.
        """
        if n <= 0 or len(self) % n:
            raise ValueError(f"cannot split a batch of {len(self)} rows into {n} equal parts")
        size = len(self) // n

        def part(t: torch.Tensor, k: int) -> torch.Tensor:
            return t[k * size : (k + 1) * size]

        return [
            Batch(
                observation=part(self.observation, k),
                action=part(self.action, k),
                reward=part(self.reward, k),
                next_observation=part(self.next_observation, k),
                terminated=part(self.terminated, k),
                policy_version=part(self.policy_version, k),
                images={name: part(t, k) for name, t in self.images.items()},
                next_images={name: part(t, k) for name, t in self.next_images.items()},
                stats=self.stats,
                intervention=None if self.intervention is None else part(self.intervention, k),
                action_chunk=None if self.action_chunk is None else part(self.action_chunk, k),
                instruction=(None if self.instruction is None
                             else self.instruction[k * size : (k + 1) * size]),
            )
            for k in range(n)
        ]


@dataclass(frozen=True)
class TrainingState:
    """Everything an algorithm needs to resume: tensors, plus JSON for the rest."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, JSON]


class Policy(abc.ABC):
    """Maps observations to actions; what an agent runs between control steps.

    Not thread-safe: an agent loads new weights between control steps, not during one.
    """

    #: Cameras the policy reads (``images`` of :meth:`act`); empty for state policies.
    cameras: tuple[str, ...] = ()

    @abc.abstractmethod
    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Actions for a batch of observations, shape (batch, *action_shape), float32.

        Actions lie within the robot's action bounds. ``deterministic`` picks the mode
        (evaluation) instead of sampling (exploration).  ``images`` (camera -> (batch, h,
        w, 3) uint8) must hold every camera in :attr:`cameras`; state policies ignore it.
        """

    @abc.abstractmethod
    def load_weights(self, weights: Weights) -> None:
        """Replace all weights. Raises ``ValueError`` if names or shapes do not match."""

    @abc.abstractmethod
    def export_weights(self) -> dict[str, np.ndarray]:
        """A copy of all weights, loadable by ``load_weights`` of the same kind and spec."""


class NonFiniteUpdate(ArithmeticError):
    """An update whose loss or gradient was NaN or infinite; its optimiser step was not
    taken, so no parameter holds a non-finite value because of it."""


class Algorithm(abc.ABC):
    """Turns batches of transitions into better policy weights."""

    #: Minibatches one :meth:`update` takes (its update-to-data ratio): callers sample
    #: ``batch_size * minibatches`` rows.
    minibatches: int = 1
    #: Updates taken so far (restored by :meth:`load_state`).
    update_step: int = 0
    #: Updates the algorithm takes on the data at hand before the update-to-data cap
    #: applies (pre-training on demos: DSRL's and FQL's phases); the learner grants them
    #: at once after warm-up instead of making robots run the unfitted policy for them.
    offline_updates: int = 0

    def ready_to_act(self) -> bool:
        """Whether :meth:`policy_weights` are worth running on robots yet.  False while an
        algorithm pre-trains (DSRL before its flow is fitted, FQL before its one-step
        policy is distilled): the learner publishes nothing until then, so robots keep
        the version they have."""
        return True

    @abc.abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One learner update on ``batch``; returns namespaced metrics (``losses/critic``).

        An algorithm with an update-to-data ratio ``G`` above 1 splits the batch into
        ``G`` minibatches, so callers sample ``batch_size * G`` rows.  Raises
        :class:`NonFiniteUpdate` when a loss or gradient is not finite: that optimiser
        step and the rest of the update are skipped (steps already taken stay), and the
        update does not count.
        """

    @abc.abstractmethod
    def policy_weights(self) -> dict[str, np.ndarray]:
        """A snapshot of the acting policy's weights, safe to publish from another thread."""

    @abc.abstractmethod
    def state(self) -> TrainingState:
        """Everything needed to resume: networks, optimisers, temperature, step, RNG."""

    @abc.abstractmethod
    def load_state(self, state: TrainingState) -> None:
        """Restore from ``state()``; the next ``update`` then matches the saved run's."""


class Sampler(abc.ABC):
    """Draws training batches."""

    @abc.abstractmethod
    def sample(self, batch_size: int, current_version: int = 0) -> Batch:
        """``batch_size`` transitions, uniformly from what the sampler holds.

        ``current_version`` is the learner's newest policy version, for the version-lag
        stat. Raises ``LookupError`` while there is nothing to sample.
        """


class ReplayBuffer(Sampler):
    """A sampler that transitions are added to."""

    @abc.abstractmethod
    def add(self, steps: StepBatch) -> int:
        """Store a batch of steps; returns how many transitions became sampleable."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of sampleable transitions held."""
