"""A site whose link is down is unreachable, not lost: the fleet's decision, table-driven.

Each case plays a few minutes of controller time in tenths of a second: robots heartbeat
once a second until they die, each mirrored site's MirrorMaker 2 heartbeats once a second;
a cut of lab-a's link silences both (the robots keep running, the controller just hears
nothing from the site), and the fleet ticks twice a second and applies its own decisions,
as the controller does.  Lab-a has two robots (both leased), lab-b one leased and a spare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from pipeline.fleet import Fleet
from schemas import events as ev
from tests.unit.test_fleet import announce, beat, submit
from topics import mirror_heartbeats

HOLD = 300.0
SITE_OF = {"a1": "lab-a", "a2": "lab-a", "b1": "lab-b", "b2": "lab-b"}


@dataclass(frozen=True)
class Case:
    name: str
    #: When each robot dies (absent: it never does).
    silent_from: dict[str, float]
    #: lab-a's link is down between these times (inclusive start, exclusive end).
    cut: tuple[float, float] | None
    #: Which sites MirrorMaker 2 mirrors (their MM2 heartbeats reach the controller).
    mirrored: tuple[str, ...]
    until: float
    lost: list[str]
    #: Substring of every lost robot's reason.
    reason: str = "no heartbeat"
    leased_at_end: set[str] = field(default_factory=set)
    #: Tenths of a second past each whole second at which robots / MM2 heartbeat.
    robot_phase: int = 0
    link_phase: int = 0
    #: After the heal, lab-a's robots are heard this much later than its mirror (catch-up).
    robots_lag_s: float = 0.0


CASES = [
    Case("site link down: its robots are neither lost nor released within the hold",
         {"a1": 10.0, "a2": 10.0}, (10.0, math.inf), ("lab-a", "lab-b"), 10.0 + 60,
         lost=[], leased_at_end={"a1", "a2", "b1"}),
    Case("a cut heard last from the robots, 0.9 s after the mirror: held",
         {}, (10.95, math.inf), ("lab-a", "lab-b"), 10.0 + 60,
         lost=[], leased_at_end={"a1", "a2", "b1"}, robot_phase=9, link_phase=0),
    Case("a cut heard last from the mirror, 0.9 s after the robots: held",
         {}, (10.95, math.inf), ("lab-a", "lab-b"), 10.0 + 60,
         lost=[], leased_at_end={"a1", "a2", "b1"}, robot_phase=0, link_phase=9),
    Case("site link down longer than the hold: its robots are lost and a spare leased",
         {"a1": 10.0, "a2": 10.0}, (10.0, math.inf), ("lab-a", "lab-b"), 10.0 + HOLD + 2,
         lost=["a1", "a2"], reason="unreachable", leased_at_end={"b1", "b2"}),
    Case("one robot silent while its site's link is up: lost as today",
         {"a1": 10.0}, None, ("lab-a", "lab-b"), 20.0,
         lost=["a1"], leased_at_end={"a2", "b1", "b2"}),
    Case("a robot silent at another site than the cut one: lost as today",
         {"a1": 10.0, "a2": 10.0, "b1": 10.0}, (10.0, math.inf), ("lab-a", "lab-b"), 20.0,
         lost=["b1"], leased_at_end={"a1", "a2", "b2"}),
    Case("no mirror (one broker): every silent robot is lost as today",
         {"a1": 10.0, "a2": 10.0}, None, (), 20.0,
         lost=["a1", "a2"], leased_at_end={"b1", "b2"}),
    Case("link back after a 60 s cut with the robots still there: nobody lost",
         {}, (10.0, 70.0), ("lab-a", "lab-b"), 100.0,
         lost=[], leased_at_end={"a1", "a2", "b1"}),
    Case("link back, robots heard 4 s after the mirror (the copy catching up): nobody lost",
         {}, (10.0, 70.0), ("lab-a", "lab-b"), 100.0,
         lost=[], leased_at_end={"a1", "a2", "b1"}, robots_lag_s=4.0),
    Case("link back but a robot never speaks again: lost one timeout after the heal",
         {"a1": 10.0}, (10.0, 70.0), ("lab-a", "lab-b"), 100.0,
         lost=["a1"], leased_at_end={"a2", "b1", "b2"}),
]


def play(case: Case) -> tuple[Fleet, list[tuple[float, ev.Envelope]]]:
    fleet = Fleet(heartbeat_timeout_s=5.0, site_hold_s=HOLD)
    for robot_id, site in SITE_OF.items():
        announce(fleet, robot_id, "reacher2d", site)
    submit(fleet, "exp", [{"robot_type": "reacher2d", "count": 3}])  # a1, a2, b1 by id
    decisions: list[tuple[float, ev.Envelope]] = []
    for i in range(int(case.until * 10) + 1):
        now = i / 10
        cut = case.cut or (math.inf, math.inf)
        if i % 10 == case.robot_phase:
            for robot_id, site in SITE_OF.items():
                heard = site != "lab-a" or not cut[0] <= now < cut[1] + case.robots_lag_s
                if heard and now < case.silent_from.get(robot_id, math.inf):
                    beat(fleet, robot_id, now)
        if i % 10 == case.link_phase:
            for site in case.mirrored:
                if site != "lab-a" or not cut[0] <= now < cut[1]:
                    fleet.link_heard(site, now)
        if i % 5 == 0:
            out = fleet.tick(now)
            for event in out:
                fleet.apply(event, now)
            decisions += [(now, e) for e in out]
    return fleet, decisions


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_site_link_decides_whether_silent_robots_are_lost(case: Case) -> None:
    fleet, decisions = play(case)
    lost = [e for _, e in decisions
            if isinstance(e, ev.RobotStateChangedV1) and e.state is ev.RobotState.LOST]
    released = [e for _, e in decisions if isinstance(e, ev.LeaseReleasedV1)]
    assert sorted(e.robot_id for e in lost) == case.lost
    assert sorted(e.robot_id for e in released) == case.lost
    assert all(e.reason is ev.LeaseReleaseReason.ROBOT_LOST for e in released)
    assert all(case.reason in e.reason for e in lost)
    assert {r for r in SITE_OF if fleet.robots[r].lease_id is not None} == case.leased_at_end


def test_the_hold_ends_the_hold_length_after_the_link_fell_silent() -> None:
    case = Case("", {"a1": 10.0, "a2": 10.0}, (10.0, math.inf), ("lab-a", "lab-b"),
                10.0 + HOLD + 2, lost=["a1", "a2"])
    _, decisions = play(case)
    when = {e.robot_id: t for t, e in decisions
            if isinstance(e, ev.RobotStateChangedV1) and e.state is ev.RobotState.LOST}
    # The link was last heard at 9 s; the first tick past 9 + HOLD decides.
    assert when == {"a1": 9.0 + HOLD + 0.5, "a2": 9.0 + HOLD + 0.5}


def test_an_unreachable_site_is_reported_with_its_silence() -> None:
    fleet = Fleet(heartbeat_timeout_s=5.0, site_hold_s=HOLD)
    fleet.link_heard("lab-a", 0.0)
    fleet.link_heard("lab-b", 0.0)
    fleet.link_heard("lab-b", 9.0)
    assert fleet.unreachable(10.0) == {"lab-a": 10.0}
    assert fleet.link_heard("lab-a", 12.0) == 12.0
    fleet.link_heard("lab-b", 11.0)
    assert fleet.unreachable(12.0) == {}


@pytest.mark.parametrize("kwargs", [{"site_hold_s": -1.0}, {"link_timeout_s": 5.0},
                                    {"link_timeout_s": 0.0}])
def test_a_fleet_refuses_hold_settings_that_cannot_work(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Fleet(5.0, **kwargs)  # type: ignore[arg-type]


# -- MirrorMaker 2's heartbeat records --------------------------------------------------------

#: A record as MM2 4.1.1 wrote it into the cloud's ``mm2-heartbeats`` (bench sites, run 3).
MM2_KEY = b"\x00\x05lab-a\x00\x05cloud"
MM2_VALUE = bytes.fromhex("0000000001a22e2d6c62")


def test_an_mm2_heartbeat_record_names_its_site_and_emit_time() -> None:
    beat_ = mirror_heartbeats.parse(MM2_KEY, MM2_VALUE)
    assert beat_ == mirror_heartbeats.MirrorHeartbeat("lab-a", "cloud", 0x1a22e2d6c62)


@pytest.mark.parametrize("key,value", [
    (None, MM2_VALUE), (MM2_KEY, None), (b"", MM2_VALUE), (MM2_KEY, b"\x00\x00"),
    (b"\x00\x09lab-a", MM2_VALUE), (b"\xff\xff", MM2_VALUE), (b'{"robot": 1}', MM2_VALUE),
])
def test_a_record_that_is_not_an_mm2_heartbeat_is_ignored(key: bytes | None,
                                                          value: bytes | None) -> None:
    assert mirror_heartbeats.parse(key, value) is None
