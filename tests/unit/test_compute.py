"""Compute scheduling: placing learners and inference replicas on hosts (issue 14)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline import compute
from pipeline.compute import Demand, HostView, Placed, Want
from schemas import events as ev

LRN, INF = ev.WorkloadRole.LEARNER, ev.WorkloadRole.INFERENCE


def want(exp: str, learner_gpus: int | None = 0, replicas: int = 0, replica_gpus: int = 0,
         started: bool = False) -> Want:
    ds: list[Demand] = []
    if learner_gpus is not None:
        ds.append(Demand(exp, LRN, 0, learner_gpus))
    ds += [Demand(exp, INF, i, replica_gpus) for i in range(replicas)]
    return Want(exp, tuple(ds), started)


@dataclass(frozen=True)
class Case:
    name: str
    hosts: tuple[HostView, ...]
    placed: tuple[Placed, ...]
    wants: tuple[Want, ...]
    grants: dict[str, tuple[str, tuple[int, ...]]]  # placement id -> (host, gpus)
    queued: tuple[str, ...] = ()


GPU2 = HostView("gpu-a", slots=8, gpus=(0, 1))
CPU = HostView("cpu-a", slots=4)
CPU_SMALL = HostView("cpu-b", slots=1)

CASES = [
    Case("a GPU learner goes to the GPU host, CPU replicas spread over CPU hosts first",
         (GPU2, CPU, HostView("cpu-c", slots=4)), (), (want("e", 1, replicas=2),),
         {"e.learner.0": ("gpu-a", (0,)), "e.inference.0": ("cpu-a", ()),
          "e.inference.1": ("cpu-c", ())}),
    Case("CPU-only hosts cannot take a GPU learner: the experiment is queued",
         (CPU,), (), (want("e", 1),), {}, ("e",)),
    Case("on a CPU-only machine a learner asking gpus=0 plus two replicas is placed",
         (CPU,), (), (want("e", 0, replicas=2),),
         {"e.learner.0": ("cpu-a", ()), "e.inference.0": ("cpu-a", ()),
          "e.inference.1": ("cpu-a", ())}),
    Case("GPUs are never shared: the second GPU experiment waits for a free GPU",
         (HostView("gpu-a", slots=8, gpus=(0,)),),
         (Placed(Demand("first", LRN, 0, 1), "gpu-a", (0,)),),
         (want("first", 1, started=True), want("second", 1)), {}, ("second",)),
    Case("strict FIFO: a small experiment does not start ahead of a queued big one",
         (CPU_SMALL,), (), (want("big", 0, replicas=1), want("small", 0)), {},
         ("big", "small")),
    Case("an experiment is placed whole or not at all (slots short by one)",
         (HostView("cpu-a", slots=2),), (), (want("e", 0, replicas=2),), {}, ("e",)),
    Case("host lost: the started experiment's replica moves to another host",
         (CPU,), (Placed(Demand("e", LRN, 0, 0), "cpu-a"),),
         (want("e", 0, replicas=1, started=True),),
         {"e.inference.0": ("cpu-a", ())}),
    Case("host lost with no other host: nothing moves, the experiment is not re-queued",
         (), (), (want("e", 0, replicas=1, started=True),), {}),
    Case("the tightest GPU fit: a 1-GPU learner leaves the 2-GPU host whole",
         (GPU2, HostView("gpu-b", slots=8, gpus=(3,))), (), (want("e", 1),),
         {"e.learner.0": ("gpu-b", (3,))}),
    Case("a later experiment is placed once the earlier one fits",
         (CPU,), (), (want("a", 0), want("b", 0, replicas=1)),
         {"a.learner.0": ("cpu-a", ()), "b.learner.0": ("cpu-a", ()),
          "b.inference.0": ("cpu-a", ())}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_schedule(case: Case) -> None:
    plan = compute.schedule(case.hosts, case.placed, case.wants)
    got = {g.demand.placement_id: (g.host_id, g.gpus) for g in plan.grants}
    assert got == case.grants
    assert tuple(plan.queued) == case.queued
    for position, exp in enumerate(case.queued, 1):
        assert plan.queued[exp].startswith(f"position {position} in the compute queue")


# -- the event-fed state, as the controller runs it ---------------------------------------


def spec(name: str, learner_gpus: int | None, replicas: int) -> dict[str, object]:
    learner: dict[str, object] = {} if learner_gpus is None else {"gpus": learner_gpus}
    return {"name": name, "robots": [{"robot_type": "reacher2d"}], "learner": learner,
            "inference": {"replicas": replicas}}


def host(host_id: str, gpus: int = 0, cpus: int = 4) -> ev.HostAnnouncedV1:
    return ev.HostAnnouncedV1(host_id=host_id, site="cloud", cpus=cpus, memory_mb=8192,
                              gpus=tuple(ev.GpuInfo(index=i, name="H100", memory_mb=81920)
                                         for i in range(gpus)))


def beat(c: compute.Compute, host_id: str, now: float) -> None:
    c.apply(ev.HostHeartbeatV1(host_id=host_id, site="cloud", seq=0), now)


def run(c: compute.Compute, now: float) -> list[ev.Envelope]:
    out = c.tick(now)
    for e in out:
        c.apply(e, now)
    return out


def test_an_experiment_is_queued_placed_when_a_host_comes_and_moved_on_host_loss() -> None:
    c = compute.Compute(heartbeat_timeout_s=5.0)
    c.apply(ev.ExperimentSubmittedV1(experiment_id="e", spec=spec("e", 0, 2)), 0.0)
    out = run(c, 0.0)
    assert [type(e) for e in out] == [ev.ExperimentStatusV1]
    assert c.experiments["e"].state is ev.ExperimentState.QUEUED
    assert "position 1" in c.experiments["e"].detail

    c.apply(host("h1", cpus=2), 1.0)
    c.apply(host("h2", cpus=2), 1.0)
    assert not run(c, 1.0)  # announced, but no heartbeat heard yet: no work for them
    beat(c, "h1", 1.0)
    beat(c, "h2", 1.0)
    out = run(c, 1.0)
    placed = {e.placement_id: e.host_id for e in out if isinstance(e, ev.PlacementGrantedV1)}
    assert set(placed) == {"e.learner.0", "e.inference.0", "e.inference.1"}
    assert placed["e.inference.0"] != placed["e.inference.1"]  # replicas spread
    assert c.experiments["e"].state is ev.ExperimentState.SCHEDULED
    c.apply(ev.ExperimentStatusV1(experiment_id="e", state=ev.ExperimentState.RUNNING), 1.0)

    # h2 stops heartbeating; h1 keeps on.  h1 has 2 slots: it can take one more workload.
    lost_host = placed["e.inference.1"]
    kept = "h1" if lost_host == "h2" else "h2"
    c.apply(ev.HostHeartbeatV1(host_id=kept, site="cloud", seq=1), 7.0)
    out = run(c, 7.0)
    released = [e for e in out if isinstance(e, ev.PlacementReleasedV1)]
    assert {e.host_id for e in released} == {lost_host}
    assert all(e.reason is ev.PlacementReleaseReason.HOST_LOST for e in released)
    moved = [e for e in out if isinstance(e, ev.PlacementGrantedV1)]
    assert moved and all(e.host_id == kept for e in moved)
    assert not any(isinstance(e, ev.ExperimentStatusV1) for e in out)  # not re-queued


def test_an_ended_experiment_gives_its_hosts_back_and_experiments_without_compute_are_left_alone(
) -> None:
    c = compute.Compute()
    c.apply(host("h1"), 0.0)
    beat(c, "h1", 0.0)
    c.apply(ev.ExperimentSubmittedV1(experiment_id="plain", spec=spec("plain", None, 0)), 0.0)
    c.apply(ev.ExperimentSubmittedV1(experiment_id="e", spec=spec("e", 0, 0)), 0.0)
    out = run(c, 0.0)
    assert {e.experiment_id for e in out} == {"e"}
    c.apply(ev.ExperimentStatusV1(experiment_id="e", state=ev.ExperimentState.CANCELLED), 1.0)
    out = run(c, 1.0)
    assert [(type(e), getattr(e, "reason", None)) for e in out] == [
        (ev.PlacementReleasedV1, ev.PlacementReleaseReason.CANCELLED)]
    assert not c.placements
