"""The compute host role's reconcile loop (infra.host): children follow placements."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from infra import host as host_mod
from schemas import events as ev
from topics import catalog
from topics.settings import KafkaSettings
from topics.validation import Accepted, Record


def record(event: ev.Envelope) -> Accepted:
    return Accepted(Record(catalog.PLACEMENTS.name, 0, 0, b""), event)


@pytest.fixture
def host() -> Iterator[host_mod.Host]:
    started: list[tuple[ev.PlacementGrantedV1, dict[str, str]]] = []

    def launch(p: ev.PlacementGrantedV1, env: dict[str, str]) -> subprocess.Popen[bytes]:
        started.append((p, env))
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    h = host_mod.Host(host_mod.HostSettings(host_id="h1", detect_gpus=False,
                                            restart_backoff_s=0.0),
                      KafkaSettings(), launcher=launch)
    h.started = started  # type: ignore[attr-defined]
    try:
        yield h
    finally:
        for child in h.children.values():
            host_mod.Host._terminate(child)


GRANT = ev.PlacementGrantedV1(placement_id="e.inference.0", experiment_id="e", host_id="h1",
                              role=ev.WorkloadRole.INFERENCE, index=0, gpus=(1,))


def test_the_host_starts_its_placements_restarts_the_dead_and_stops_the_released(
        host: host_mod.Host) -> None:
    host.take(record(GRANT))
    host.take(record(GRANT.model_copy(update={"placement_id": "other.learner.0",
                                              "host_id": "h2"})))  # another host's
    host.reconcile(time.monotonic())
    assert host.running() == ("e.inference.0",)
    placement, env = host.started[0]  # type: ignore[attr-defined]
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert host_mod.command_for(placement)[-4:] == ["inference", "e", "--replica", "0"]

    proc = host.children["e.inference.0"].process
    assert proc is not None
    proc.kill()
    proc.wait(10)
    host.reconcile(time.monotonic())  # reported, then restarted (no back-off here)
    assert "exited with code" in host.heartbeat(1).failed["e.inference.0"]
    assert host.running() == ("e.inference.0",)
    assert len(host.started) == 2  # type: ignore[attr-defined]

    host.take(record(ev.PlacementReleasedV1(
        placement_id="e.inference.0", experiment_id="e", host_id="h1",
        reason=ev.PlacementReleaseReason.CANCELLED)))
    host.reconcile(time.monotonic())
    assert host.running() == () and host.heartbeat(2).failed == {}


def test_a_learner_placement_runs_what_userctl_learn_runs() -> None:
    learner = GRANT.model_copy(update={"role": ev.WorkloadRole.LEARNER})
    assert host_mod.command_for(learner)[1:] == ["-m", "infra.cli", "learn", "e"]
