"""Takeovers are data, end to end: a real robot (MuJoCo) driven by a poor policy, the
scripted operator taking over, the worker's batches through the real broker and the Delta
sink into the learner's buffer — executed action, proposal and flag intact — and
HG-DAgger's sampler drawing only the operator's steps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from agents import registry, takeover
from agents.outbox import MemoryOutbox
from agents.policies import RandomPolicy, scripted
from agents.worker import Lease, RobotWorker
from learners import _history
from learners.replay import TakeoverSampler
from pipeline import demos, tables
from pipeline import history as delta_history
from schemas import events as ev
from schemas.transitions import TransitionBatch
from tests.integration.test_step_identity import (  # noqa: F401 - fixtures
    Space,
    assert_buffer_holds_takeovers,
    publishers,
    space,
)
from tests.unit.test_learn_loop import REWARD, Publishers, experiment, make
from topics import catalog


def test_takeover_flags_survive_agent_kafka_delta_and_buffer(
        space: Space, publishers: Publishers) -> None:  # noqa: F811 - the fixtures
    robot = registry.make_robot("reacher2d", seed=11, validate=False)
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0.6, patience=2,
                                         min_steps=5, agree_steps=2)
    policy = RandomPolicy(robot.spec.action, seed=11)
    outbox = MemoryOutbox()
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=outbox,
                         policy=lambda: (policy, 3), flush_steps=25, flush_s=600.0,
                         takeover=operator)
    lease = Lease("exp-1", "lease-1")
    for _ in range(3 * robot.spec.max_episode_steps):
        worker.tick(lease, [])
    worker.tick(None, [])
    raws = [p for _, p in outbox.sent if isinstance(p, TransitionBatch)]
    ended = [p for _, p in outbox.sent if isinstance(p, ev.EpisodeEndedV1)]
    flags = np.concatenate([b.intervention for b in raws])
    assert 0 < flags.sum() < len(flags), "the operator should take over only sometimes"
    assert sum(e.interventions for e in ended) == int(flags.sum())
    assert all(e.takeovers >= 1 for e in ended)

    for raw in raws:
        space.send(raw)
    space.sink()
    rows = space.table(tables.TRANSITIONS_RAW)
    took = np.array(rows.column("intervention").to_pylist(), bool)
    assert int(took.sum()) == int(flags.sum())
    mine = rows.filter(pa.array(took))
    proposals = np.array(mine.column("policy_action").to_pylist(), np.float32)
    executed = np.array(mine.column("action").to_pylist(), np.float32)
    assert (np.abs(proposals - executed).max(axis=1) > 0).all()  # the proposal is kept

    # The audit: intervention rate per robot per policy version, from Delta.
    audit = delta_history.sql(space.root, delta_history.INTERVENTIONS_BY_ROBOT_AND_VERSION,
                              {"experiment": "exp-1", "demo_prefix": demos.DEMO_PREFIX}
                              ).to_pylist()
    assert [(r["robot_id"], r["policy_version"], r["steps"], r["interventions"])
            for r in audit] == [("r1", 3, len(flags), int(flags.sum()))]

    learner = make(experiment(), publishers, known={"reacher2d": robot.spec})
    history = _history.read(space.root, experiments=("exp-1",), reward_fn=REWARD,
                            topic=space.topic(catalog.TRANSITIONS),
                            partitions=[0, 1, 2, 3], sink_name=space.sink_name)
    assert sum(learner.add(s, "history") for s in history.steps()) == len(flags)
    assert_buffer_holds_takeovers(learner, space.sent)
    buffer = learner.types["reacher2d"].online
    batch = TakeoverSampler(buffer, mode="takeovers").sample(512)
    assert batch.intervention is not None and bool(batch.intervention.all())
    operator_actions = {a.tobytes() for a in executed}
    assert {a.numpy().tobytes() for a in batch.action} <= operator_actions
