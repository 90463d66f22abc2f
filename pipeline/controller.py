"""The controller process: the fleet registry and scheduler on Kafka.

At start it rebuilds :class:`~pipeline.fleet.Fleet` from the compacted ``robots``,
``experiments`` and ``assignments`` topics (read from the beginning: there is no other
state store), then follows them and ``heartbeats`` live, ticks the fleet about once a
second, and publishes its decisions (leases, releases, state changes, experiment status).

Delivery: the controller commits no offsets.  Its decisions are published and flushed
before they are applied to its own state, so a crash after publishing is healed by the
rebuild (it reads its own decision back), and a crash before it simply decides again.
A record it cannot accept (unreadable, or an event the fleet refuses) goes to ``dlq``
with the reason — once per start, since every start re-reads the compacted topics.

Site links: where sites are mirrored, it also follows MirrorMaker 2's own heartbeats on its
broker (``topics.mirror_heartbeats``); a site whose mirror falls silent is *unreachable*, and
its robots keep their leases for up to ``site_hold_s`` instead of being lost after the
heartbeat timeout (:class:`~pipeline.fleet.Fleet`).  With one broker (no mirror, no such
heartbeats) robots are judged exactly as before.
"""

from __future__ import annotations

import logging
import threading
import time

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.compute import Compute
from pipeline.fleet import Fleet
from schemas import events as ev
from schemas.events import RejectReason
from topics import catalog
from topics.consumer import DeadLetterSink, KafkaDeadLetters
from topics.follow import Follower
from topics.mirror_heartbeats import TOPIC as MIRROR_HEARTBEATS
from topics.mirror_heartbeats import MirrorHeartbeats
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rejected, excerpt

log = logging.getLogger(__name__)

#: Which catalog topic each controller decision goes to.
TOPIC_OF: dict[type[ev.Envelope], catalog.TopicSpec] = {
    ev.RobotStateChangedV1: catalog.ROBOTS,
    ev.LeaseGrantedV1: catalog.ASSIGNMENTS,
    ev.LeaseReleasedV1: catalog.ASSIGNMENTS,
    ev.ExperimentStatusV1: catalog.EXPERIMENTS,
    ev.ExperimentSubmittedV1: catalog.EXPERIMENTS,
    ev.PlacementGrantedV1: catalog.PLACEMENTS,
    ev.PlacementReleasedV1: catalog.PLACEMENTS,
}


