"""The fleet registry and scheduler: pure state, fed by events, deciding in events.

:class:`Fleet` is the controller's whole brain and holds no Kafka.  The controller
process (:mod:`pipeline.controller`) rebuilds it at start by replaying the compacted
``robots``, ``experiments`` and ``assignments`` topics through :meth:`Fleet.apply`, then
feeds it live events and calls :meth:`Fleet.tick` about once a second; whatever ``tick``
returns is published, and applied back (events are idempotent to apply twice).

Usage::

    fleet = Fleet(heartbeat_timeout_s=5.0)
    for event in replayed_events:          # rebuild
        fleet.apply(event, now)
    while running:
        for event in new_events():
            fleet.apply(event, now())
        for decision in fleet.tick(now()):  # leases, releases, state changes
            publish(decision)
            fleet.apply(decision, now())

Time is the controller's monotonic clock in seconds (``now``), never an agent's wall
clock, so skewed robot clocks cannot make a robot look dead or alive.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from pydantic import ValidationError

from schemas import events as ev
from schemas.experiment import ExperimentSpec, RobotRequest
from schemas.spaces import RobotSpec

log = logging.getLogger(__name__)

#: How a robot-state change about two agents driving one robot id begins its reason.
DOUBLE_CLAIM = "double claim"

RobotState = ev.RobotState
ExperimentState = ev.ExperimentState

#: States in which an experiment holds or wants robots.
ACTIVE = (ExperimentState.SUBMITTED, ExperimentState.SCHEDULED, ExperimentState.RUNNING)


@dataclass
class Robot:
    """What the registry knows about one robot."""

    robot_id: str
    site: str
    spec: RobotSpec
    state: RobotState = RobotState.IDLE
    experiment_id: str | None = None
    lease_id: str | None = None
    last_seen: float = 0.0
    steps_total: int = 0
    steps_per_s: float = 0.0
    policy_version: int | None = None
    spool_bytes: int = 0
    spool_full: bool = False
    dead_letters: int = 0
    #: The incarnation heard last, and when each recent one was heard.
    incarnation: str | None = None
    _incarnations: dict[str, float] = field(default_factory=dict)
    #: Non-empty while two agents heartbeat for this robot id (their steps stay apart:
    #: each has its own incarnation); ``_claim_reported`` is what was published about it.
    double_claim: str = ""
    _claim_reported: str = ""
    _rate_mark: tuple[float, int] | None = None

    @property
    def robot_type(self) -> str:
        return self.spec.robot_type

    def alive(self, now: float, timeout_s: float) -> bool:
        return now - self.last_seen <= timeout_s


@dataclass
class Experiment:
    """An experiment as submitted; ``spec`` is None when the submission did not validate
    (the scheduler then fails it, saying why, instead of crashing on it)."""

    experiment_id: str
    spec: ExperimentSpec | None
    state: ExperimentState = ExperimentState.SUBMITTED
    detail: str = ""
    robots: set[str] = field(default_factory=set)
    invalid: str = ""


@dataclass
class SiteLink:
    """A mirrored site's link as the controller hears it: MirrorMaker 2's heartbeats from
    the site's edge (``topics.mirror_heartbeats``).  A site with no entry is not mirrored
    (one broker for everyone): its robots' silence is judged as it always was."""

    site: str
    last_heard: float


def _experiment(event: ev.ExperimentSubmittedV1) -> Experiment:
    try:
        return Experiment(event.experiment_id, ExperimentSpec.model_validate(event.spec))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        return Experiment(event.experiment_id, None,
                          invalid=f"invalid spec: {where}: {first['msg']}")


