"""One language-conditioned policy for several tasks and robot types, served by one replica
(issue 14, deliverable 2): one ``vla_transformer`` learner trains across robot types whose
observation and action sizes differ, each step with the instruction its robot ran; the
weights it publishes serve every type, and one replica answers requests of both types in
one forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import write_deltalake

from agents import registry as robots
from agents.inference import InferenceCore
from agents.outbox import MemoryOutbox
from agents.policies import NoActionDue, RandomPolicy
from agents.remote import RemotePolicy
from agents.worker import Lease, RobotWorker
from learners import _history, policies
from learners.core import JSON, StepBatch
from learners.loop import SHARED, Learner, Steps
from learners.policies import PolicySpec, shared
from learners.replay import NumpyReplayBuffer, ReplayConfig
from pipeline import rewards, tables
from pipeline.fleet import Fleet
from schemas import events as ev
from schemas import transitions
from schemas.events import InferenceRequestV1
from schemas.experiment import ExperimentSpec
from schemas.transitions import TransitionBatch
from tests.unit.test_cotraining import Recorder
from tests.unit.test_fleet import announce, beat, run_tick, submit

SPECS = {"reacher2d": PolicySpec(12, 2, (-1.0,) * 2, (1.0,) * 2),
         "panda": PolicySpec(13, 4, (-1.0,) * 4, (1.0,) * 4)}
TINY: dict[str, JSON] = {"d_model": 32, "layers": 1, "heads": 2, "ff": 64, "chunk": 4,
                         "instruction": "reach the target", "seed": 0}
#: (robot type, instruction) -> the action its demonstrations hold.  "reach the target"
#: is a task of both types (told apart by the observation layout); each type's two tasks
#: see the same observations (told apart only by the instruction).
TASKS = {("reacher2d", "reach the target"): [0.6, -0.6],
         ("reacher2d", "touch the red marker"): [-0.6, 0.6],
         ("panda", "reach the target"): [0.5, 0.5, -0.5, 0.7],
         ("panda", "push the cube to the goal"): [-0.7, 0.2, 0.5, -0.4]}


def experiment(**algorithm: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "name": "vla-multi", "robots": [{"robot_type": "reacher2d"}, {"robot_type": "panda"}],
        "algorithm": {"name": "bc", "batch_size": 32, "warmup_steps": 0, "utd_ratio": 12,
                      "hyperparameters": {"lr": 3e-3}, **algorithm},
        "policy": {"kind": "vla_transformer", "options": TINY, "shared_across_types": True},
        "buffer": {"memory_budget_mb": 4},
    })


def demonstrations(robot_type: str, instruction: str, observations: np.ndarray) -> Steps:
    """One episode of ``robot_type`` doing the task ``instruction`` names."""
    n = len(observations)
    action = np.tile(np.asarray(TASKS[(robot_type, instruction)], np.float32), (n, 1))
    terminated = np.zeros(n, bool)
    terminated[-1] = True
    episode = f"{robot_type}-{instruction}".replace(" ", "-")
    batch = StepBatch(
        robot_id=np.full(n, f"{robot_type}-1"), episode_id=np.full(n, episode),
        step=np.arange(n), observation=observations, action=action,
        reward=np.zeros(n, np.float32), terminated=terminated,
        policy_version=np.zeros(n, np.int64), instruction=np.full(n, instruction))
    return Steps("vla-multi", robot_type, batch, np.full(n, episode),
                 np.arange(n, dtype=np.int64), np.zeros(n, bool))


def request(robot_type: str, instruction: str, observation: np.ndarray, seq: int
            ) -> InferenceRequestV1:
    return InferenceRequestV1(
        site="lab-a", robot_id=f"{robot_type}-1", experiment_id="vla-multi", request_seq=seq,
        step=0, sent_ns=0, instruction=instruction, robot_type=robot_type,
        observation=tuple(float(x) for x in observation),
        action_dim=SPECS[robot_type].action_dim)


def test_one_vla_learnt_across_types_and_tasks_serves_both_types_from_one_replica_batch(
        precomputed_embeddings: None) -> None:
    torch.set_num_threads(1)
    publishers: dict[str, Recorder] = {}

    def publisher_for(stream: str) -> tuple[Recorder, int]:
        return publishers.setdefault(stream, Recorder()), 0

    learner = Learner(experiment(), SPECS.get, publisher_for)
    learner.open_known()
    assert list(learner.types) == [SHARED]
    # Observations padded to the longest + the type's one-hot; the widest action space.
    assert learner.types[SHARED].policy_spec == PolicySpec(13 + 2, 4, (-1.0,) * 4, (1.0,) * 4)
    rng = np.random.default_rng(0)
    observations = {t: rng.uniform(-1, 1, (8, s.observation_dim)).astype(np.float32)
                    for t, s in SPECS.items()}
    for robot_type, instruction in TASKS:
        learner.add(demonstrations(robot_type, instruction, observations[robot_type]), "live")
    while learner.train_round():
        pass
    assert learner.update_step == 12 * 4 * 8
    learner.publish_all()
    assert sorted(publishers) == ["vla-multi.panda", "vla-multi.reacher2d"]

    # The replica: the policy as the widest type's stream carries it.
    snapshot = publishers["vla-multi.panda"].snapshots[-1]
    served = policies.build(snapshot.kind, snapshot.spec, dict(snapshot.options))
    served.load_weights(snapshot.tensors)
    assert isinstance(served, shared.SharedInputPolicy)
    served.to("cpu")  # what `userctl inference` does on its device (cuda on a GPU host)
    passes: list[int] = []
    inner_act_chunk = served.inner.act_chunk  # type: ignore[attr-defined]

    def counted(observation: np.ndarray, instructions: list[str],
                images: dict[str, np.ndarray] | None = None) -> np.ndarray:
        passes.append(len(observation))
        return np.asarray(inner_act_chunk(observation, instructions, images))

    served.inner.act_chunk = counted  # type: ignore[attr-defined]
    core = InferenceCore(lambda: (served, 7), replica="0")
    asks = [(t, ins, observations[t][i]) for i, (t, ins) in
            enumerate(task for task in TASKS for _ in range(2))]
    replies = core.answer([request(t, ins, obs, i) for i, (t, ins, obs) in enumerate(asks)])
    assert passes == [len(asks)]  # both types, all tasks: one forward pass
    assert [r.request_seq for r in replies] == list(range(len(asks)))
    for (robot_type, instruction, _), reply in zip(asks, replies, strict=True):
        actions = np.asarray(reply.actions)
        assert actions.shape == (4, SPECS[robot_type].action_dim)  # the robot's own size
        assert reply.batch_size == len(asks) and reply.policy_version == 7
        np.testing.assert_allclose(actions, np.tile(TASKS[(robot_type, instruction)], (4, 1)),
                                   atol=0.1, err_msg=f"{robot_type}: {instruction}")

    # A robot running it itself builds it from its own type's stream: its own action size.
    own = publishers["vla-multi.reacher2d"].snapshots[-1]
    reacher = policies.build(own.kind, own.spec, dict(own.options))
    reacher.load_weights(own.tensors)
    chunk = reacher.act_chunk(observations["reacher2d"][:1],  # type: ignore[attr-defined]
                              ["touch the red marker"])
    np.testing.assert_allclose(chunk[0], np.tile(TASKS[("reacher2d", "touch the red marker")],
                                                 (4, 1)), atol=0.1)


def test_a_request_the_shared_policy_cannot_read_is_refused_alone(
        precomputed_embeddings: None) -> None:
    options = {**TINY, shared.OPTION: shared.options_for("panda", SPECS, pad_actions=True)}
    served = policies.build("vla_transformer", SPECS["panda"], options)
    core = InferenceCore(lambda: (served, 1))
    ok = request("reacher2d", "", np.zeros(12, np.float32), 0)
    stranger = request("reacher2d", "", np.zeros(12, np.float32), 1).model_copy(
        update={"robot_type": "ur5e", "robot_id": "ur5e-1"})
    too_long = request("reacher2d", "", np.zeros(14, np.float32), 2)
    replies = core.answer([ok, stranger, too_long])
    assert [r.robot_id for r in replies] == ["reacher2d-1"] and core.refused == 2
    assert np.asarray(replies[0].actions).shape == (4, 2)


def test_types_whose_common_action_values_disagree_cannot_share_even_a_padding_kind() -> None:
    planar = PolicySpec(6, 2, (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="same bounds"):
        shared.shared_spec({"panda": SPECS["panda"], "planar": planar}, pad_actions=True)
    padded = shared.pad_actions(np.array([[0.25, -0.5]], np.float32), SPECS["panda"])
    assert padded.tolist() == [[0.25, -0.5, 0.0, 0.0]]  # the middle of the missing ranges


def test_a_robots_instruction_travels_with_its_steps_through_kafka_and_delta_to_the_buffer(
        tmp_path: Path) -> None:
    robot = robots.make_robot("reacher2d", seed=1, validate=False)
    outbox = MemoryOutbox()
    fn = RandomPolicy(robot.spec.action, seed=0)
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=outbox,
                         policy=lambda: (fn, 0), flush_steps=20, flush_s=600.0,
                         instruction="touch the red marker")
    lease = Lease("exp-1", "lease-1")
    for _ in range(45):
        worker.tick(lease, [])
    worker.flush()
    raws = [p for _, p in outbox.sent if isinstance(p, TransitionBatch)]
    assert raws and all(b.event.instruction == "touch the red marker" for b in raws)
    # The Kafka hop: the codec the producer and consumers use.
    wire = [transitions.from_arrow(transitions.to_arrow(b)) for b in raws]
    reward = rewards.lookup("reach_dense@1")
    scored = [rewards.apply(reward, b) for b in wire]
    assert {b.event.instruction for b in scored} == {"touch the red marker"}
    # The Delta hop: the sink's rows, one older row set without the column at all.
    root = tmp_path / "delta"
    path = tables.table_path(root, tables.TRANSITIONS)
    source = tables.Source("transitions", 0, -1)
    old = tables.batch_rows(scored[0], source).drop_columns(["instruction"])
    write_deltalake(str(path), old, partition_by=list(tables.PARTITION_BY))
    write_deltalake(str(path), pa.concat_tables([tables.batch_rows(b, source)
                                                 for b in scored[1:]]),
                    mode="append", schema_mode="merge", partition_by=list(tables.PARTITION_BY))
    history = _history.read(root, experiments=["exp-1"], reward_fn="reach_dense@1",
                            topic="transitions", partitions=[0], sink_name="sink")
    assert history.table is not None
    steps = _history.steps_of_rows("exp-1", "reacher2d", history.table)
    ran = steps.steps.instruction
    assert ran is not None and len(ran) == sum(len(b) for b in scored)
    assert sorted(set(ran.tolist())) == ["", "touch the red marker"]  # "": before recording
    # Raw rows rebuilt into batches (a replay to Kafka, a reward back-fill) keep it.
    raw_rows = pa.concat_tables([tables.batch_rows(b, source) for b in wire])
    assert {b.event.instruction for b in tables.batches_from_rows(raw_rows)} == {
        "touch the red marker"}
    older = raw_rows.drop_columns(["instruction"])
    assert {b.event.instruction for b in tables.batches_from_rows(older)} == {""}
    # The learner's buffer: samples carry each row's instruction.
    buffer = NumpyReplayBuffer(ReplayConfig((12,), (2,), memory_budget_bytes=1 << 20))
    buffer.add(steps.steps)
    batch = buffer.sample(64)
    assert batch.instruction is not None and set(batch.instruction) <= {
        "", "touch the red marker"}
    assert "touch the red marker" in batch.instruction


def test_an_experiments_robot_request_tells_its_robots_their_instruction_with_the_lease(
        ) -> None:
    fleet = Fleet(5.0)
    announce(fleet, "a1", "reacher2d", "lab-a")
    announce(fleet, "b1", "arm7", "lab-b")
    beat(fleet, "a1", 0.0)
    beat(fleet, "b1", 0.0)
    submit(fleet, "exp-1", [{"robot_type": "reacher2d", "instruction": "touch the red marker"},
                            {"robot_type": "arm7"}])
    leases = {e.robot_id: e for e in run_tick(fleet, 0.1) if isinstance(e, ev.LeaseGrantedV1)}
    assert {r: e.instruction for r, e in leases.items()} == {
        "a1": "touch the red marker", "b1": ""}

    # The robot runs, asks and records the lease's instruction; without one, its own.
    robot = robots.make_robot("reacher2d", seed=1, validate=False)
    sent: list[InferenceRequestV1] = []
    for lease, told in ((leases["a1"], "touch the red marker"), (leases["b1"], "reach it")):
        outbox = MemoryOutbox()
        fn = RandomPolicy(robot.spec.action, seed=0)
        worker = RobotWorker(robot, robot_id="a1", site="lab-a", sink=outbox,
                             policy=lambda fn=fn: (fn, 0), flush_steps=10, flush_s=600.0,
                             instruction="reach it")
        remote = RemotePolicy(robot_id="a1", site="lab-a", experiment_id=lambda: "exp-1",
                              send=sent.append, control_hz=robot.spec.control_hz,
                              instruction=lambda w=worker: w.told)  # as the agent wires it
        running = Lease(lease.experiment_id, lease.lease_id, lease.instruction)
        for _ in range(12):
            worker.tick(running, [])
        with pytest.raises(NoActionDue):  # asked; no reply in this test
            remote(np.zeros(robot.spec.observation.shape, np.float32))
        assert sent[-1].instruction == told
        worker.tick(None, [])
        raws = [p for _, p in outbox.sent if isinstance(p, TransitionBatch)]
        assert raws and {b.event.instruction for b in raws} == {told}
