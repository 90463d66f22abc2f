"""The learner of one experiment: buffers fed by history and live steps, updates under an
update-to-data cap, weights published on a schedule, checkpoints and metrics (DESIGN §5).

Pure logic, no transport: steps come from a :class:`StepSource` (an iterator-like thing,
never a Kafka consumer), weights go to a :class:`Publisher` per robot type, metrics to a
:class:`MetricsSink`.  ``learners.service`` wires Delta, Kafka and signals around it; a
test wires in-memory fakes::

    learner = Learner(spec, policy_specs.get, publisher_for)
    learner.resume(checkpoints.latest())                 # optional: networks + update step
    for steps in history:                                # Delta, at one table version
        learner.add(steps, origin="history")
    reason = run(learner, live_source, metrics, checkpoints, stop_event, LoopSettings())

The algorithm and the policy kind are the spec's (``algorithm.name`` looked up in
:mod:`learners.registry`, ``policy.kind`` in :mod:`learners.policies`); this module names
neither.  One :class:`Learner` serves every robot type of a heterogeneous experiment: each
type gets its own algorithm, buffers and weights stream (:func:`learners.policies.weights_stream`),
because observation and action spaces differ between types.

No step is doubled: steps are deduplicated by step identity with the one rule every
reader shares (:class:`topics.tables.HighWater`, the Delta sink's too), so a reward job's
retry, an agent's re-sent spool, or a record both in the history and read again from
Kafka is taken once, whatever the robots' clocks did.  No step is lost as long as the
source continues where the history ended (the service seeks each partition to the Delta
app-transaction version + 1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from learners import checkpoint, lineage, outcomes, registry
from learners.core import JSON, NonFiniteUpdate, Sampler, StepBatch, TrainingState
from learners.policies import PolicySpec, non_finite, pads_actions, weights_stream
from learners.policies import shared as shared_input
from learners.replay import MixingSampler, NumpyReplayBuffer, ReplayConfig
from learners.weights_sync import PublisherStats, PublishSchedule, Snapshot, WeightSyncSettings
from schemas import events
from schemas.experiment import ExperimentSpec
from schemas.transitions import RewardedTransitionBatch
from topics import tables

log = logging.getLogger(__name__)

#: Where steps came from: the Delta history (at start) or the live stream.
Origin = Literal["history", "live"]

#: Fingerprints are kept below 2**52 so a float64 metric carries them exactly.
_FINGERPRINT_MASK = (1 << 52) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

#: Open episodes (seen succeed or taken over, end not arrived yet) kept at most, per type.
_OPEN_SUCCESSES = 10_000


# ---------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Steps:
    """Rewarded steps of one robot type of one experiment, ready for a replay buffer.

    ``steps.observation`` is flat (n, obs_dim); ``steps.truncated`` marks cut-off rows
    (truncated and not terminated) whose ``steps.next_observation`` holds the final
    observation; ``steps.action`` is the executed action and ``steps.intervention`` marks
    a human's.  ``(steps.robot_id, incarnation, seq)`` is each step's identity;
    ``success`` is the reward function's verdict per step.
    """

    experiment_id: str
    robot_type: str
    steps: StepBatch
    incarnation: np.ndarray
    """(n,) str: the agent incarnation that drove the robot."""
    seq: np.ndarray
    """(n,) int64: the step's number within its incarnation."""
    success: np.ndarray
    """(n,) bool."""

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def of_batch(cls, batch: RewardedTransitionBatch) -> Steps:
        """The steps of one rewarded batch (one robot)."""
        n = len(batch)
        observation = batch.observation.reshape(n, -1)
        next_observation = np.zeros_like(observation)
        finals = batch.final_observation.reshape(-1, observation.shape[1])
        next_observation[batch.truncated] = finals
        next_images = {}
        for cam, frames in batch.images.items():  # uint8 HWC, as they travelled
            next_images[cam] = np.zeros_like(frames)
            next_images[cam][batch.truncated] = batch.final_images[cam]
        steps = StepBatch(
            robot_id=np.full(n, batch.robot_id),
            episode_id=batch.episode_id,
            step=batch.step,
            observation=observation,
            action=batch.action.reshape(n, -1),
            reward=batch.reward,
            terminated=batch.terminated,
            policy_version=batch.policy_version,
            truncated=batch.cut_off,
            next_observation=next_observation,
            intervention=batch.intervention,
            images=dict(batch.images),
            next_images=next_images,
            instruction=np.full(n, batch.event.instruction),
        )
        return cls(batch.event.experiment_id, batch.event.robot_type, steps,
                   np.full(n, batch.event.incarnation), batch.seq, batch.success)

    def take(self, mask: np.ndarray) -> Steps:
        """The rows where ``mask`` is true."""
        s = self.steps
        picked = StepBatch(
            robot_id=s.robot_id[mask], episode_id=s.episode_id[mask], step=s.step[mask],
            observation=s.observation[mask], action=s.action[mask], reward=s.reward[mask],
            terminated=s.terminated[mask], policy_version=s.policy_version[mask],
            truncated=None if s.truncated is None else s.truncated[mask],
            next_observation=None if s.next_observation is None else s.next_observation[mask],
            intervention=None if s.intervention is None else s.intervention[mask],
            instruction=None if s.instruction is None else s.instruction[mask],
            images={cam: frames[mask] for cam, frames in s.images.items()},
            next_images={cam: frames[mask] for cam, frames in s.next_images.items()},
        )
        return Steps(self.experiment_id, self.robot_type, picked, self.incarnation[mask],
                     self.seq[mask], self.success[mask])

    def pieces(self, rows: int) -> list[Steps]:
        """Consecutive slices of at most ``rows`` rows (order kept)."""
        n = len(self)
        if n <= rows:
            return [self]
        out = []
        for start in range(0, n, rows):
            mask = np.zeros(n, dtype=bool)
            mask[start : start + rows] = True
            out.append(self.take(mask))
        return out