class Fleet:
    """Fleet state plus the scheduling policy.

    Scheduling: each active experiment's requests are filled, oldest experiment first,
    from alive idle robots of the requested type at an allowed site, in robot-id order.
    A robot silent for ``heartbeat_timeout_s`` is marked lost and its lease released; the
    next tick leases a spare.  A lost robot that heartbeats or announces again rejoins as
    idle.

    Site links: at a mirrored site (its MirrorMaker 2 heartbeats reach the controller, fed
    through :meth:`link_heard`), a robot's silence while that site's mirror is silent too
    (for more than ``link_timeout_s``) is a cut link, not a lost robot: the site is
    *unreachable* and its robots keep their state and leases for up to ``site_hold_s`` of
    link silence, after which they are lost as any silent robot (a site that really died
    gives its experiments' robots back).  When the link is heard again, the site's robots
    get a full timeout to be heard through it.
    """

    def __init__(self, heartbeat_timeout_s: float = 5.0, *, site_hold_s: float = 300.0,
                 link_timeout_s: float | None = None) -> None:
        if heartbeat_timeout_s <= 0:
            raise ValueError("heartbeat_timeout_s must be positive")
        if site_hold_s < 0:
            raise ValueError("site_hold_s must not be negative")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.site_hold_s = site_hold_s
        # Shorter than a robot's timeout: a link cut silences a robot and the mirror at
        # about the same moment (each beats about once a second), and the link must be
        # seen down before the robot is seen lost.
        self.link_timeout_s = (heartbeat_timeout_s / 2 if link_timeout_s is None
                               else link_timeout_s)
        if not 0 < self.link_timeout_s < heartbeat_timeout_s:
            raise ValueError("link_timeout_s must be positive and below heartbeat_timeout_s")
        self.links: dict[str, SiteLink] = {}
        self.robots: dict[str, Robot] = {}
        self.experiments: dict[str, Experiment] = {}
        self._order: list[str] = []  # experiment ids, in submission order

    # -- state from events ------------------------------------------------------------------

    def apply(self, event: ev.Envelope, now: float) -> None:
        """Fold one event into the state; unknown event kinds are ignored."""
        match event:
            case ev.RobotAnnouncedV1():
                self._announced(event, now)
            case ev.HeartbeatV1():
                self._heartbeat(event, now)
            case ev.RobotStateChangedV1():
                robot = self.robots.get(event.robot_id)
                if robot is not None:
                    robot.state = event.state
                    if event.reason.startswith(DOUBLE_CLAIM):
                        robot._claim_reported = event.reason
            case ev.ExperimentSubmittedV1():
                if event.experiment_id not in self.experiments:
                    self.experiments[event.experiment_id] = _experiment(event)
                    self._order.append(event.experiment_id)
            case ev.ExperimentStatusV1():
                exp = self.experiments.get(event.experiment_id)
                if exp is not None:
                    exp.state, exp.detail = event.state, event.detail
            case ev.LeaseGrantedV1():
                self._granted(event)
            case ev.LeaseReleasedV1():
                self._released(event)
            case _:
                pass

    def _announced(self, event: ev.RobotAnnouncedV1, now: float) -> None:
        robot = self.robots.get(event.robot_id)
        if robot is None:
            self.robots[event.robot_id] = Robot(event.robot_id, event.site, event.spec,
                                                last_seen=now)
            return
        robot.site, robot.spec, robot.last_seen = event.site, event.spec, now
        if robot.state is RobotState.LOST:
            robot.state = RobotState.IDLE

    def _heartbeat(self, event: ev.HeartbeatV1, now: float) -> None:
        robot = self.robots.get(event.robot_id)
        if robot is None:
            return  # a heartbeat before the announcement: wait for the announcement
        robot.last_seen = now
        if robot._rate_mark is not None:
            t0, s0 = robot._rate_mark
            if now > t0 and event.steps_total >= s0:
                robot.steps_per_s = (event.steps_total - s0) / (now - t0)
        if robot._rate_mark is None or now - robot._rate_mark[0] >= 2.0:
            robot._rate_mark = (now, event.steps_total)
        robot.steps_total = event.steps_total
        robot.policy_version = event.policy_version
        robot.spool_bytes = event.spool_bytes
        robot.spool_full = event.spool_full
        robot.dead_letters = event.dead_letters
        if event.incarnation is not None:
            self._claimed(robot, event.incarnation, now)
        if robot.state is RobotState.LOST:
            robot.state = RobotState.IDLE if robot.lease_id is None else RobotState.LEASED
        elif event.state in (RobotState.RUNNING, RobotState.PAUSED, RobotState.ESTOPPED,
                             RobotState.STOPPED) and robot.lease_id is not None:
            robot.state = event.state

    def _claimed(self, robot: Robot, incarnation: str, now: float) -> None:
        """Notice two agents heartbeating for one robot id: incarnations that alternate
        (A, B, A) within the heartbeat timeout.  A lease change (A, then only B) is not."""
        recent = {i: t for i, t in robot._incarnations.items()
                  if now - t <= self.heartbeat_timeout_s}
        if (robot.incarnation not in (None, incarnation) and incarnation in recent
                and not robot.double_claim):
            robot.double_claim = (f"{DOUBLE_CLAIM}: two agents drive robot {robot.robot_id} "
                                  f"(incarnations {robot.incarnation} and {incarnation}); "
                                  "stop one")
            log.warning("%s", robot.double_claim)
        recent[incarnation] = now
        robot._incarnations, robot.incarnation = recent, incarnation
        if len(recent) == 1:
            robot.double_claim = robot._claim_reported = ""

    def _granted(self, event: ev.LeaseGrantedV1) -> None:
        robot = self.robots.get(event.robot_id)
        exp = self.experiments.get(event.experiment_id)
        if robot is None:
            return
        robot.lease_id, robot.experiment_id = event.lease_id, event.experiment_id
        if robot.state in (RobotState.IDLE, RobotState.OFFLINE):
            robot.state = RobotState.LEASED
        if exp is not None:
            exp.robots.add(event.robot_id)

    def _released(self, event: ev.LeaseReleasedV1) -> None:
        robot = self.robots.get(event.robot_id)
        exp = self.experiments.get(event.experiment_id)
        if exp is not None:
            exp.robots.discard(event.robot_id)
        if robot is None or robot.lease_id != event.lease_id:
            return
        robot.lease_id, robot.experiment_id = None, None
        if event.reason is ev.LeaseReleaseReason.ROBOT_LOST:
            robot.state = RobotState.LOST
        elif robot.state is not RobotState.LOST:
            robot.state = RobotState.IDLE

    def link_heard(self, site: str, now: float) -> float | None:
        """MirrorMaker 2's heartbeat from ``site`` arrived: the site is mirrored and its link
        works.  Returns how long the link had been down when it was (its robots then get a
        full timeout from ``now``), else None."""
        link = self.links.get(site)
        if link is None:
            self.links[site] = SiteLink(site, now)
            return None
        down = now - link.last_heard
        link.last_heard = max(link.last_heard, now)
        if down <= self.link_timeout_s:
            return None
        for robot in self.robots.values():
            if robot.site == site:
                robot.last_seen = max(robot.last_seen, now)
        return down

    def link_down_for(self, site: str, now: float) -> float | None:
        """Seconds ``site``'s mirror has been silent when that is long enough to call its
        link down; None for a site whose link works or that is not mirrored."""
        link = self.links.get(site)
        if link is None or now - link.last_heard <= self.link_timeout_s:
            return None
        return now - link.last_heard

    def unreachable(self, now: float) -> dict[str, float]:
        """Mirrored sites whose link is down, with the seconds it has been silent."""
        return {site: down for site in sorted(self.links)
                if (down := self.link_down_for(site, now)) is not None}

    # -- decisions ----------------------------------------------------------------------------

    def grace(self, now: float) -> None:
        """Give every robot (and every site link) a full timeout from ``now`` to be heard from.

        For the controller's own blind spells (its start, a broker outage): silence that
        the controller could not have heard through is no evidence that a robot is gone.
        """
        for robot in self.robots.values():
            robot.last_seen = max(robot.last_seen, now)
        for link in self.links.values():
            link.last_heard = max(link.last_heard, now)

    def tick(self, now: float, *, detect_lost: bool = True) -> list[ev.Envelope]:
        """Decide: mark silent robots lost, release their leases, place experiments.

        Returns the events to publish, in order.  Does not change the state: the caller
        applies what it publishes.  ``detect_lost=False`` (while the caller hears nothing
        from anyone) only places experiments.  A silent robot of an unreachable site is
        held (not lost) while its site's link has been down for at most ``site_hold_s``.
        """
        out: list[ev.Envelope] = []
        lost: set[str] = set()
        for robot in sorted(self.robots.values(), key=lambda r: r.robot_id):
            if robot.double_claim and robot.double_claim != robot._claim_reported:
                out.append(ev.RobotStateChangedV1(
                    site=robot.site, robot_id=robot.robot_id, state=robot.state,
                    previous=robot.state, reason=robot.double_claim[:1000]))
            if (not detect_lost or robot.state is RobotState.LOST
                    or robot.alive(now, self.heartbeat_timeout_s)):
                continue
            reason = f"no heartbeat for {now - robot.last_seen:.1f} s"
            down = self.link_down_for(robot.site, now)
            if down is not None:
                if down <= self.site_hold_s:
                    continue  # silence the controller could not have heard through
                reason += (f"; site {robot.site} unreachable for {down:.0f} s, longer than "
                           f"the {self.site_hold_s:.0f} s hold")
            lost.add(robot.robot_id)
            out.append(ev.RobotStateChangedV1(
                site=robot.site, robot_id=robot.robot_id, state=RobotState.LOST,
                previous=robot.state, reason=reason,
            ))
            if robot.lease_id is not None and robot.experiment_id is not None:
                out.append(ev.LeaseReleasedV1(
                    site=robot.site, robot_id=robot.robot_id,
                    experiment_id=robot.experiment_id, lease_id=robot.lease_id,
                    reason=ev.LeaseReleaseReason.ROBOT_LOST,
                ))
        taken: set[str] = set()
        for exp_id in self._order:
            exp = self.experiments[exp_id]
            if exp.spec is None:
                if exp.state is not ExperimentState.FAILED:
                    out.append(ev.ExperimentStatusV1(
                        experiment_id=exp.experiment_id, state=ExperimentState.FAILED,
                        detail=exp.invalid[:1000]))
            elif exp.state in ACTIVE:
                out.extend(self._place(exp, now, lost, taken))
            else:
                out.extend(self._release_all(exp, lost))
        return out

    def _release_all(self, exp: Experiment, lost: set[str]) -> list[ev.Envelope]:
        """An ended experiment (cancelled, completed, failed) gives its robots back."""
        reason = {
            ExperimentState.CANCELLED: ev.LeaseReleaseReason.CANCELLED,
        }.get(exp.state, ev.LeaseReleaseReason.COMPLETED)
        out: list[ev.Envelope] = []
        for robot_id in sorted(exp.robots - lost):
            robot = self.robots[robot_id]
            if robot.lease_id is not None and robot.experiment_id == exp.experiment_id:
                out.append(ev.LeaseReleasedV1(
                    site=robot.site, robot_id=robot_id, experiment_id=exp.experiment_id,
                    lease_id=robot.lease_id, reason=reason,
                ))
        return out

    def _place(
        self, exp: Experiment, now: float, lost: set[str], taken: set[str]
    ) -> list[ev.Envelope]:
        assert exp.spec is not None
        out: list[ev.Envelope] = []
        holding = {r for r in exp.robots if r not in lost}
        missing = 0
        for request in exp.spec.robots:
            have = [r for r in holding
                    if self._matches(self.robots[r], request, exp.spec.task)]
            need = request.count - len(have)
            holding -= set(have)
            for robot in self._candidates(request, exp.spec.task, now,
                                          lost | taken)[:max(need, 0)]:
                taken.add(robot.robot_id)
                need -= 1
                out.append(ev.LeaseGrantedV1(
                    site=robot.site, robot_id=robot.robot_id, experiment_id=exp.experiment_id,
                    lease_id=f"{exp.experiment_id}.{robot.robot_id}.{uuid.uuid4().hex[:8]}",
                    instruction=request.instruction,
                ))
            missing += max(need, 0)
        granted = len(exp.robots - lost) + sum(isinstance(e, ev.LeaseGrantedV1) for e in out)
        state = ExperimentState.RUNNING if missing == 0 else ExperimentState.SCHEDULED
        detail = (f"{granted}/{exp.spec.robot_count} robots leased"
                  + (f", waiting for {missing}" if missing else ""))
        if (state, detail) != (exp.state, exp.detail):
            out.append(ev.ExperimentStatusV1(
                experiment_id=exp.experiment_id, state=state, detail=detail,
                robots=tuple(sorted((exp.robots - lost)
                                    | {e.robot_id for e in out
                                       if isinstance(e, ev.LeaseGrantedV1)})),
            ))
        return out

    def _candidates(self, request: RobotRequest, task: str, now: float,
                    exclude: set[str]) -> list[Robot]:
        return [
            r for r in sorted(self.robots.values(), key=lambda r: r.robot_id)
            if r.robot_id not in exclude
            and r.state is RobotState.IDLE
            and r.lease_id is None
            and r.alive(now, self.heartbeat_timeout_s)
            and self._matches(r, request, task)
        ]

    @staticmethod
    def _matches(robot: Robot, request: RobotRequest, task: str) -> bool:
        """A robot fits a request when its type and site do and it is set up for the
        experiment's task (a Panda with the push scene never serves a reach experiment)."""
        return (robot.robot_type == request.robot_type
                and robot.spec.task == task
                and (not request.sites or robot.site in request.sites))
