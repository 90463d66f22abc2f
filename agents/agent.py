"""The agent process: hosts one or more robots at a site and runs them under leases.

``userctl agent --robot-type T --site S [--robot-id ID] [--count K]``:

1. builds and validates its robots (one process can host several simulated robots);
2. announces each robot on ``robots`` (on every start), then heartbeats once a second;
3. follows ``assignments`` (from the beginning: the compacted latest lease per robot)
   and ``commands`` (from now on);
4. in one control loop at the robots' rate, runs episodes for leased robots with the
   current policy (random or scripted until learned weights exist), publishing raw
   transition batches and episode events through the spool-backed :class:`Outbox`.

A broker outage never stops a robot: records go to the local spool and flow out, in
order, when the broker is back.  SIGTERM/SIGINT end the current episodes, deliver what
can be delivered within a few seconds, and leave the rest spooled for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents import (
    pacing,
    registry,
    remote,
    remote_kafka,
    safety,
    takeover,
    weights,
    weights_kafka,
)
from agents import robot as robot_mod
from agents.outbox import Outbox, OutboxDeadLetters
from agents.policies import PolicyFn, RandomPolicy, scripted
from agents.worker import Lease, RobotWorker
from schemas import events as ev
from schemas.experiment import TakeoverSpec
from topics import catalog, tables, validation
from topics.consumer import DeadLetterSink
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rejected

log = logging.getLogger(__name__)


class AgentSettings(BaseSettings):
    """One agent process (environment prefix ``USER_AGENT_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_AGENT_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    robot_type: str = Field(description="registered robot type, e.g. reacher2d or panda")
    task: str = Field("reach", pattern=r"^[a-z][a-z0-9_-]*$",
                      description="the task the robots are set up for (reach, push, "
                                  "pick_place); experiments with this task lease them")
    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="where it runs")
    robot_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="robot id (with count > 1, the prefix of <id>-<n>)",
    )
    count: int = Field(1, ge=1, le=256, description="robots hosted by this process")
    control_hz: float | None = Field(None, gt=0, description="override the robot's rate")
    realtime: bool = Field(True, description="pace to the control rate; false: flat out")
    policy: Literal["random", "scripted", "remote"] = Field(
        "random", description="what drives the robot until learned weights exist; remote: "
        "action chunks from the experiment's inference replicas (issue 14)"
    )
    instruction: str = Field("", max_length=1000,
                             description="the task in words, for a language-conditioned "
                                         "policy (sent with remote requests, recorded with "
                                         "the steps) unless the experiment's robot request "
                                         "names one; empty: the policy's default")
    takeover: TakeoverSpec = Field(
        default_factory=TakeoverSpec,
        description='takeover device per robot, JSON, e.g. \'{"kind": "scripted"}\' '
                    "(agents.takeover)")
    flush_steps: int = Field(50, ge=1, description="send a batch every N steps…")
    flush_ms: int = Field(500, ge=1, description="…or every T ms, whichever first")
    flush_stagger: bool = Field(
        True, description="spread the robots' batch flushes over flush_ms (issue 17), so "
        "one control period does not encode and spool every robot's batch")
    heartbeat_s: float = Field(1.0, gt=0, description="heartbeat period")
    spool_mb: int = Field(1024, ge=1, description="local disk budget for an outage")
    seed: int | None = Field(None, description="robots' random seed (None: fresh)")
    cameras: tuple[str, ...] = Field(
        (), description="cameras to record every step, e.g. '[\"overhead\"]' (JSON list)")
    camera_size: tuple[int, int] = Field((64, 64), description="camera (height, width)")
    home: Path = Field(default_factory=tables.user_home,
                       validation_alias=AliasChoices("USER_HOME"),
                       description="state directory; the agent's spool lives under it")

    @field_validator("robot_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        types = registry.robot_types()
        if value not in types:
            raise ValueError(f"unknown robot type {value!r}; registered: {', '.join(types)}")
        return value

    def robot_ids(self) -> list[str]:
        base = self.robot_id or f"{self.robot_type}-{self.site}"
        if self.count == 1 and self.robot_id:
            return [self.robot_id]
        return [f"{base}-{i}" for i in range(self.count)]


class _Mailbox:
    """Leases and commands for this process's robots, filled by the follower thread."""

    def __init__(self, robot_ids: list[str],
                 dead_letters: DeadLetterSink | None = None) -> None:
        self._ids = set(robot_ids)
        self._dead_letters = dead_letters
        self._lock = threading.Lock()
        self.leases: dict[str, Lease | None] = dict.fromkeys(robot_ids)
        self._commands: dict[str, list[ev.CommandKind]] = defaultdict(list)

    def take(self, item: object) -> None:
        if not isinstance(item, Accepted):
            self._refused(item)
            return
        event = item.event
        with self._lock:
            match event:
                case ev.LeaseGrantedV1() if event.robot_id in self._ids:
                    self.leases[event.robot_id] = Lease(event.experiment_id, event.lease_id,
                                                        event.instruction)
                case ev.LeaseReleasedV1() if event.robot_id in self._ids:
                    held = self.leases.get(event.robot_id)
                    if held is not None and held.lease_id == event.lease_id:
                        self.leases[event.robot_id] = None
                case ev.CommandV1() if event.robot_id in self._ids:
                    self._commands[event.robot_id].append(event.command)
                case _:
                    pass

    def _refused(self, item: object) -> None:
        """Dead-letter a control record this agent cannot read — if it is addressed to
        one of its robots (or to nobody), so that not every agent of the fleet files it."""
        if not isinstance(item, Rejected):
            return
        key = item.record.key
        mine = key is None or key.decode("utf-8", "replace") in self._ids
        if mine and self._dead_letters is not None:
            self._dead_letters.send(item)
        else:
            log.info("unreadable control record %s[%d]@%d for another agent: %s",
                     item.record.topic, item.record.partition, item.record.offset,
                     validation.excerpt(item.detail))

    def lease(self, robot_id: str) -> Lease | None:
        with self._lock:
            return self.leases[robot_id]

    def commands(self, robot_id: str) -> list[ev.CommandKind]:
        with self._lock:
            return self._commands.pop(robot_id, [])


class Agent:
    """Hosts ``settings.count`` robots; :meth:`run` blocks until :meth:`stop`."""

    def __init__(self, settings: AgentSettings, kafka: KafkaSettings) -> None:
        self.settings = settings
        self.kafka = kafka
        kafka.sites.partitions_of(settings.site)  # an unknown site fails here, in one line
        self.robot_ids = settings.robot_ids()
        self._stop = threading.Event()
        self.pacer: pacing.Pacer | None = None
        options: dict[str, Any] = {}
        if settings.control_hz is not None:
            options["control_hz"] = settings.control_hz
        if settings.cameras:
            options.update(cameras=settings.cameras, camera_size=settings.camera_size)
        self.robots = [
            registry.make_robot(settings.robot_type, task=settings.task,
                                seed=None if settings.seed is None else settings.seed + i,
                                **options)
            for i in range(len(self.robot_ids))
        ]
        spool = settings.home / "agents" / settings.site / self.robot_ids[0] / "spool"
        self.outbox = Outbox(kafka, spool, max_bytes=settings.spool_mb << 20,
                             role=f"agent-{self.robot_ids[0]}")
        self.dead_letters = OutboxDeadLetters(self.outbox, consumer=f"agent-{self.robot_ids[0]}")
        self.mailbox = _Mailbox(self.robot_ids, self.dead_letters)
        # Learned policies: fetched and verified in the background, swapped in per step;
        # a remotely served policy's weights go to its inference replicas instead.
        self.remote = (remote_kafka.RemoteLink(kafka, settings.site)
                       if settings.policy == "remote" else None)
        self.weights = None if self.remote is not None else weights_kafka.subscriber_for(
            kafka, self.robots[0].spec, dead_letters=self.dead_letters)
        self.workers = [
            RobotWorker(robot, robot_id=rid, site=settings.site, sink=self.outbox,
                        policy=self._policy_for(robot, i),
                        flush_steps=settings.flush_steps, flush_s=settings.flush_ms / 1000,
                        flush_stagger_s=(settings.flush_ms / 1000 * i / len(self.robots)
                                         if settings.flush_stagger else None),
                        takeover=self._takeover_for(robot),
                        instruction=settings.instruction)
            for i, (rid, robot) in enumerate(zip(self.robot_ids, self.robots, strict=True))
        ]

    def _policy_for(
        self, robot: safety.Guarded, i: int
    ) -> Callable[[], tuple[PolicyFn, int]]:
        fn: PolicyFn
        if self.remote is not None:
            return self._remote_for(robot, i)
        if self.settings.policy == "scripted":
            fn = scripted(robot)
        else:
            seed = None if self.settings.seed is None else self.settings.seed + 1000 + i
            fn = RandomPolicy(robot.spec.action, seed=seed)
        return weights.learned_or(lambda: (fn, 0), self.weights,
                                  lambda: self.workers[i].lease, robot.spec.robot_type)

    def _takeover_for(self, robot: safety.Guarded) -> takeover.TakeoverDevice | None:
        spec = self.settings.takeover
        if spec.kind == "none":
            return None
        try:
            expert = scripted(robot) if spec.kind == "scripted" else None
        except robot_mod.RobotError:
            expert = None
        return takeover.make(spec, action_size=int(robot.spec.action.shape[-1]),
                             expert=expert)

    def _remote_for(self, robot: safety.Guarded, i: int) -> Callable[[], tuple[PolicyFn, int]]:
        assert self.remote is not None
        rid = self.robot_ids[i]

        def leased() -> str | None:
            lease = self.workers[i].lease
            return None if lease is None else lease.experiment_id

        served = remote.RemotePolicy(
            robot_id=rid, site=self.settings.site, experiment_id=leased,
            send=self.remote.send,
            control_hz=self.settings.control_hz or robot.spec.control_hz,
            instruction=lambda: self.workers[i].told, robot_type=robot.spec.robot_type,
            action_dim=int(np.prod(robot.spec.action.shape)))
        self.remote.policies[rid] = served
        return lambda: (served, served.policy_version)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        started = time.monotonic()
        for rid, robot in zip(self.robot_ids, self.robots, strict=True):
            self.outbox.send(catalog.ROBOTS, ev.RobotAnnouncedV1(
                site=self.settings.site, robot_id=rid, spec=robot.spec, driver="sim"))
        beats = EventProducer(self.kafka, role="agent-heartbeat")
        follower = self._follow()
        listener = threading.Thread(target=self._listen, args=(follower,), daemon=True,
                                    name="control-listener")
        listener.start()
        if self.weights is not None:
            self.weights.start()
        if self.remote is not None:
            self.remote.start()
        hz = self.settings.control_hz or self.robots[0].spec.control_hz
        pacer = self.pacer = pacing.Pacer(hz if self.settings.realtime else None)
        seq, next_beat = 0, 0.0
        log.info("agent up: %s at %s, %.0f Hz%s", ", ".join(self.robot_ids),
                 self.settings.site, hz, "" if self.settings.realtime else " (flat out)")
        try:
            while not self._stop.is_set():
                for worker in self.workers:
                    worker.tick(self.mailbox.lease(worker.robot_id),
                                self.mailbox.commands(worker.robot_id))
                now = time.monotonic()
                if now >= next_beat:
                    for worker in self.workers:
                        beats.send(catalog.HEARTBEATS, worker.heartbeat(
                            seq, now - started, spool_bytes=self.outbox.spool_bytes,
                            dead_letters=self.outbox.dead_letters + self.dead_letters.sent))
                    seq += 1
                    next_beat = now + self.settings.heartbeat_s
                pacer.wait()
        finally:
            beats.close(timeout_s=1.0)  # a stale heartbeat is worth nothing
            for worker in self.workers:
                worker.close()
            delivered = self.outbox.drain(10.0)
            if not delivered:
                log.warning("%d records stay spooled for the next start", self.outbox.backlog)
            self.outbox.close(timeout_s=0.5)
            if self.weights is not None:
                self.weights.close()
            if self.remote is not None:
                self.remote.close()
            self._stop.set()

    def _follow(self) -> Follower:
        """Follow assignments and commands; waits (and says so) while Kafka is down."""
        delay = 1.0
        while True:
            try:
                follower = Follower(self.kafka, {catalog.ASSIGNMENTS: "beginning",
                                                 catalog.COMMANDS: "end"}, role="agent")
                backlog: list[Accepted | Rejected] = []
                follower.wait_caught_up(60.0, backlog)
                for item in backlog:
                    self.mailbox.take(item)
                return follower
            except TimeoutError as exc:
                if self._stop.is_set():
                    raise
                log.warning("%s; retrying in %.0f s (robots idle until leased)", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)

    def _listen(self, follower: Follower) -> None:
        try:
            while not self._stop.is_set():
                for item in follower.poll(0.2):
                    self.mailbox.take(item)
        finally:
            follower.close()


def serve(settings: AgentSettings, kafka: KafkaSettings) -> int:
    """Run an agent in this process until SIGTERM or SIGINT."""
    agent = Agent(settings, kafka)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: ending episodes and stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    return 0
