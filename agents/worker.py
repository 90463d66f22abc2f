"""One robot's life under leases and commands, one control period at a time.

:class:`RobotWorker` holds no Kafka: it is handed an :class:`~agents.outbox.EventSink`
to put events into, the current lease, and the commands that arrived.  The agent
process (:mod:`agents.agent`) calls :meth:`RobotWorker.tick` once per control period.

What a row of a raw transition batch means here: the robot saw ``observation[i]`` (and
``images[i]``), the policy of ``policy_version[i]`` proposed an action, the robot executed
``action[i]`` — the proposal, or the human's action where a takeover device overrode it
(``intervention[i]``; the proposal is then kept as ``policy_action[i]``) — and that led
to ``info[i]``, the privileged task state *after* the action, which is what a reward
function scores.  When an episode ends, its last row is marked ``truncated``, carries the
final observation, since no later row holds it, and says why in ``end_reason``.

Step identity: each time the worker takes the robot (a lease it did not hold, and so in
every new agent process) it mints a new ``incarnation`` and counts the steps it records
in it from 0 (``seq``).  The identity ``(robot_id, incarnation, seq)`` travels in the
batch and so in the spool: a re-sent record keeps it, a clock that steps back cannot
touch it, and a second process driving the same robot id records visibly separate steps.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agents import safety
from agents.chunking import ChunkExecutor
from agents.outbox import EventSink
from agents.policies import ChunkPolicy, NoActionDue, PolicyFn, propose
from agents.robot import RobotError, Step
from agents.spool import SpoolFull
from schemas import events as ev
from schemas.transitions import TransitionBatch
from topics import catalog, serde

State = ev.RobotState

log = logging.getLogger(__name__)

#: A takeover device: ``(observation, the policy's proposal) -> the human's action`` when
#: a person overrides the policy for this step, else ``None`` (``agents.takeover``; its
#: ``reset()`` is called at each episode start and ``close()`` at the end, when present).
Takeover = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]],
                    npt.NDArray[np.float32] | None]


def mint_incarnation() -> str:
    """A new incarnation id: unique per taking of a robot, whatever the clocks say."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Lease:
    experiment_id: str
    lease_id: str
    instruction: str = ""
    """the task in words the experiment asks this robot to run ("": the worker's own)."""


@dataclass
class _Rows:
    """Steps recorded since the last flush (column lists, turned into arrays at flush)."""

    episode_id: list[str] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    observation: list[npt.NDArray[np.float32]] = field(default_factory=list)
    action: list[npt.NDArray[np.float32]] = field(default_factory=list)
    intervention: list[bool] = field(default_factory=list)
    policy_action: list[npt.NDArray[np.float32]] = field(default_factory=list)
    end_reason: list[str] = field(default_factory=list)
    policy_version: list[int] = field(default_factory=list)
    observed_ns: list[int] = field(default_factory=list)
    acted_ns: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    final_observation: list[npt.NDArray[np.float32]] = field(default_factory=list)
    info: dict[str, list[npt.NDArray[np.float32]]] = field(default_factory=dict)
    images: dict[str, list[npt.NDArray[np.uint8]]] = field(default_factory=dict)
    final_images: dict[str, list[npt.NDArray[np.uint8]]] = field(default_factory=dict)
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class _Episode:
    episode_id: str
    experiment_id: str
    started: float
    step: Step
    index: int = 0
    first_version: int = 0
    last_version: int = 0
    interventions: int = 0
    takeovers: int = 0
    taken: bool = False