class ControllerSettings(BaseSettings):
    """The controller (environment prefix ``USER_CONTROLLER_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_CONTROLLER_", frozen=True,
                                      extra="ignore")

    heartbeat_timeout_s: float = Field(5.0, gt=0, description="silence before a robot is lost")
    tick_s: float = Field(0.5, gt=0, description="how often the scheduler decides")
    rebuild_timeout_s: float = Field(120.0, gt=0, description="longest rebuild at start")
    site_hold_s: float = Field(
        300.0, ge=0, description="how long a mirrored site whose link is down (its "
        "MirrorMaker heartbeats silent) keeps its robots and leases before they are lost")
    mirror_heartbeats_topic: str = Field(
        MIRROR_HEARTBEATS, description="MirrorMaker 2's heartbeats topic on this broker "
        "(absent in a single-broker topology)")


class Controller:
    """Runs the fleet against Kafka until :meth:`stop` is called."""

    def __init__(self, kafka: KafkaSettings, settings: ControllerSettings | None = None) -> None:
        self.kafka = kafka
        self.settings = settings or ControllerSettings()
        self.fleet = Fleet(self.settings.heartbeat_timeout_s,
                           site_hold_s=self.settings.site_hold_s)
        #: Compute hosts and placements (issue 14); decides before the fleet each tick.
        self.compute = Compute(self.settings.heartbeat_timeout_s)
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._dead_letters: DeadLetterSink | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        producer = EventProducer(self.kafka, role="controller")
        self._dead_letters = KafkaDeadLetters(producer, consumer="controller")
        follower = Follower(self.kafka, {
            catalog.ROBOTS: "beginning",
            catalog.EXPERIMENTS: "beginning",
            catalog.ASSIGNMENTS: "beginning",
            catalog.HEARTBEATS: "end",
            catalog.HOSTS: "beginning",
            catalog.PLACEMENTS: "beginning",
            catalog.HOST_HEARTBEATS: "end",
        }, role="controller")
        mirror = MirrorHeartbeats(self.kafka, topic=self.settings.mirror_heartbeats_topic,
                                  lookback_s=max(self.settings.site_hold_s, 30.0),
                                  role="controller-links")
        unreachable: set[str] = set()
        try:
            started = time.monotonic()
            backlog: list[Accepted | Rejected] = []
            if not follower.wait_caught_up(self.settings.rebuild_timeout_s, backlog):
                raise TimeoutError("rebuilding fleet state from Kafka took too long")
            now = time.monotonic()
            for item in backlog:
                self._apply(item, now)
            log.info("rebuilt fleet state in %.1f s: %d robots, %d experiments",
                     now - started, len(self.fleet.robots), len(self.fleet.experiments))
            self.fleet.grace(now)
            self.compute.grace(now)
            self.ready.set()
            next_tick = time.monotonic()
            last_heard = time.monotonic()
            blind = False

            def heard(now: float) -> None:
                nonlocal blind, last_heard
                if blind:
                    log.warning("heartbeats are back after %.0f s of silence; "
                                "every robot gets a fresh timeout", now - last_heard)
                    self.fleet.grace(now)
                    self.compute.grace(now)
                    blind = False
                last_heard = now

            while not self._stop.is_set():
                for item in follower.poll(0.1):
                    now = time.monotonic()
                    # Any heartbeat (a robot's, a compute host's or, below, a site's
                    # MirrorMaker's) shows that our own link to the broker works.
                    if isinstance(item, Accepted) and isinstance(
                            item.event, ev.HeartbeatV1 | ev.HostHeartbeatV1):
                        heard(now)
                    self._apply(item, now)
                now = time.monotonic()
                for beat in mirror.poll():
                    heard(now)
                    down = self.fleet.link_heard(beat.source, now)
                    if down is not None:
                        log.warning("site %s is reachable again after %.0f s: its robots get "
                                    "a fresh timeout", beat.source, down)
                    unreachable.discard(beat.source)
                for site, down in self.fleet.unreachable(now).items():
                    if site not in unreachable:
                        unreachable.add(site)
                        log.warning("site %s is unreachable (no MirrorMaker heartbeat for "
                                    "%.0f s): holding its robots and leases for up to %.0f s",
                                    site, down, self.settings.site_hold_s)
                if (self.fleet.robots or self.compute.hosts) and not blind and (
                        now - last_heard > self.settings.heartbeat_timeout_s):
                    # Silence from *every* robot points at the broker or our link, not at
                    # the robots: declare nobody lost until heartbeats flow again.
                    log.warning("no heartbeat from any robot, host or mirror for %.0f s: "
                                "broker or network outage suspected; not declaring robots lost",
                                now - last_heard)
                    blind = True
                if now >= next_tick:
                    self._decide(producer, detect_lost=not blind)
                    next_tick = time.monotonic() + self.settings.tick_s
        finally:
            mirror.close()
            follower.close()
            producer.flush(10.0)

    def _apply(self, item: Accepted | Rejected, now: float) -> None:
        if isinstance(item, Accepted) and isinstance(item.event, ev.Envelope):
            try:
                self.compute.apply(item.event, now)
                self.fleet.apply(item.event, now)
            except ValueError as exc:  # e.g. an experiment spec that no longer validates
                self._refuse(Rejected(item.record, RejectReason.INVALID_FIELD,
                                      f"the fleet refused {item.event.schema_name}: {exc}"))
        elif isinstance(item, Accepted):
            self._refuse(Rejected(item.record, RejectReason.WRONG_TOPIC,
                                  "not an event the controller reads"))
        else:
            self._refuse(item)

    def _refuse(self, rejected: Rejected) -> None:
        """Dead-letter (the sink logs it, cut to a few hundred bytes) and carry on."""
        if self._dead_letters is None:
            log.warning("refused %s[%d]@%d: %s", rejected.record.topic,
                        rejected.record.partition, rejected.record.offset,
                        excerpt(rejected.detail))
            return
        self._dead_letters.send(rejected)

    def _decide(self, producer: EventProducer, *, detect_lost: bool = True) -> None:
        # Compute first: an experiment it queues must not get robots in the same tick.
        self._publish(producer, self.compute.tick(time.monotonic(), detect_lost=detect_lost),
                      detect_lost=detect_lost)
        self._publish(producer, self.fleet.tick(time.monotonic(), detect_lost=detect_lost),
                      detect_lost=detect_lost)

    def _publish(self, producer: EventProducer, decisions: list[ev.Envelope], *,
                 detect_lost: bool) -> None:
        if not decisions:
            return
        for event in decisions:
            producer.send(TOPIC_OF[type(event)], event)
        # Decisions take effect only once durable; while the broker is away we wait
        # (deciding again meanwhile would hand out a robot twice).
        while True:
            try:
                producer.flush(10.0)
                break
            except TimeoutError:
                log.warning("waiting for the broker to accept %d decisions", len(decisions))
                if self._stop.is_set():
                    return
        now = time.monotonic()
        if not detect_lost:
            self.fleet.grace(now)
            self.compute.grace(now)
        for event in decisions:
            self.compute.apply(event, now)
            self.fleet.apply(event, now)
            _log_decision(event)


def _log_decision(event: ev.Envelope) -> None:
    match event:
        case ev.LeaseGrantedV1():
            log.info("leased %s (%s) to %s", event.robot_id, event.site, event.experiment_id)
        case ev.LeaseReleasedV1():
            log.info("released %s from %s: %s", event.robot_id, event.experiment_id,
                     event.reason.value)
        case ev.RobotStateChangedV1():
            log.info("robot %s is %s (%s)", event.robot_id, event.state.value, event.reason)
        case ev.PlacementGrantedV1():
            log.info("placed %s on host %s (gpus %s)", event.placement_id, event.host_id,
                     list(event.gpus))
        case ev.PlacementReleasedV1():
            log.info("released %s from host %s: %s", event.placement_id, event.host_id,
                     event.reason.value)
        case ev.ExperimentStatusV1():
            log.info("experiment %s is %s: %s", event.experiment_id, event.state.value,
                     event.detail)
        case _:
            pass