def fingerprint(robot_id: np.ndarray, episode_id: np.ndarray, step: np.ndarray) -> int:
    """An order-independent checksum of a set of step keys (robot, episode, step).

    Adding the fingerprints of disjoint sets gives the fingerprint of their union (mod
    2**52), so a step taken twice or missed changes it.  For tests and for comparing a
    learner's buffer with the Delta history.
    """
    n = len(step)
    if n == 0:
        return 0
    robots, robot_code = np.unique(np.asarray(robot_id).astype(np.str_), return_inverse=True)
    episodes, episode_code = np.unique(np.asarray(episode_id).astype(np.str_),
                                       return_inverse=True)
    h_robot = np.array([_hash64(f"r:{r}") for r in robots], dtype=np.uint64)
    h_episode = np.array([_hash64(f"e:{e}") for e in episodes], dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (h_robot[robot_code] * np.uint64(31)) ^ h_episode[episode_code]
        x = x + np.asarray(step).astype(np.uint64) * _GOLDEN
        x = _mix64(x)
        total = int(np.sum(x & np.uint64(_FINGERPRINT_MASK), dtype=np.uint64))
    return total & _FINGERPRINT_MASK


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips every output bit half the time."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


# ---------------------------------------------------------------------------- roles


class Publisher(Protocol):
    """Publishes one weights stream (``learners.weights_sync.WeightsPublisher``)."""

    stats: PublisherStats

    @property
    def published_version(self) -> int:
        """The newest version made durable by this publisher (0: none yet)."""
        ...

    def publish(self, snapshot: Snapshot) -> None:
        """Queue ``snapshot`` and return at once."""


#: Opens the publisher of a weights stream; returns it started, and the newest version
#: already published on that stream before (0 if none), so version lag stays honest.
PublisherFactory = Callable[[str], tuple[Publisher, int]]

#: A robot type's policy spec, or None while no robot of that type is known.
SpecResolver = Callable[[str], PolicySpec | None]


class StepSource(Protocol):
    """Live steps, drained without blocking."""

    def drain(self, max_items: int) -> list[Steps]:
        """Up to ``max_items`` items that have arrived; never blocks."""

    def wait(self, timeout_s: float) -> None:
        """Return when something can be drained, or after ``timeout_s``."""

    def positions(self) -> dict[str, int]:
        """``"topic:partition" -> next offset`` of everything drained so far."""


class MetricsSink(Protocol):
    def send(self, event: events.LearnerMetricsV1) -> None:
        """Queue one metrics event; never blocks on the network."""


# ---------------------------------------------------------------------------- one robot type


class _TypeLearner:
    """The algorithm, online and prior buffers, and the weights stream of one robot type."""

    def __init__(
        self,
        spec: ExperimentSpec,
        robot_type: str,
        policy_spec: PolicySpec,
        publisher_for: PublisherFactory,
        budget_bytes: int,
        clock: Callable[[], float],
        device: str = "cpu",
    ) -> None:
        self.robot_type = robot_type
        self.stream = weights_stream(spec.name, robot_type)
        self.policy_spec = policy_spec
        self.policy_kind = spec.policy.kind
        self.policy_options: dict[str, JSON] = registry.policy_options(spec)
        self.algorithm = registry.build_algorithm(registry.AlgorithmContext(
            spec, robot_type, policy_spec, self.policy_kind, self.policy_options,
            device=device))
        self.batch_rows = spec.algorithm.batch_size * self.algorithm.minibatches
        self.utd_ratio = spec.algorithm.utd_ratio
        self.warmup_steps = spec.algorithm.warmup_steps
        # Prior data gets half the type's budget when the spec mixes any in (RLPD).
        prior_share = 0.5 if spec.buffer.prior_experiments and spec.buffer.prior_ratio else 0.0
        shapes = ((policy_spec.observation_dim,), (policy_spec.action_dim,))
        size = spec.observation.image_size
        images = {cam: (size[0], size[1], 3) for cam in spec.observation.cameras}
        seed = spec.algorithm.seed
        hyper_seed = spec.algorithm.hyperparameters.get("seed", seed)
        self.seed = hyper_seed if isinstance(hyper_seed, int) else seed
        """the algorithm's seed (the mixing sampler's too)."""
        # A GPU learner keeps its frames on the GPU: no host copy per sample, and the
        # process's RSS stays clear of them.
        frames_on = None if device == "cpu" else device
        codec = spec.buffer.image_codec
        self.online = NumpyReplayBuffer(ReplayConfig(
            *shapes, memory_budget_bytes=int(budget_bytes * (1 - prior_share)),
            image_shapes=images, seed=seed, image_device=frames_on, image_codec=codec))
        self.prior = (NumpyReplayBuffer(ReplayConfig(
            *shapes, memory_budget_bytes=int(budget_bytes * prior_share), image_shapes=images,
            seed=seed + 1, image_device=frames_on, image_codec=codec)) if prior_share else None)
        self.prior_ratio = spec.buffer.prior_ratio
        self._mixing: Sampler | None = None
        self._custom = registry.sampler_factory(spec.algorithm.name)
        self.spec = spec
        sync = spec.weight_sync
        self.schedule = PublishSchedule(
            WeightSyncSettings(every_updates=sync.every_updates, every_s=sync.every_s),
            clock=clock)
        self.publisher, self.base_version = publisher_for(self.stream)
        self.published_step = -1
        self.env_steps = 0
        """this experiment's steps of this type taken (history + live), for the UTD cap."""
        self.counts = {"history": 0, "live": 0, "prior": 0, "rejected": 0}
        self.recorder: lineage.Recorder | None = None
        """the experiment's ingest log; snapshots carry their share of it."""
        self.skipped_updates = 0
        """updates skipped because a loss or gradient was not finite."""
        self.refused_snapshots = 0
        """policy snapshots not published because a tensor was not finite."""
        self.divergences = 0
        """non-finite updates and snapshots in a row (0 after a finite update)."""
        self.fingerprint = 0
        self.last_stats: dict[str, float] = {}
        self.resumed_step = 0
        """the update step restored from a checkpoint (0: started fresh)."""
        self.updates_at_tick = 0
        self.recent = deque[bool](maxlen=spec.stop.success_window)
        self.episodes = 0
        self._outcomes = outcomes.EpisodeOutcomes(_OPEN_SUCCESSES)

    @property
    def update_step(self) -> int:
        return self.algorithm.update_step

    @property
    def version(self) -> int:
        """The newest policy version robots can be running."""
        return max(self.base_version, self.publisher.published_version)

    def add(self, steps: Steps, origin: Origin | Literal["prior"]) -> int:
        buffer = self.prior if origin == "prior" else self.online
        if buffer is None:
            return 0
        # The ring refuses batches larger than itself; a quarter keeps linking intact.
        for piece in steps.pieces(max(1, buffer.capacity // 4)):
            try:
                buffer.add(piece.steps)
            except ValueError as exc:
                self.counts["rejected"] += len(piece)
                log.warning("%s: %d steps refused by the buffer: %s", self.stream, len(piece),
                            exc)
                return 0
        self.counts[origin] += len(steps)
        if origin != "prior":
            self.env_steps += len(steps)
            s = steps.steps
            self.fingerprint = (self.fingerprint + fingerprint(s.robot_id, s.episode_id, s.step)
                                ) & _FINGERPRINT_MASK
            self._track_success(steps)
        return len(steps)

    def _track_success(self, steps: Steps) -> None:
        """Episode outcomes for the stop condition (:mod:`learners.outcomes`: the policy's
        own success)."""
        s = steps.steps
        ended = np.asarray(s.terminated, bool)
        if s.truncated is not None:
            ended = ended | s.truncated
        for outcome in self._outcomes.feed(s.robot_id, s.episode_id, steps.success,
                                           s.intervention, ended):
            self.recent.append(outcome)
            self.episodes += 1

    def allowed_updates(self) -> int:
        """Updates the UTD cap allows so far: ``utd_ratio`` per step after warm-up, plus
        the algorithm's :attr:`~learners.core.Algorithm.offline_updates` once past it."""
        after = self.env_steps - self.warmup_steps
        offline = self.algorithm.offline_updates if after > 0 else 0
        return offline + math.floor(self.utd_ratio * max(0, after))

    def can_update(self) -> bool:
        return (len(self.online) > 0 and self.env_steps > self.warmup_steps
                and self.update_step < self.allowed_updates())

    def sampler(self) -> Sampler:
        if self._custom is not None:
            if self._mixing is None:
                self._mixing = self._custom(self.online, self.prior, self.spec)
            return self._mixing
        if self.prior is None or len(self.prior) == 0 or self.prior_ratio == 0:
            return self.online
        if self._mixing is None:
            self._mixing = MixingSampler(self.online, self.prior, self.prior_ratio,
                                         seed=self.seed)
        return self._mixing

    def update(self, trained_on: Mapping[str, int]) -> None:
        batch = self.sampler().sample(self.batch_rows, current_version=self.version)
        try:
            stats = self.algorithm.update(batch)
        except NonFiniteUpdate as exc:
            self.skipped_updates += 1
            self.divergences += 1
            # The first of a run is worth a WARNING; the rest would flood the log.
            (log.warning if self.divergences == 1 else log.debug)(
                "%s: update skipped at step %d (%s)", self.stream, self.update_step, exc)
            return
        self.divergences = 0
        self.last_stats = {**batch.stats, **stats}
        if (self.update_step > self.published_step and self.algorithm.ready_to_act()
                and self.schedule.due(self.update_step)):
            self.publish(trained_on)

    def publish(self, trained_on: Mapping[str, int]) -> None:
        """Snapshot the policy (a copy, on this thread) and hand it to the publisher,
        unless a tensor of it is not finite: robots never get such a version."""
        self.published_step = self.update_step
        snapshot = self.snapshot(trained_on)
        bad = non_finite(snapshot.tensors)
        if bad is not None:
            self.refused_snapshots += 1
            self.divergences += 1
            log.warning("%s: not publishing update step %d: %s", self.stream,
                        self.update_step, bad)
            return
        if self.recorder is not None:
            snapshot = dataclasses.replace(snapshot, lineage={
                **self.recorder.for_snapshot(self.stream, self.robot_type, self.update_step),
                "policy_spec": _policy_spec_json(self.policy_spec)})
        self.publisher.publish(snapshot)

    def snapshot(self, trained_on: Mapping[str, int]) -> Snapshot:
        """The acting policy now, as :meth:`publish` would send it (its blob's bytes are
        what a manifest's ``sha256`` covers)."""
        return Snapshot.of_algorithm(
            self.algorithm, kind=self.policy_kind, options=self.policy_options,
            spec=self.policy_spec, learner_step=self.update_step, trained_on=trained_on)

    def success_rate(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    def metrics(self, elapsed_s: float) -> dict[str, float | None]:
        updates = self.update_step - self.updates_at_tick
        self.updates_at_tick = self.update_step
        p = self.publisher.stats
        return {
            **self.last_stats,
            "charts/updates_per_s": updates / elapsed_s if elapsed_s > 0 else None,
            "charts/update_step": float(self.update_step),
            "charts/resumed_update_step": float(self.resumed_step),
            "charts/env_steps": float(self.env_steps),
            "charts/episodes": float(self.episodes),
            "charts/success_rate": self.success_rate(),
            "replay/size": float(len(self.online)),
            "replay/prior_size": float(len(self.prior)) if self.prior is not None else 0.0,
            "replay/history_steps": float(self.counts["history"]),
            "replay/live_steps": float(self.counts["live"]),
            "replay/prior_steps": float(self.counts["prior"]),
            "replay/rejected_steps": float(self.counts["rejected"]),
            "charts/skipped_updates": float(self.skipped_updates),
            "weights/refused_non_finite": float(self.refused_snapshots),
            "replay/steps_fingerprint": float(self.fingerprint),
            "replay/bytes": float(self.online.nbytes
                                  + (self.prior.nbytes if self.prior is not None else 0)),
            "weights/version": float(self.version),
            "weights/published": float(p.published),
            "weights/dropped": float(p.dropped),
            "weights/failed": float(p.failed),
            "weights/throttled_s": p.throttled_s,
            "weights/busy_s": p.busy_s,
            "weights/bytes_sent": float(p.bytes_sent),
        }


# ---------------------------------------------------------------------------- shared policy

#: The key of the one learner of an experiment whose policy is shared across robot types.
SHARED = "shared"


class _FanOut:
    """Publishes a shared policy's snapshots on every robot type's weights stream, each
    with its type's spec and the options robots of that type wrap the policy with."""

    def __init__(self, publishers: dict[str, Publisher],
                 resolve: Callable[[str], PolicySpec | None], pad_actions: bool = False) -> None:
        self._publishers = publishers
        self._resolve = resolve
        self._pad_actions = pad_actions
        self.stats = next(iter(publishers.values())).stats
        """the first type's publishing stats (every type publishes the same snapshots)."""

    @classmethod
    def open(cls, experiment: str, robot_types: tuple[str, ...],
             resolve: Callable[[str], PolicySpec | None],
             publisher_for: PublisherFactory, pad_actions: bool = False) -> tuple[_FanOut, int]:
        opened = {t: publisher_for(weights_stream(experiment, t)) for t in robot_types}
        return (cls({t: p for t, (p, _) in opened.items()}, resolve, pad_actions),
                max(v for _, v in opened.values()))

    @property
    def published_version(self) -> int:
        return max(p.published_version for p in self._publishers.values())

    def publish(self, snapshot: Snapshot) -> None:
        specs = {t: self._resolve(t) for t in self._publishers}
        known = {t: s for t, s in specs.items() if s is not None}
        if len(known) < len(specs):  # after a restore, before every type re-announced
            log.info("shared policy: not publishing until every robot type is known")
            return
        for robot_type, publisher in self._publishers.items():
            publisher.publish(dataclasses.replace(
                snapshot, spec=known[robot_type],
                options={**snapshot.options,
                         shared_input.OPTION: shared_input.options_for(
                             robot_type, known, self._pad_actions)}))


# ---------------------------------------------------------------------------- the learner


class Learner:
    """Every robot type's learner of one experiment, and the dedupe rule in front of them.

    ``resolve(robot_type)`` gives a type's :class:`PolicySpec` (from robot announcements);
    steps of a type it does not know yet wait until it does.
    """

    def __init__(
        self,
        spec: ExperimentSpec,
        resolve: SpecResolver,
        publisher_for: PublisherFactory,
        *,
        clock: Callable[[], float] = time.monotonic,
        device: str = "cpu",
    ) -> None:
        problems = registry.problems(spec)  # fail at start, not at the first step
        if problems:
            raise ValueError("; ".join(problems))
        self.spec = spec
        self.robot_types = tuple(dict.fromkeys(r.robot_type for r in spec.robots))
        self.shared = spec.policy.shared_across_types and len(self.robot_types) > 1
        """one policy for all types (``policy.shared_across_types``), kept under
        :data:`SHARED` in :attr:`types`."""
        self._budget = spec.buffer.memory_budget_mb * (1 << 20) // (
            1 if self.shared else len(self.robot_types))
        self._resolve = resolve
        self._publisher_for = publisher_for
        self._clock = clock
        self.device = device
        """where the algorithms train (``cuda``: the GPU benchmarks; the service: cpu)."""
        self.types: dict[str, _TypeLearner] = {}
        self._taken = tables.HighWater()
        self._waiting: dict[str, list[tuple[Steps, Origin]]] = {}
        self._ignored: set[tuple[str, str]] = set()
        self.duplicates = 0
        """rows dropped as steps already taken (same step identity)."""
        self.divergence_reloads = 0
        """times the last good checkpoint was reloaded after repeated divergence."""
        self.trained_on: dict[str, int] = {}
        """``topic:partition -> last offset`` the buffers hold data from (for snapshots)."""
        self.lineage = lineage.Recorder(
            streams=[weights_stream(spec.name, t) for t in self.robot_types])
        """what was ingested before which update (``learners.lineage``), for replay."""
        self.started = clock()
        self._tick = clock()

    # -- data in -----------------------------------------------------------------------

    def add(self, steps: Steps, origin: Origin) -> int:
        """Take new rows of ``steps`` into their type's buffer; returns how many were new.

        Rows of other experiments than this one and its ``prior_experiments`` are ignored,
        as are robot types the experiment does not ask for.
        """
        exp = steps.experiment_id
        prior = exp != self.spec.name
        if (prior and exp not in self.spec.buffer.prior_experiments) or (
                steps.robot_type not in self.robot_types):
            if (exp, steps.robot_type) not in self._ignored:
                self._ignored.add((exp, steps.robot_type))
                log.warning("ignoring %s steps of experiment %s: not part of %s", steps.robot_type,
                            exp, self.spec.name)
            return 0
        fresh = self._fresh(steps)
        if len(fresh) == 0:
            return 0
        learner = self._type(steps.robot_type)
        if learner is None:
            self._waiting.setdefault(steps.robot_type, []).append((fresh, origin))
            return len(fresh)
        return learner.add(self._encoded(fresh), "prior" if prior else origin)

    def _encoded(self, steps: Steps) -> Steps:
        """``steps`` as the shared policy sees them (padded + type one-hot), or as they
        are when each type has its own policy."""
        if not self.shared:
            return steps
        types = sorted(self.robot_types)
        spec = self.types[SHARED].policy_spec
        dim = spec.observation_dim - len(types)
        s = steps.steps
        nxt = s.next_observation
        encoded = dataclasses.replace(
            s, observation=shared_input.encode(s.observation, steps.robot_type, types, dim),
            action=shared_input.pad_actions(s.action, spec),
            next_observation=(None if nxt is None
                              else shared_input.encode(nxt, steps.robot_type, types, dim)))
        return dataclasses.replace(steps, steps=encoded)

    def _fresh(self, steps: Steps) -> Steps:
        """The rows not taken before, by step identity (``topics.tables``' rule)."""
        keep = self._taken.fresh(steps.seq, experiment_id=steps.experiment_id,
                                 robot_id=steps.steps.robot_id, incarnation=steps.incarnation)
        dropped = int((~keep).sum())
        if dropped:
            self.duplicates += dropped
            log.debug("dropped %d repeated steps of %s", dropped, steps.robot_type)
            return steps.take(keep)
        return steps

    def _type(self, robot_type: str) -> _TypeLearner | None:
        learner = self.types.get(SHARED if self.shared else robot_type)
        if learner is not None:
            return learner
        if self.shared:  # opens once every type's spec is known
            specs = {t: self._resolve(t) for t in self.robot_types}
            known = {t: s for t, s in specs.items() if s is not None}
            if len(known) < len(specs):
                return None
            return self._open(SHARED, shared_input.shared_spec(
                known, pads_actions(self.spec.policy.kind)))
        policy_spec = self._resolve(robot_type)
        if policy_spec is None:
            return None
        return self._open(robot_type, policy_spec)

    def _open(self, robot_type: str, policy_spec: PolicySpec) -> _TypeLearner:
        publisher_for = self._publisher_for
        if robot_type == SHARED:
            def publisher_for(_stream: str) -> tuple[Publisher, int]:
                return _FanOut.open(self.spec.name, self.robot_types, self._resolve,
                                    self._publisher_for, pads_actions(self.spec.policy.kind))
        learner = _TypeLearner(self.spec, robot_type, policy_spec, publisher_for,
                               self._budget, self._clock, self.device)
        learner.recorder = self.lineage
        self.types[robot_type] = learner
        log.info("learning %s: %s, observation %d, action %d, buffer %d steps",
                 learner.stream, f"{self.spec.algorithm.name} + {self.spec.policy.kind}",
                 policy_spec.observation_dim,
                 policy_spec.action_dim, learner.online.capacity)
        for waiting in (self.robot_types if robot_type == SHARED else (robot_type,)):
            for steps, origin in self._waiting.pop(waiting, []):
                prior = steps.experiment_id != self.spec.name
                learner.add(self._encoded(steps), "prior" if prior else origin)
        return learner

    def open_known(self) -> None:
        """Open the learner of every robot type whose spec is known now (before warm-start,
        so publishers and networks are ready when steps arrive)."""
        for robot_type in self.robot_types:
            self._type(robot_type)

    def retry_waiting(self) -> None:
        """Open the learners of types whose spec has become known since their steps came."""
        for robot_type in list(self._waiting):
            self._type(robot_type)

    # -- learning ----------------------------------------------------------------------

    def train_round(self) -> int:
        """One update of every robot type the UTD cap allows; returns how many ran."""
        done = 0
        for learner in self.types.values():
            if learner.can_update():
                learner.update(self.trained_on)
                done += 1
        return done

    def publish_all(self) -> None:
        """Publish every type's current policy if it changed since its last publish (and
        its algorithm is ready to act: not while it pre-trains)."""
        for learner in self.types.values():
            if (learner.update_step > learner.published_step
                    and learner.algorithm.ready_to_act()):
                learner.publish(self.trained_on)

    def diverged(self, limit: int) -> list[str]:
        """Robot types with at least ``limit`` non-finite updates or snapshots in a row."""
        return [t for t, lt in self.types.items() if lt.divergences >= limit]

    @property
    def update_step(self) -> int:
        """Updates of all robot types together."""
        return sum(t.update_step for t in self.types.values())

    @property
    def env_steps(self) -> int:
        return sum(t.env_steps for t in self.types.values())

    def stop_reason(self, capped: bool = True) -> str | None:
        """Why the experiment is done (its ``stop`` spec), or None to go on.

        The env-step budget ends the run only once ``capped`` (the updates those steps
        allow are done), so the last steps are learned from too.
        """
        stop = self.spec.stop
        if (capped and stop.max_env_steps is not None
                and self.env_steps >= stop.max_env_steps):
            return f"reached {self.env_steps} env steps (max_env_steps {stop.max_env_steps})"
        if stop.max_wall_s is not None and self._clock() - self.started >= stop.max_wall_s:
            return f"ran {stop.max_wall_s:g} s (max_wall_s)"
        rates = [t.success_rate() if len(t.recent) == stop.success_window else None
                 for t in (self.types.get(SHARED if self.shared else rt)
                           for rt in self.robot_types) if t is not None]
        if (len(rates) == len(self.robot_types) and all(r is not None for r in rates)
                and min(r for r in rates if r is not None) >= stop.target_success):
            return (f"success rate ≥ {stop.target_success:g} over the last "
                    f"{stop.success_window} episodes of every robot type")
        return None

    # -- metrics -----------------------------------------------------------------------

    def metrics_events(self, extra: Mapping[str, float] | None = None
                       ) -> list[events.LearnerMetricsV1]:
        """One metrics event per robot type (its weights stream), since the last call;
        ``extra`` (e.g. the step source's counts) goes into each."""
        now = self._clock()
        elapsed, self._tick = now - self._tick, now
        out = []
        for learner in self.types.values():
            metrics = learner.metrics(elapsed)
            metrics["replay/duplicates_dropped"] = float(self.duplicates)
            metrics["charts/divergence_reloads"] = float(self.divergence_reloads)
            metrics.update(extra or {})
            out.append(events.LearnerMetricsV1(
                experiment_id=learner.stream, learner_step=learner.update_step,
                policy_version=learner.version,
                metrics={k: _finite(v) for k, v in metrics.items()}))
        return out

    # -- checkpoints -------------------------------------------------------------------

    def training_state(self) -> TrainingState:
        """Every type's algorithm state, tensors prefixed ``<robot type>/``."""
        tensors = {}
        per_type: dict[str, JSON] = {}
        for robot_type, learner in self.types.items():
            state = learner.algorithm.state()
            tensors.update({f"{robot_type}/{k}": v for k, v in state.tensors.items()})
            per_type[robot_type] = state.meta
        meta: dict[str, JSON] = {"experiment_id": self.spec.name, "robot_types": per_type}
        return TrainingState(tensors, meta)

    def load_training_state(self, state: TrainingState) -> None:
        """Restore every robot type in ``state`` (its learner is opened with the spec it
        was trained for). Raises ``ValueError`` for another experiment's checkpoint or one
        this experiment's settings cannot load."""
        if state.meta.get("experiment_id") != self.spec.name:
            raise ValueError(f"checkpoint is of experiment {state.meta.get('experiment_id')!r}, "
                             f"not {self.spec.name!r}")
        per_type = state.meta.get("robot_types")
        if not isinstance(per_type, dict):
            raise ValueError("checkpoint has no robot_types")
        for robot_type, meta in per_type.items():
            if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
                raise ValueError(f"checkpoint entry of {robot_type!r} has no policy spec")
            raw = meta["spec"]
            assert isinstance(raw, dict)
            policy_spec = PolicySpec(
                observation_dim=int(raw["observation_dim"]),
                action_dim=int(raw["action_dim"]),
                action_low=tuple(float(x) for x in raw["action_low"]),
                action_high=tuple(float(x) for x in raw["action_high"]),
            )
            learner = self.types.get(robot_type) or self._open(robot_type, policy_spec)
            prefix = f"{robot_type}/"
            tensors = {k[len(prefix):]: v for k, v in state.tensors.items()
                       if k.startswith(prefix)}
            try:
                learner.algorithm.load_state(TrainingState(tensors, dict(meta)))
            except (KeyError, RuntimeError) as exc:
                raise ValueError(f"checkpoint of {robot_type} does not fit this experiment's "
                                 f"networks ({type(exc).__name__}: {exc}); start with --fresh "
                                 "or restore the experiment's policy/algorithm settings"
                                 ) from None
            learner.updates_at_tick = learner.update_step
            learner.published_step = learner.update_step
            learner.resumed_step = learner.update_step


def _policy_spec_json(spec: PolicySpec) -> JSON:
    return {"observation_dim": spec.observation_dim, "action_dim": spec.action_dim,
            "action_low": list(spec.action_low), "action_high": list(spec.action_high)}


def policy_spec_of(raw: JSON) -> PolicySpec:
    """The :class:`PolicySpec` of its JSON form (checkpoints, lineage). Raises
    ``ValueError``/``KeyError``/``TypeError`` for a malformed one."""
    if not isinstance(raw, dict):
        raise ValueError(f"a policy spec is a JSON object, not {raw!r:.60}")
    low, high = raw["action_low"], raw["action_high"]
    if not isinstance(low, list) or not isinstance(high, list):
        raise ValueError("policy spec action bounds are not lists")
    return PolicySpec(observation_dim=int(str(raw["observation_dim"])),
                      action_dim=int(str(raw["action_dim"])),
                      action_low=tuple(float(str(x)) for x in low),
                      action_high=tuple(float(str(x)) for x in high))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """A learner's checkpoint directory: atomic saves, the newest few kept."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = directory
        self.keep = keep

    def latest(self) -> Path | None:
        return checkpoint.latest(self.directory)

    def save(self, learner: Learner, positions: Mapping[str, JSON]) -> Path:
        """Write ``learner``'s state and the source ``positions`` (for the record)."""
        path = checkpoint.path_for(self.directory, learner.update_step)
        checkpoint.save_state(path, learner.training_state(), {
            **positions, "update_steps": {t: lt.update_step for t, lt in learner.types.items()},
            "env_steps": {t: lt.env_steps for t, lt in learner.types.items()},
        })
        checkpoint.prune(self.directory, self.keep)
        return path

    def resume(self, learner: Learner, path: Path) -> dict[str, JSON]:
        """Restore ``learner`` from ``path``; returns the positions saved with it."""
        state, positions = checkpoint.read(path)
        learner.load_training_state(state)
        return positions


def _reload_last_good(learner: Learner, checkpoints: Checkpoints | None,
                      diverged: list[str]) -> None:
    """Put every robot type back to the newest checkpoint (checkpoints are finite: saving
    refuses anything else), keeping the buffers; say so."""
    streaks = {t: learner.types[t].divergences for t in diverged}
    for type_learner in learner.types.values():
        type_learner.divergences = 0
    path = checkpoints.latest() if checkpoints is not None else None
    if checkpoints is None or path is None:
        log.warning("learner diverged (%s non-finite updates in a row) and has no checkpoint "
                    "to go back to; it keeps skipping non-finite updates", streaks)
        return
    try:
        checkpoints.resume(learner, path)
    except (OSError, ValueError) as exc:
        log.warning("learner diverged (%s non-finite updates in a row) but reloading %s "
                    "failed: %s", streaks, path.name, exc)
        return
    learner.divergence_reloads += 1
    log.warning("learner diverged (%s non-finite updates in a row): reloaded the last good "
                "checkpoint %s (update steps now %s)", streaks, path.name,
                {t: lt.update_step for t, lt in learner.types.items()})


# ---------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopSettings:
    """Timing of :func:`run`."""

    metrics_s: float = 5.0
    """publish learner metrics this often."""
    checkpoint_s: float = 60.0
    """checkpoint this often (and when stopping)."""
    idle_s: float = 0.05
    """longest wait for data when the UTD cap allows no update."""
    drain_items: int = 64
    """live items taken per loop iteration at most."""
    reload_after_divergences: int = 10
    """non-finite updates (or snapshots) of a robot type in a row after which the learner
    reloads its last good checkpoint."""


@dataclass
class LoopReport:
    """What :func:`run` did."""

    reason: str = ""
    checkpoints: list[Path] = field(default_factory=list)
    idle_s: float = 0.0
    """time spent waiting for data because the UTD cap was reached."""


def run(
    learner: Learner,
    source: StepSource,
    metrics: MetricsSink,
    checkpoints: Checkpoints | None,
    stop: threading.Event,
    settings: LoopSettings | None = None,
    *,
    positions: Callable[[], Mapping[str, JSON]] = dict,
    source_metrics: Callable[[], Mapping[str, float]] = dict,
    clock: Callable[[], float] = time.monotonic,
) -> LoopReport:
    """Learn until ``stop`` is set or the experiment's stop condition holds.

    Never waits for robots while an update is allowed: each iteration drains what has
    arrived, then runs one update per robot type the UTD cap allows; only when none is
    allowed does it wait (at most ``idle_s``) for data.  On the way out it publishes the
    final weights, sends metrics and writes a checkpoint.  ``positions()`` adds to what
    checkpoints record (e.g. the Delta version warm-started from); ``source_metrics()``
    adds to every metrics event (e.g. the source's dead letters and gaps).
    """
    settings = settings or LoopSettings()
    report = LoopReport()
    last_metrics = last_checkpoint = clock()

    def save() -> None:
        if checkpoints is None:
            return
        try:
            path = checkpoints.save(learner, {**positions(), "kafka": dict(source.positions())})
        except checkpoint.NonFiniteCheckpoint as exc:
            log.warning("checkpoint skipped: %s", exc)
            return
        report.checkpoints.append(path)
        log.info("checkpoint %s (update step %d)", path.name, learner.update_step)

    while True:
        if stop.is_set():
            report.reason = "stopped"
            break
        before = source.positions()
        for steps in source.drain(settings.drain_items):
            learner.add(steps, "live")
        after = source.positions()
        # Replay needs what was taken before which update (wall time decides it here).
        learner.lineage.ingested(learner.update_step, before, after)
        # Snapshots name the last offset each partition's data came from.
        learner.trained_on = {k: v - 1 for k, v in after.items()}
        done = learner.train_round()
        diverged = learner.diverged(settings.reload_after_divergences)
        if diverged:
            _reload_last_good(learner, checkpoints, diverged)
        now = clock()
        if now - last_metrics >= settings.metrics_s:
            learner.retry_waiting()
            for event in learner.metrics_events(source_metrics()):
                metrics.send(event)
            last_metrics = now
        if checkpoints is not None and now - last_checkpoint >= settings.checkpoint_s:
            save()
            last_checkpoint = now
        reason = learner.stop_reason(capped=done == 0)
        if reason is not None:
            report.reason = reason
            break
        if done == 0:
            waited = clock()
            source.wait(settings.idle_s)
            report.idle_s += clock() - waited
    learner.publish_all()
    for event in learner.metrics_events(source_metrics()):
        metrics.send(event)
    save()
    return report
