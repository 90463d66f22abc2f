"""Each robot's instruction travels with its steps (issue 14): two robots of one experiment
told different tasks in words → the worker's batches through the shared broker → the real
Delta sink → the learner's two inputs (the Delta warm start and the live stream) → its
replay buffer, whose samples carry the instruction each row's robot ran — what a
language-conditioned policy is trained with, instead of the experiment's default."""

from __future__ import annotations

import time

from agents import registry
from agents.outbox import MemoryOutbox
from agents.policies import RandomPolicy
from agents.worker import Lease, RobotWorker
from learners import _history, _live
from learners.loop import Steps
from schemas.transitions import TransitionBatch
from tests.integration.test_step_identity import (  # noqa: F401 - fixtures
    Space,
    publishers,
    space,
)
from tests.unit.test_learn_loop import REWARD, Publishers, experiment, make
from topics import catalog

TOLD = {"r1": "reach the target", "r2": "touch the red marker", "r3": ""}  # "": the default
TINY = {"d_model": 32, "layers": 1, "heads": 2, "ff": 64, "chunk": 4,
        "instruction": "reach the target"}


def test_each_robots_instruction_reaches_the_learners_buffer_through_kafka_and_delta(
        space: Space, publishers: Publishers  # noqa: F811
) -> None:
    robot = registry.make_robot("reacher2d", seed=2, validate=False)
    lease = Lease("exp-1", "lease-1")
    for robot_id, instruction in TOLD.items():
        outbox = MemoryOutbox()
        fn = RandomPolicy(robot.spec.action, seed=1)
        worker = RobotWorker(robot, robot_id=robot_id, site="lab-a", sink=outbox,
                             policy=lambda fn=fn: (fn, 0), flush_steps=20, flush_s=600.0,
                             instruction=instruction)
        for _ in range(60):
            worker.tick(lease, [])
        worker.tick(None, [])  # the lease ends: the last batch is flushed
        for _, record in outbox.sent:
            if isinstance(record, TransitionBatch):
                space.send(record)
    space.sink()

    # Delta: every row says what its robot was told.
    rows = space.table("transitions")
    told: dict[str, set[str]] = {}
    for r, i in zip(rows.column("robot_id").to_pylist(),
                    rows.column("instruction").to_pylist(), strict=True):
        told.setdefault(str(r), set()).add(str(i))
    assert told == {r: {i} for r, i in TOLD.items()}

    spec = experiment(algorithm={"name": "bc", "batch_size": 16},
                      policy={"kind": "vla_transformer", "options": TINY})
    known = {"reacher2d": robot.spec}
    # The warm start from Delta …
    history = _history.read(space.root, experiments=("exp-1",), reward_fn=REWARD,
                            topic=space.topic(catalog.TRANSITIONS), partitions=[0, 1, 2, 3],
                            sink_name=space.sink_name)
    warm = make(spec, publishers, known=known)
    assert sum(warm.add(s, "history") for s in history.steps()) == 3 * 60
    # … and the live stream.
    live = make(spec, publishers, known=known)
    reader = _live.LiveSteps(space.kafka, space.topic(catalog.TRANSITIONS),
                             experiments=("exp-1",), reward_fn=REWARD)
    reader.start({})
    taken: list[Steps] = []
    try:
        deadline = time.monotonic() + 60
        while sum(len(s) for s in taken) < 3 * 60:
            assert time.monotonic() < deadline, "the live reader fell short"
            reader.wait(0.2)
            taken += reader.drain(64)
    finally:
        reader.close()
    assert sum(live.add(s, "live") for s in taken) == 3 * 60
    for learner in (warm, live):
        batch = learner.types["reacher2d"].online.sample(256)
        assert batch.instruction is not None
        assert set(batch.instruction) == set(TOLD.values())

