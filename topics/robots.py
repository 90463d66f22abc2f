"""The robots' announced specs, followed from the compacted ``robots`` topic, and the
validation of step batches against them.

Every consumer of step batches (the Delta sink, the reward jobs, the learner) checks a
batch against the spec its robot announced — shapes, cameras and the bounds of
observations and actions (``schemas.transitions.check_against``) — so a batch outside
its robot's bounds is dead-lettered wherever it is first read and never reaches Delta,
``transitions`` or a learner's buffer.  This module is the one follower all of them use.

**A batch whose robot has not been announced (yet).**  An agent announces its robot
before it records a step, but a consumer may read the batch before the announcement
(the follower polls between records).  So for a robot it does not know, :meth:`RobotSpecs.validate`
first reads ``robots`` up to its current end (at most ``hold_s``, and at most once per
``recheck_s`` for the same robot): an announcement made before the batch was read is
then seen.  A robot still unknown after that is *validated without bounds*: the batch
must still be consistent on its own (``check_content``: shapes, finiteness, the
intervention contract), it is counted (:attr:`RobotSpecs.unannounced`) and a WARNING
names the robot once.  Refusing it instead would dead-letter the data of a robot whose
announcement is merely late or lost, and a robot's data is what USER must keep.

Delivery: none to keep — the follower commits nothing and re-reads ``robots`` from its
beginning at every start (the topic is compacted: one announcement per robot).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace

from schemas import events, transitions
from schemas.events import SchemaError
from schemas.spaces import RobotSpec
from topics import catalog
from topics.follow import Follower
from topics.settings import KafkaSettings
from topics.validation import Accepted, Record, Rejected, Rules, validate

log = logging.getLogger(__name__)

__all__ = ["RobotSpecs"]


class RobotSpecs:
    """The newest announced spec of each robot (and robot type), followed from
    ``robots`` + ``topic_suffix``.  Thread-safe.

    A test namespace (``topic_suffix``) has its own ``robots`` copy or none: without one
    nothing is announced there, and batches are checked on their own.  Raises
    ``LookupError`` when the catalog's ``robots`` topic does not exist and
    ``TimeoutError`` when the broker does not answer within ``timeout_s``.
    """

    def __init__(self, kafka: KafkaSettings, *, role: str = "robot-specs",
                 topic_suffix: str = "", timeout_s: float = 30.0, hold_s: float = 2.0,
                 recheck_s: float = 30.0) -> None:
        self._follower: Follower | None = None
        try:
            self._follower = Follower(kafka, {catalog.ROBOTS: "beginning"}, role=role,
                                      timeout_s=timeout_s, topic_suffix=topic_suffix)
        except LookupError:
            if not topic_suffix:
                raise
            log.info("no %s%s in this namespace: batches are checked without bounds",
                     catalog.ROBOTS.name, topic_suffix)
        self._hold_s = hold_s
        self._recheck_s = recheck_s
        self._lock = threading.Lock()  # guards the follower (one consumer) and the maps
        self._by_robot: dict[str, RobotSpec] = {}
        self._by_type: dict[str, RobotSpec] = {}
        self._looked_for: dict[str, float] = {}  # unknown robot -> when last looked for
        self.unannounced = 0
        """batches validated without bounds because their robot was never announced."""
        deadline = time.monotonic() + timeout_s
        while (self._follower is not None and not self._follower.caught_up()
               and time.monotonic() < deadline):
            self.poll(0.2)

    def _apply(self, items: list[Accepted | Rejected]) -> None:
        for item in items:
            event = item.event if isinstance(item, Accepted) else None
            if isinstance(event, events.RobotAnnouncedV1):
                self._by_type[event.spec.robot_type] = event.spec
                self._by_robot[event.robot_id] = event.spec
                self._looked_for.pop(event.robot_id, None)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Take in the announcements that arrived since the last poll."""
        if self._follower is None:
            return
        with self._lock:
            self._apply(self._follower.poll(timeout_s))

    def by_robot(self) -> dict[str, RobotSpec]:
        """The announced spec of each robot (robot id -> spec)."""
        with self._lock:
            return dict(self._by_robot)

    def of_type(self, robot_type: str) -> RobotSpec | None:
        """The newest spec announced for ``robot_type``, if any."""
        with self._lock:
            return self._by_type.get(robot_type)

    def spec_of(self, robot_id: str) -> RobotSpec | None:
        """``robot_id``'s announced spec; for a robot not known yet, reads ``robots`` to
        its end first (at most ``hold_s``, at most once per ``recheck_s``)."""
        if self._follower is None:
            return None
        with self._lock:
            self._apply(self._follower.poll(0.0))
            spec = self._by_robot.get(robot_id)
            if spec is not None:
                return spec
            now = time.monotonic()
            last = self._looked_for.get(robot_id)
            if last is not None and now - last < self._recheck_s:
                return None
            items, _ = self._follower.read_to_end(self._hold_s)
            self._apply(items)
            spec = self._by_robot.get(robot_id)
            if spec is None:
                if last is None:
                    log.warning("robot %r has not announced itself on %s: its batches are "
                                "checked on their own, without bounds", robot_id[:100],
                                catalog.ROBOTS.name)
                self._looked_for[robot_id] = time.monotonic()
            return spec

    def validate(self, record: Record, rules: Rules | None = None) -> Accepted | Rejected:
        """:func:`topics.validation.validate` with the announced specs: a step batch is
        also checked against its robot's spec (``OUT_OF_BOUNDS``, ``SPEC_MISMATCH``), or
        on its own when its robot is not announced (see the module doc).  ``record.topic``
        is the catalog name.  Never raises."""
        known = self.by_robot()
        result = validate(record, replace(rules or Rules(), robots=known))
        if not isinstance(result, Accepted) or isinstance(result.event, events.Envelope):
            return result
        batch = result.event
        if batch.robot_id in known:  # checked against its spec already
            return result
        spec = self.spec_of(batch.robot_id)
        if spec is None:
            with self._lock:
                self.unannounced += 1
            return result
        try:
            transitions.check_against(batch, spec)
        except SchemaError as exc:
            return Rejected(record, exc.reason, exc.detail)
        return result

    def rules(self, base: Rules | None = None) -> Rules:
        """``base`` (default rules) with the specs announced so far."""
        return replace(base or Rules(), robots=self.by_robot())

    def metrics(self) -> Mapping[str, float]:
        with self._lock:
            return {"validation/unannounced_batches": float(self.unannounced),
                    "validation/announced_robots": float(len(self._by_robot))}

    def close(self) -> None:
        with self._lock:
            if self._follower is not None:
                self._follower.close()
