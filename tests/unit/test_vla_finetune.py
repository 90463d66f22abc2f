"""Online fine-tuning of the large policy with HG-DAgger (issue 14, deliverable 4), as the
π0 experiment does: a real MuJoCo robot runs the ``vla_transformer`` served by an inference
core (the replica's Kafka-free half) through its remote policy, the scripted operator takes
over when it strays, the learner (``hg_dagger``) trains on the takeover segments only and
publishes versions, the replica serves each new version, and the history reports success
and intervention rate per version.  In one process, without Kafka; Delta on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import write_deltalake

from agents import registry as robots
from agents import takeover
from agents.inference import InferenceCore, Servable
from agents.outbox import MemoryOutbox
from agents.policies import scripted
from agents.remote import RemotePolicy
from agents.worker import Lease, RobotWorker
from infra import cli
from learners import policies
from learners.core import JSON
from learners.loop import Steps
from pipeline import demos, history, rewards, tables
from schemas.events import InferenceRequestV1
from schemas.transitions import TransitionBatch
from tests.unit.test_learn_loop import REWARD, Publishers, experiment, make

TINY: dict[str, JSON] = {"d_model": 32, "layers": 1, "heads": 2, "ff": 64, "chunk": 5,
                         "instruction": "reach the target"}


def test_hg_dagger_fine_tunes_the_served_vla_on_takeovers_and_reports_each_version(
        tmp_path: Path, precomputed_embeddings: None, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)
    robot = robots.make_robot("reacher2d", seed=3, validate=False)
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0.6, patience=2,
                                         min_steps=5, agree_steps=2)
    spec = experiment(algorithm={"name": "hg_dagger", "batch_size": 16, "utd_ratio": 0.2},
                      policy={"kind": "vla_transformer", "options": TINY},
                      weight_sync={"every_updates": 1000, "every_s": 3600})
    publishers = Publishers()
    learner = make(spec, publishers, known={"reacher2d": robot.spec})
    policy_spec = policies.PolicySpec.from_robot_spec(robot.spec)

    # The replica: version 0 is the kind freshly initialised, as `userctl inference`
    # serves it until the learner publishes.
    served: list[tuple[Servable, int]] = [
        (policies.build("vla_transformer", policy_spec, TINY), 0)]
    core = InferenceCore(lambda: served[-1], replica="0")

    def send(request: InferenceRequestV1) -> None:  # the bus, answered at once
        for reply in core.answer([request]):
            remote.deliver(reply)

    remote = RemotePolicy(
        robot_id="r1", site="lab-a", experiment_id=lambda: "exp-1", send=send,
        control_hz=robot.spec.control_hz, instruction="reach the target", action_dim=2)
    outbox = MemoryOutbox()
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=outbox,
                         policy=lambda: (remote, remote.policy_version), flush_steps=25,
                         flush_s=600.0, takeover=operator)
    lease = Lease("exp-1", "lease-1")
    reward = rewards.lookup(REWARD)
    root = tmp_path / "delta"
    seen = 0
    try:
        for _ in range(3):  # three rounds: act (with takeovers), learn, serve the new version
            for _ in range(2 * robot.spec.max_episode_steps):
                worker.tick(lease, [])
            worker.flush()
            raws = [p for _, p in outbox.sent if isinstance(p, TransitionBatch)][seen:]
            seen += len(raws)
            for raw in raws:
                learner.add(Steps.of_batch(rewards.apply(reward, raw)), "live")
            trained = learner.types["reacher2d"]
            before = trained.update_step
            while learner.train_round():
                pass
            assert trained.update_step > before
            # HG-DAgger: every row the policy learnt from was the operator's.
            assert trained.last_stats["charts/takeover_rows"] == 1.0
            learner.publish_all()
            for p in publishers.publishers:
                p.flush(10.0)
            sink = publishers.sinks[trained.stream]
            manifest = sink.manifests[-1]
            blob = b"".join(sink.chunks[o].data for o in manifest.chunk_offsets)
            served.append((policies.load(policy_spec, blob), manifest.version))
        worker.tick(None, [])
    finally:
        publishers.close()

    raws = [p for _, p in outbox.sent if isinstance(p, TransitionBatch)]
    versions = sorted({int(v) for b in raws for v in b.policy_version})
    assert len(versions) == 3 and versions[0] == 0  # steps of each served version
    took = np.concatenate([b.intervention for b in raws])
    assert 0 < took.sum() < len(took)

    # The report: success and intervention rate per policy version, from Delta.
    source = tables.Source("test", 0, -1)
    write_deltalake(str(tables.table_path(root, tables.TRANSITIONS_RAW)),
                    pa.concat_tables([tables.batch_rows(b, source) for b in raws],
                                     promote_options="permissive"),
                    partition_by=list(tables.PARTITION_BY))
    history.backfill(root, "exp-1", reward)
    report = history.sql(root, history.BY_VERSION, {
        "experiment": "exp-1", "reward_fn": REWARD, "demo_prefix": demos.DEMO_PREFIX})
    rows = report.to_pylist()
    assert [r["policy_version"] for r in rows] == versions
    assert sum(r["steps"] for r in rows) == len(took)
    assert sum(r["interventions"] for r in rows) == int(took.sum())
    for r in rows:
        assert 0.0 <= r["intervention_rate"] <= 1.0
        assert 0.0 <= r["autonomous_success_rate"] <= r["success_rate"] <= 1.0
        assert r["episodes"] >= 1
    # The same report from the command line.
    capsys.readouterr()
    assert cli.main(["history", "--root", str(root), "--json", "interventions", "exp-1",
                     "--by-version", "--reward", REWARD]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == rows
