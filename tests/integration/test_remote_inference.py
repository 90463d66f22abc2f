"""A remotely served language-conditioned policy end to end (issue 14).

Real broker, real processes: a controller places the experiment's inference replica on a
compute host (``userctl host``), the host starts ``userctl inference`` as its child, and
robots of two types at two sites, told different tasks, run on action chunks one replica
serves over the bus from one policy shared across the types.  Killing the replica makes
the robots hold; the host restarts it and the robots resume.

The module runs on a broker of its own (as ``test_fleet`` does): a controller serves every
experiment it finds in the log.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from schemas import events as ev
from tests.conftest import Processes, catalog_broker
from tests.data import INSTRUCTION_EMBEDDINGS
from tests.integration.test_fleet import Watch
from topics import catalog
from topics.producer import EventProducer
from topics.settings import KafkaSettings, SiteMap

#: The smallest model that is still the policy kind (its instruction is the robots', so the
#: replica's warm-up embeds what they will ask with).
TINY_VLA = {"d_model": 32, "layers": 1, "heads": 2, "ff": 64, "chunk": 10,
            "instruction": "reach the target"}


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
          ) -> Iterator[KafkaSettings]:
    yield from catalog_broker(tmp_path_factory.mktemp("remote-kafka"), kafka_libs)


def cancel(kafka: KafkaSettings, *names: str) -> None:
    """End experiments (as `userctl experiments cancel` does), so that the next test's
    controller, reading the same log, neither serves nor moves them."""
    producer = EventProducer(kafka, role="test")
    for name in names:
        producer.send(catalog.EXPERIMENTS, ev.ExperimentStatusV1(
            experiment_id=name, state=ev.ExperimentState.CANCELLED, detail="test over"))
    producer.flush(30.0)


def test_robots_at_two_sites_run_a_remotely_served_policy_and_hold_while_it_is_gone(
    kafka: KafkaSettings, unique: str, processes: Processes, tmp_path: Path,
) -> None:
    halves = SiteMap().sites
    sites = {f"a-{unique}": halves["lab-a"], f"b-{unique}": halves["lab-b"]}
    site_a, site_b = sites
    env = {
        **os.environ,
        "USER_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "USER_KAFKA_SITES": ";".join(f"{s}={','.join(map(str, p))}" for s, p in sites.items()),
        "USER_HOME": str(tmp_path / "home"),
        "USER_CONTROLLER_HEARTBEAT_TIMEOUT_S": "5",
        "USER_HOST_RESTART_BACKOFF_S": "1",
        "USER_AGENT_POLICY": "remote",
        "USER_AGENT_INSTRUCTION": "reach the target",
        # The replica (started twice) reads the instruction's embedding instead of loading
        # the sentence encoder (tens of seconds under load); test_vla_policy checks the
        # file is still the encoder's.
        "USER_TEXT_EMBEDDINGS": str(INSTRUCTION_EMBEDDINGS),
        "OMP_NUM_THREADS": "1",
    }
    watch = Watch(kafka, (catalog.PLACEMENTS, catalog.EXPERIMENTS, catalog.INFERENCE_REPLIES,
                          catalog.INFERENCE_REQUESTS, catalog.HOSTS))
    try:
        processes.userctl("controller", "controller", env=env)
        processes.userctl("host", "host", "--host-id", f"h-{unique}", "--cpus", "2",
                          "--no-gpus", env=env)
        # Two robot types (2 and 7 action values) and two tasks, one policy; the agents
        # are told "reach the target", the experiment tells site b's robot otherwise.
        for site, robot_type in ((site_a, "reacher2d"), (site_b, "arm7")):
            processes.userctl(f"agent-{site}", "agent", "--robot-type", robot_type,
                              "--site", site, "--robot-id", f"r-{site}", env=env)
        name = f"remote-{unique}"
        spec = tmp_path / "exp.yaml"
        spec.write_text(yaml.safe_dump({
            "name": name,
            "robots": [{"robot_type": "reacher2d", "sites": [site_a]},
                       {"robot_type": "arm7", "sites": [site_b],
                        "instruction": "touch the red marker"}],
            "policy": {"kind": "vla_transformer", "options": TINY_VLA,
                       "shared_across_types": True},
            "inference": {"replicas": 1, "chunk": 10},
        }))
        watch.wait_for("the host to announce", lambda: watch.of(ev.HostAnnouncedV1), 60)
        submit = processes.userctl("submit", "experiments", "submit", str(spec), env=env)
        assert submit.wait(timeout=60) == 0, processes.log("submit")

        placed = watch.wait_for("the replica to be placed", lambda: [
            e for e in watch.of(ev.PlacementGrantedV1) if e.experiment_id == name], 60)
        assert placed[0].host_id == f"h-{unique}"
        assert placed[0].role is ev.WorkloadRole.INFERENCE

        def served(since: float) -> set[str] | None:
            robots = {e.robot_id for e in watch.of(ev.ActionChunkV1)
                      if e.experiment_id == name and e.produced_at.timestamp() > since}
            return robots if robots == {f"r-{site_a}", f"r-{site_b}"} else None

        watch.wait_for("chunks for the robots at both sites", lambda: served(0.0), 120)
        sizes = {e.robot_id: {len(a) for a in e.actions} for e in watch.of(ev.ActionChunkV1)
                 if e.experiment_id == name}
        assert sizes == {f"r-{site_a}": {2}, f"r-{site_b}": {7}}  # each robot's own size
        asked = {(e.robot_id, e.robot_type, e.instruction)
                 for e in watch.of(ev.InferenceRequestV1) if e.experiment_id == name}
        assert asked == {(f"r-{site_a}", "reacher2d", "reach the target"),
                         (f"r-{site_b}", "arm7", "touch the red marker")}

        def said(what: str) -> dict[str, int]:
            return {s: processes.log(f"agent-{s}").count(what) for s in sites}

        holds, resumes = "holds: no action due", "resumes: the remote policy answers again"
        watch.wait_for("both robots to act on served chunks",
                       lambda: all(said(resumes).values()), 60)

        # Kill the replica (the host's child, by the pid the host logged).
        held_before, resumed_before = said(holds), said(resumes)
        pid = int(re.findall(r"as pid (\d+)", processes.log("host"))[-1])
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        watch.wait_for("both robots to hold", lambda: all(
            n > held_before[s] for s, n in said(holds).items()), 30)
        # The host restarts its placement; the robots ask again and act again.
        watch.wait_for("chunks after the restart", lambda: served(killed), 120)
        watch.wait_for("both robots to resume", lambda: all(
            n > resumed_before[s] for s, n in said(resumes).items()), 30)
        for site in sites:
            assert "Traceback" not in processes.log(f"agent-{site}")
        assert "exited with code" in processes.log("host")
    finally:
        watch.close()
        cancel(kafka, f"remote-{unique}")


def test_compute_is_placed_queued_in_order_and_moved_when_a_host_is_lost(
    kafka: KafkaSettings, unique: str, processes: Processes, tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "USER_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "USER_HOME": str(tmp_path / "home"),
        "USER_CONTROLLER_HEARTBEAT_TIMEOUT_S": "4",
        "OMP_NUM_THREADS": "1",
    }
    watch = Watch(kafka, (catalog.PLACEMENTS, catalog.EXPERIMENTS, catalog.HOSTS))
    hosts = {f"h1-{unique}", f"h2-{unique}"}
    try:
        processes.userctl("controller", "controller", env=env)
        for h in sorted(hosts):
            processes.userctl(h, "host", "--host-id", h, "--cpus", "1", "--no-gpus", env=env)
        watch.wait_for("both hosts", lambda: {e.host_id for e in watch.of(ev.HostAnnouncedV1)}
                       >= hosts, 60)

        def submit(name: str, extra: dict[str, object]) -> None:
            spec = tmp_path / f"{name}.yaml"
            spec.write_text(yaml.safe_dump({
                "name": name, "robots": [{"robot_type": "reacher2d",
                                          "sites": [f"nowhere-{unique}"]}], **extra}))
            proc = processes.userctl(f"submit-{name}", "experiments", "submit", str(spec),
                                     env=env)
            assert proc.wait(timeout=60) == 0, processes.log(f"submit-{name}")

        def status(name: str) -> ev.ExperimentStatusV1 | None:
            mine = [e for e in watch.of(ev.ExperimentStatusV1) if e.experiment_id == name]
            return mine[-1] if mine else None

        served, gpu, after = f"served-{unique}", f"gpu-{unique}", f"after-{unique}"
        submit(served, {"inference": {"replicas": 1}})
        first = watch.wait_for("the replica's placement", lambda: [
            e for e in watch.of(ev.PlacementGrantedV1) if e.experiment_id == served], 60)[0]
        submit(gpu, {"learner": {"gpus": 1}})  # no host has a GPU: it waits
        submit(after, {"inference": {"replicas": 1}})  # fits, but waits its turn (FIFO)
        watch.wait_for("both to queue", lambda: all(
            (s := status(n)) is not None and s.state is ev.ExperimentState.QUEUED
            for n in (gpu, after)), 60)
        assert status(gpu).detail.startswith("position 1 ")  # type: ignore[union-attr]
        assert status(after).detail.startswith("position 2 ")  # type: ignore[union-attr]

        # The host running the replica dies; the replica moves to the other host.
        lost = first.host_id
        pid = next(p.pid for p in processes.running
                   if any(lost in str(a) for a in p.args))  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        released = watch.wait_for("the lost host's release", lambda: [
            e for e in watch.of(ev.PlacementReleasedV1)
            if e.placement_id == first.placement_id], 60)[0]
        assert released.reason is ev.PlacementReleaseReason.HOST_LOST
        moved = watch.wait_for("the replica on the other host", lambda: [
            e for e in watch.of(ev.PlacementGrantedV1)
            if e.placement_id == first.placement_id and e.host_id != lost], 60)[0]
        assert moved.host_id in hosts - {lost}
    finally:
        watch.close()
        cancel(kafka, *(f"{n}-{unique}" for n in ("served", "gpu", "after")))