class RobotWorker:
    """Runs episodes for the leased experiment and obeys commands.

    States: ``idle`` (no lease; the robot is not driven), ``running`` (episodes back to
    back), ``paused`` (holds, the episode stays open, nothing is recorded), ``stopped``
    (episode ended, no new one until ``resume``), ``estopped`` (the e-stop latch holds
    the robot until ``resume``).  E-stop is obeyed before anything else in a period.
    """

    def __init__(
        self,
        robot: safety.Guarded,
        *,
        robot_id: str,
        site: str,
        sink: EventSink,
        policy: Callable[[], tuple[PolicyFn, int]],
        flush_steps: int = 50,
        flush_s: float = 0.5,
        flush_stagger_s: float | None = None,
        run_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        takeover: Takeover | None = None,
        instruction: str = "",
    ) -> None:
        self.robot = robot
        self.robot_id = robot_id
        self.site = site
        self.sink = sink
        self._policy = policy
        self.flush_steps = flush_steps
        self.flush_s = flush_s
        # With a stagger (None: none, flush by the age of the oldest row), age flushes
        # happen on this robot's own slots (every flush_s, offset by the stagger), so the
        # robots of one agent (started together, their episodes ending in the same
        # period) flush in different periods, not all in one (issue 17: a period that
        # encoded and spooled every robot's batch missed its deadline).  A row still
        # waits at most flush_s.
        self._flush_stagger_s = flush_stagger_s
        self._flush_slot: float | None = None
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._clock = clock
        self._wall_ns = wall_ns
        self._takeover = takeover
        self.instruction = instruction
        """the task in words this robot runs unless its lease says otherwise (recorded
        with its steps; "" = the experiment's default), for language-conditioned policies."""
        self._chunks = ChunkExecutor()
        #: This worker's hold on the robot (module docstring); minted per lease taken.
        self.incarnation = mint_incarnation()
        self._seq = 0
        self.state = State.IDLE
        self.lease: Lease | None = None
        self.steps_total = 0
        self.episodes_total = 0
        self.policy_version = 0
        self._episode: _Episode | None = None
        self._rows = _Rows()
        self._n_episodes = 0
        # Back-pressure: events the sink refused with SpoolFull, kept in order until it
        # has room; while any wait, the robot is held (its episode stays open).
        self._unsent: list[tuple[catalog.TopicSpec, serde.Payload]] = []
        self.spool_full = False
        #: Control periods held because the (remote) policy had no action due.
        self.held_no_action = 0

    @property
    def told(self) -> str:
        """The instruction the robot runs now: its lease's, else its own (a lease change
        flushes first, so a batch's rows were all run under one)."""
        return (self.lease.instruction if self.lease is not None else "") or self.instruction

    # -- one control period --------------------------------------------------------------------

    def tick(self, lease: Lease | None, commands: list[ev.CommandKind]) -> None:
        """Apply commands, follow the lease, and take at most one control step."""
        if ev.CommandKind.ESTOP in commands:
            # An e-stop voids whatever was ordered before it; only what came after it
            # (in arrival order) still applies.
            last = len(commands) - 1 - commands[::-1].index(ev.CommandKind.ESTOP)
            commands = commands[last:]
        for command in commands:
            self._command(command)
        if lease != self.lease:
            self._end_episode(ev.EpisodeEndReason.STOPPED)
            self.flush()
            self.lease = lease
            if lease is not None:
                self.incarnation, self._seq = mint_incarnation(), 0
            if self.state in (State.RUNNING, State.IDLE):
                self.state = State.RUNNING if lease is not None else State.IDLE
        if self._unsent:
            self._resend()
        if self.state is State.ESTOPPED:
            self.robot.hold()
        elif self.spool_full:
            # The spool is full: no step is taken that could not be kept.  The robot
            # holds (an open episode stays open, like a pause) until there is room.
            self.robot.hold()
        elif self.state is State.PAUSED:
            if self._episode is not None:
                held = self.robot.hold()
                if held.unstable:  # the held period counts toward the episode
                    self._unstable(held.unstable)
        elif self.state is State.RUNNING and self.lease is not None:
            self._step()
        if len(self._rows) and (len(self._rows) >= self.flush_steps or self._flush_due()):
            self.flush()

    def _flush_due(self) -> bool:
        """The recorded rows are old enough to send (see ``flush_stagger_s`` in ``__init__``)."""
        now = self._clock()
        if self._flush_stagger_s is None:
            return now - self._rows.started >= self.flush_s
        if self._flush_slot is None:
            self._flush_slot = self._rows.started + max(self.flush_s - self._flush_stagger_s,
                                                        0.0)
        if self._flush_slot <= self._rows.started:  # rows begun after an idle spell
            self._flush_slot += ((self._rows.started - self._flush_slot) // self.flush_s
                                 + 1) * self.flush_s
        if now < self._flush_slot:
            return False
        missed = (now - self._flush_slot) // self.flush_s + 1
        self._flush_slot += missed * self.flush_s
        return True

    def _command(self, command: ev.CommandKind) -> None:
        if command is ev.CommandKind.ESTOP:
            self.robot.estop()
            self._end_episode(ev.EpisodeEndReason.ESTOPPED)
            self.state = State.ESTOPPED
        elif command is ev.CommandKind.PAUSE and self.state is State.RUNNING:
            self.state = State.PAUSED
        elif command is ev.CommandKind.STOP:
            self._end_episode(ev.EpisodeEndReason.STOPPED)
            if self.state is not State.ESTOPPED:
                self.state = State.STOPPED
        elif command is ev.CommandKind.RESUME:
            if self.state is State.ESTOPPED:
                self.robot.release()
            if self.state in (State.ESTOPPED, State.PAUSED, State.STOPPED):
                self.state = State.RUNNING if self.lease is not None else State.IDLE

    def _step(self) -> None:
        assert self.lease is not None
        policy, version = self._policy()
        self.policy_version = version
        if self._episode is None:
            self._start_episode(version)
            reset = getattr(policy, "reset", None)
            if reset is not None:  # a remote policy's chunk was for the last episode
                reset()
        episode = self._episode
        assert episode is not None
        seen = episode.step
        observed_ns = self._wall_ns()
        try:
            if isinstance(policy, ChunkPolicy):
                # A chunked policy: this robot's queue of planned actions (reset at
                # episode starts, after takeovers and when the version changes).
                images = seen.images
                proposal = self._chunks.next(lambda obs: policy.chunk(obs, images),
                                             seen.observation, policy.execution, version)
            else:
                proposal = np.asarray(propose(policy, seen.observation, seen.images),
                                      dtype=np.float32)
        except NoActionDue:
            # A remote policy has no action due: hold safely, record nothing (issue 14).
            # Time passes while held: the next step sees the state now, and a hold can
            # run into the episode's time limit.
            held = self.robot.hold()
            self.held_no_action += 1
            episode.step = held
            if held.unstable:
                self._unstable(held.unstable)
            elif held.done:
                self._end_episode(ev.EpisodeEndReason.TIME_LIMIT)
            return
        human = None if self._takeover is None else self._takeover(seen.observation, proposal)
        action = proposal if human is None else np.asarray(human, dtype=np.float32)
        if human is not None:
            self._chunks.reset()  # the plan was for a state the human has since left
            episode.interventions += 1
            if not episode.taken:  # a takeover starts (it ends at the next None)
                episode.takeovers += 1
                log.info("%s: takeover in %s at step %d: %s", self.robot_id,
                         episode.episode_id, episode.index,
                         getattr(self._takeover, "reason", "") or "operator")
        episode.taken = human is not None
        try:
            step = self.robot.step(action)
        except RobotError:
            self._end_episode(ev.EpisodeEndReason.ROBOT_ERROR)
            raise
        rows = self._rows
        if not len(rows):
            rows.started = self._clock()
        rows.episode_id.append(episode.episode_id)
        rows.step.append(episode.index)
        rows.seq.append(self._seq)
        self._seq += 1
        rows.observation.append(seen.observation)
        rows.action.append(action)
        rows.intervention.append(human is not None)
        rows.policy_action.append(proposal)
        rows.end_reason.append("")
        rows.policy_version.append(version)
        rows.observed_ns.append(observed_ns)
        rows.acted_ns.append(self._wall_ns())
        rows.truncated.append(step.done)
        for name, value in step.info.items():
            rows.info.setdefault(name, []).append(value)
        for name, image in seen.images.items():
            rows.images.setdefault(name, []).append(image)
        if step.done:
            rows.final_observation.append(step.observation)
            for name, image in step.images.items():
                rows.final_images.setdefault(name, []).append(image)
        episode.step = step
        episode.index += 1
        episode.last_version = version
        self.steps_total += 1
        if step.unstable:
            self._unstable(step.unstable)
        elif step.done:
            self._end_episode(ev.EpisodeEndReason.TASK_DONE if step.terminated
                              else ev.EpisodeEndReason.TIME_LIMIT)

    def _unstable(self, why: str) -> None:
        """The simulator broke: end the episode there (never a silent mid-episode reset)."""
        log.warning("%s: episode ends, simulation unstable: %s", self.robot_id, why[:200])
        self._end_episode(ev.EpisodeEndReason.SIM_UNSTABLE, detail=why)

    def _start_episode(self, version: int) -> None:
        assert self.lease is not None
        self._n_episodes += 1
        episode_id = f"{self.robot_id}.{self.run_id}.{self._n_episodes:06d}"
        first = self.robot.reset()
        self._chunks.reset()
        reset = getattr(self._takeover, "reset", None)
        if reset is not None:  # a new episode: the policy has control
            reset()
        self._episode = _Episode(episode_id, self.lease.experiment_id, self._clock(), first,
                                 first_version=version, last_version=version)
        self._send(catalog.EPISODES, ev.EpisodeStartedV1(
            site=self.site, robot_id=self.robot_id, experiment_id=self.lease.experiment_id,
            episode_id=episode_id, policy_version=version,
            task=self.robot.spec.task,
        ))

    def _end_episode(self, reason: ev.EpisodeEndReason, detail: str = "") -> None:
        episode = self._episode
        if episode is None:
            return
        rows = self._rows
        if len(rows) and rows.episode_id[-1] == episode.episode_id:
            if not rows.truncated[-1]:
                # Cut off mid-episode (lease change, stop, e-stop): the last row has no
                # successor, so it carries the final observation.
                rows.truncated[-1] = True
                rows.final_observation.append(episode.step.observation)
                for name, image in episode.step.images.items():
                    rows.final_images.setdefault(name, []).append(image)
            rows.end_reason[-1] = reason.value
        self.flush()
        self._episode = None
        self.episodes_total += 1
        self._send(catalog.EPISODES, ev.EpisodeEndedV1(
            site=self.site, robot_id=self.robot_id, experiment_id=episode.experiment_id,
            episode_id=episode.episode_id, steps=episode.index, reason=reason,
            detail=detail[:1000], duration_s=max(0.0, self._clock() - episode.started),
            first_policy_version=episode.first_version,
            last_policy_version=episode.last_version,
            interventions=episode.interventions, takeovers=episode.takeovers,
            success=True if reason is ev.EpisodeEndReason.TASK_DONE else None,
        ))

    def flush(self) -> None:
        """Send the recorded steps as one raw transition batch (per experiment)."""
        rows = self._rows
        if not len(rows):
            return
        self._rows = _Rows()
        experiment_id = self._episode.experiment_id if self._episode else (
            self.lease.experiment_id if self.lease else None)
        # Rows always belong to one experiment: a lease change ends the episode and
        # flushes before the new lease's first step.
        assert experiment_id is not None
        intervention = np.array(rows.intervention, np.bool_)
        proposals = np.stack(rows.policy_action)
        took = intervention.reshape(-1, *(1,) * (proposals.ndim - 1))
        batch = TransitionBatch.build(
            ev.TransitionBatchV2(
                site=self.site, robot_id=self.robot_id, experiment_id=experiment_id,
                robot_type=self.robot.spec.robot_type, n_steps=len(rows),
                incarnation=self.incarnation, instruction=self.told,
            ),
            episode_id=np.array(rows.episode_id), step=np.array(rows.step, np.int64),
            seq=np.array(rows.seq, np.int64),
            observation=np.stack(rows.observation), action=np.stack(rows.action),
            intervention=intervention,
            policy_action=np.where(took, proposals, np.float32(0)),
            end_reason=np.array(rows.end_reason, np.str_),
            policy_version=np.array(rows.policy_version, np.int64),
            observed_ns=np.array(rows.observed_ns, np.int64),
            acted_ns=np.array(rows.acted_ns, np.int64),
            truncated=np.array(rows.truncated, np.bool_),
            final_observation=(np.stack(rows.final_observation)
                               if rows.final_observation else None),
            info={k: np.stack(v) for k, v in rows.info.items()} or None,
            images={k: np.stack(v) for k, v in rows.images.items()} or None,
            final_images={k: np.stack(v) for k, v in rows.final_images.items()} or None,
        )
        self._send(catalog.TRANSITIONS_RAW, batch)

    def _send(self, spec: catalog.TopicSpec, payload: serde.Payload) -> None:
        """Hand an event to the sink; if its spool is full, keep it (in order) for
        :meth:`_resend` and hold the robot meanwhile.  Never raises ``SpoolFull``."""
        if not self._unsent:
            try:
                self.sink.send(spec, payload)
                return
            except SpoolFull as exc:
                log.warning("%s: %s", self.robot_id, exc)
                self.spool_full = True
        self._unsent.append((spec, payload))

    def _resend(self) -> None:
        """Retry the held events in order; episodes resume once all are accepted."""
        while self._unsent:
            spec, payload = self._unsent[0]
            try:
                self.sink.send(spec, payload)
            except SpoolFull:
                self.spool_full = True
                return
            self._unsent.pop(0)
        if self.spool_full:
            log.warning("%s: the spool has room again; episodes resume", self.robot_id)
        self.spool_full = False

    def heartbeat(self, seq: int, uptime_s: float, *, spool_bytes: int = 0,
                  dead_letters: int = 0) -> ev.HeartbeatV1:
        return ev.HeartbeatV1(
            site=self.site, robot_id=self.robot_id,
            experiment_id=self.lease.experiment_id if self.lease else None,
            seq=seq, state=self.state, policy_version=self.policy_version,
            steps_total=self.steps_total, uptime_s=uptime_s, incarnation=self.incarnation,
            spool_bytes=spool_bytes, spool_full=self.spool_full, dead_letters=dead_letters,
        )

    def close(self) -> None:
        self._end_episode(ev.EpisodeEndReason.STOPPED)
        # Whatever still waits for room is written past the spool's budget: a few more
        # bytes on disk rather than recorded rows lost.
        for spec, payload in self._unsent:
            self.sink.send(spec, payload, over_budget=True)
        self._unsent.clear()
        close = getattr(self._takeover, "close", None)
        if close is not None:
            close()
        self.robot.close()
