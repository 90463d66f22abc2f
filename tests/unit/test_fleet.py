"""Scheduling decisions of the fleet registry, table-driven, with no processes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.fleet import Fleet
from schemas import events as ev
from schemas.experiment import ExperimentSpec
from schemas.spaces import ArraySpec, RobotSpec

TIMEOUT = 5.0


def spec(robot_type: str) -> RobotSpec:
    return RobotSpec(robot_type=robot_type, observation=ArraySpec(shape=(4,)),
                     action=ArraySpec(shape=(2,), low=-1.0, high=1.0))


def announce(fleet: Fleet, robot_id: str, robot_type: str, site: str, now: float = 0.0) -> None:
    fleet.apply(ev.RobotAnnouncedV1(site=site, robot_id=robot_id, spec=spec(robot_type)), now)


def beat(fleet: Fleet, robot_id: str, now: float, steps: int = 0) -> None:
    site = fleet.robots[robot_id].site
    fleet.apply(ev.HeartbeatV1(site=site, robot_id=robot_id, seq=0,
                               state=ev.RobotState.IDLE, steps_total=steps), now)


def submit(fleet: Fleet, name: str, robots: list[dict[str, object]], now: float = 0.0) -> None:
    exp = ExperimentSpec.model_validate({"name": name, "robots": robots})
    fleet.apply(ev.ExperimentSubmittedV1(experiment_id=name, spec=exp.model_dump(mode="json")),
                now)


def run_tick(fleet: Fleet, now: float) -> list[ev.Envelope]:
    out = fleet.tick(now)
    for event in out:
        fleet.apply(event, now)
    return out


def leased(out: list[ev.Envelope]) -> list[tuple[str, str]]:
    return [(e.robot_id, e.experiment_id) for e in out if isinstance(e, ev.LeaseGrantedV1)]


@dataclass(frozen=True)
class Case:
    name: str
    robots: list[tuple[str, str, str]]  # id, type, site
    request: list[dict[str, object]]
    expect: list[str]  # robot ids leased to "exp", in order


CASES = [
    Case("one of a type", [("r1", "reacher2d", "lab-a")],
         [{"robot_type": "reacher2d"}], ["r1"]),
    Case("wrong type is not leased", [("r1", "arm7", "lab-a")],
         [{"robot_type": "reacher2d"}], []),
    Case("count is respected, lowest ids first",
         [("r3", "reacher2d", "lab-a"), ("r1", "reacher2d", "lab-a"),
          ("r2", "reacher2d", "lab-b")],
         [{"robot_type": "reacher2d", "count": 2}], ["r1", "r2"]),
    Case("site constraint", [("r1", "reacher2d", "lab-a"), ("r2", "reacher2d", "lab-b")],
         [{"robot_type": "reacher2d", "sites": ["lab-b"]}], ["r2"]),
    Case("two types at two sites",
         [("a1", "reacher2d", "lab-a"), ("b1", "arm7", "lab-b"), ("b2", "arm7", "lab-b")],
         [{"robot_type": "reacher2d"}, {"robot_type": "arm7", "count": 2}],
         ["a1", "b1", "b2"]),
    Case("not enough robots: lease what exists",
         [("r1", "reacher2d", "lab-a")], [{"robot_type": "reacher2d", "count": 3}], ["r1"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_placement(case: Case) -> None:
    fleet = Fleet(TIMEOUT)
    for robot_id, robot_type, site in case.robots:
        announce(fleet, robot_id, robot_type, site)
    submit(fleet, "exp", case.request)
    out = run_tick(fleet, 1.0)
    assert [r for r, _ in leased(out)] == case.expect
    status = [e for e in out if isinstance(e, ev.ExperimentStatusV1)][-1]
    wanted = sum(int(str(r.get("count", 1))) for r in case.request)
    assert status.state is (ev.ExperimentState.RUNNING if len(case.expect) == wanted
                            else ev.ExperimentState.SCHEDULED)


def test_a_leased_robot_is_not_leased_twice_and_the_second_experiment_waits() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r1", "reacher2d", "lab-a")
    submit(fleet, "first", [{"robot_type": "reacher2d"}])
    submit(fleet, "second", [{"robot_type": "reacher2d"}])
    out = run_tick(fleet, 1.0)
    assert leased(out) == [("r1", "first")]
    assert fleet.experiments["second"].state is ev.ExperimentState.SCHEDULED
    assert leased(run_tick(fleet, 2.0)) == []


def test_a_silent_robot_is_lost_its_lease_released_and_a_spare_leased() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r1", "reacher2d", "lab-a")
    announce(fleet, "r2", "reacher2d", "lab-b")
    submit(fleet, "exp", [{"robot_type": "reacher2d"}])
    assert leased(run_tick(fleet, 1.0)) == [("r1", "exp")]
    beat(fleet, "r2", 4.0)
    assert run_tick(fleet, 4.9) == []  # r1 last seen at 0.0: not yet past the timeout
    beat(fleet, "r2", 5.5)
    out = run_tick(fleet, 5.5)
    kinds = [type(e).__name__ for e in out]
    assert kinds[:2] == ["RobotStateChangedV1", "LeaseReleasedV1"]
    released = out[1]
    assert isinstance(released, ev.LeaseReleasedV1)
    assert released.reason is ev.LeaseReleaseReason.ROBOT_LOST and released.robot_id == "r1"
    assert leased(out) == [("r2", "exp")]
    assert fleet.robots["r1"].state is ev.RobotState.LOST
    assert fleet.experiments["exp"].robots == {"r2"}


def test_a_lost_robot_that_heartbeats_again_rejoins_as_an_idle_spare() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r1", "reacher2d", "lab-a")
    run_tick(fleet, 10.0)
    assert fleet.robots["r1"].state is ev.RobotState.LOST
    beat(fleet, "r1", 11.0)
    assert fleet.robots["r1"].state is ev.RobotState.IDLE
    submit(fleet, "exp", [{"robot_type": "reacher2d"}])
    assert leased(run_tick(fleet, 11.5)) == [("r1", "exp")]


def test_a_restarted_agent_reannounces_and_rejoins() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r1", "reacher2d", "lab-a")
    run_tick(fleet, 10.0)
    announce(fleet, "r1", "reacher2d", "lab-a", now=12.0)
    assert fleet.robots["r1"].state is ev.RobotState.IDLE


def test_rebuilding_from_the_same_events_gives_the_same_state() -> None:
    live = Fleet(TIMEOUT)
    log: list[ev.Envelope] = []

    def apply(event: ev.Envelope, now: float) -> None:
        live.apply(event, now)
        log.append(event)

    apply(ev.RobotAnnouncedV1(site="lab-a", robot_id="r1", spec=spec("reacher2d")), 0.0)
    apply(ev.RobotAnnouncedV1(site="lab-b", robot_id="r2", spec=spec("arm7")), 0.0)
    exp = ExperimentSpec(name="exp", robots=({"robot_type": "arm7"},))  # type: ignore[arg-type]
    apply(ev.ExperimentSubmittedV1(experiment_id="exp", spec=exp.model_dump(mode="json")), 0.0)
    for event in live.tick(1.0):
        apply(event, 1.0)

    rebuilt = Fleet(TIMEOUT)
    for event in log:
        rebuilt.apply(event, 100.0)
    assert {r: (x.state, x.experiment_id) for r, x in rebuilt.robots.items()} == {
        r: (x.state, x.experiment_id) for r, x in live.robots.items()
    }
    assert rebuilt.experiments["exp"].state is ev.ExperimentState.RUNNING
    # Applying the decisions again changes nothing, and the next tick decides nothing new.
    for event in log:
        rebuilt.apply(event, 100.0)
    assert leased(rebuilt.tick(100.0)) == []


def test_steps_per_second_comes_from_heartbeats() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r1", "reacher2d", "lab-a")
    beat(fleet, "r1", 1.0, steps=0)
    beat(fleet, "r1", 3.0, steps=40)
    assert fleet.robots["r1"].steps_per_s == pytest.approx(20.0)


def test_a_cancelled_experiment_gives_its_robots_back() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r1", "reacher2d", "lab-a")
    submit(fleet, "exp", [{"robot_type": "reacher2d"}])
    run_tick(fleet, 1.0)
    fleet.apply(ev.ExperimentStatusV1(experiment_id="exp", state=ev.ExperimentState.CANCELLED),
                1.2)
    out = run_tick(fleet, 1.5)
    released = [e for e in out if isinstance(e, ev.LeaseReleasedV1)]
    assert [(e.robot_id, e.reason) for e in released] == [
        ("r1", ev.LeaseReleaseReason.CANCELLED)
    ]
    assert fleet.robots["r1"].state is ev.RobotState.IDLE
    assert run_tick(fleet, 2.0) == []


def test_an_invalid_submission_fails_with_the_field_named_instead_of_crashing() -> None:
    fleet = Fleet(TIMEOUT)
    fleet.apply(ev.ExperimentSubmittedV1(experiment_id="bad", spec={"robots": "many"}), 0.0)
    [status] = run_tick(fleet, 1.0)
    assert isinstance(status, ev.ExperimentStatusV1)
    assert status.state is ev.ExperimentState.FAILED and "name" in status.detail
    assert run_tick(fleet, 2.0) == []


def beat_as(fleet: Fleet, robot_id: str, incarnation: str, now: float) -> None:
    fleet.apply(ev.HeartbeatV1(site="lab-a", robot_id=robot_id, seq=0,
                               state=ev.RobotState.IDLE, incarnation=incarnation), now)


def test_two_agents_heartbeating_for_r2_are_reported_once_as_a_double_claim(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r2", "reacher2d", "lab-a")
    for t in range(4):  # two agent processes, each heartbeating once a second
        beat_as(fleet, "r2", "aaaa", t + 0.0)
        beat_as(fleet, "r2", "bbbb", t + 0.5)
    assert "aaaa" in fleet.robots["r2"].double_claim
    assert "bbbb" in fleet.robots["r2"].double_claim
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [
        fleet.robots["r2"].double_claim]
    [change] = run_tick(fleet, 4.0)
    assert isinstance(change, ev.RobotStateChangedV1)
    assert change.robot_id == "r2" and change.reason.startswith("double claim")
    assert run_tick(fleet, 4.1) == []  # said once


def test_a_new_incarnation_after_a_lease_change_is_not_a_double_claim() -> None:
    fleet = Fleet(TIMEOUT)
    announce(fleet, "r2", "reacher2d", "lab-a")
    for t in range(3):
        beat_as(fleet, "r2", "aaaa", float(t))
    for t in range(3, 10):
        beat_as(fleet, "r2", "bbbb", float(t))
    assert fleet.robots["r2"].double_claim == ""
    assert run_tick(fleet, 10.0) == []


def test_robots_are_leased_only_to_experiments_with_the_task_they_are_set_up_for() -> None:
    fleet = Fleet(TIMEOUT)
    for robot_id, task in (("p-reach", "reach"), ("p-push", "push")):
        fleet.apply(ev.RobotAnnouncedV1(
            site="lab-a", robot_id=robot_id,
            spec=spec("panda").model_copy(update={"task": task})), 0.0)
    for name, task in (("pushing", "push"), ("reaching", "reach"), ("placing", "pick_place")):
        exp = ExperimentSpec.model_validate(
            {"name": name, "task": task, "robots": [{"robot_type": "panda"}]})
        fleet.apply(ev.ExperimentSubmittedV1(experiment_id=name,
                                             spec=exp.model_dump(mode="json")), 0.0)
    out = run_tick(fleet, 1.0)
    assert sorted(leased(out)) == [("p-push", "pushing"), ("p-reach", "reaching")]
    assert fleet.experiments["placing"].state is ev.ExperimentState.SCHEDULED


def test_a_robot_spec_recorded_before_tasks_existed_reads_as_reach() -> None:
    old = spec("arm7").model_dump(mode="json")
    del old["task"]
    assert RobotSpec.model_validate(old).task == "reach"
