"""A robot worker runs episodes under a lease and obeys commands (no Kafka, real MuJoCo)."""

from __future__ import annotations

import numpy as np
import pytest

from agents import registry
from agents.outbox import MemoryOutbox
from agents.policies import RandomPolicy
from agents.worker import Lease, RobotWorker
from schemas import events as ev
from schemas.transitions import TransitionBatch

LEASE = Lease("exp-1", "lease-1")
Cmd = ev.CommandKind


@pytest.fixture
def worker() -> RobotWorker:
    robot = registry.make_robot("reacher2d", seed=3)
    policy = RandomPolicy(robot.spec.action, seed=3)
    return RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                       policy=lambda: (policy, 7), flush_steps=16, flush_s=60.0)


def sent(worker: RobotWorker, kind: type) -> list:  # type: ignore[type-arg]
    assert isinstance(worker.sink, MemoryOutbox)
    return [p for _, p in worker.sink.sent if isinstance(p, kind)]


def steps_of(worker: RobotWorker) -> list[tuple[str, int]]:
    return [(str(e), int(s)) for b in sent(worker, TransitionBatch)
            for e, s in zip(b.episode_id, b.step, strict=True)]


def test_without_a_lease_the_robot_is_not_driven(worker: RobotWorker) -> None:
    for _ in range(10):
        worker.tick(None, [])
    assert worker.state is ev.RobotState.IDLE and worker.steps_total == 0
    assert worker.sink.sent == []  # type: ignore[attr-defined]


def test_episodes_are_recorded_whole_in_order_and_stamped(worker: RobotWorker) -> None:
    n = worker.robot.spec.max_episode_steps
    for _ in range(2 * n + 5):
        worker.tick(LEASE, [])
    worker.tick(None, [])  # lease released: the third episode is cut off and flushed
    ended = sent(worker, ev.EpisodeEndedV1)
    assert [e.steps for e in ended] == [n, n, 5]
    assert [e.reason for e in ended] == [ev.EpisodeEndReason.TIME_LIMIT] * 2 + [
        ev.EpisodeEndReason.STOPPED]
    steps = steps_of(worker)
    by_episode: dict[str, list[int]] = {}
    for episode, step in steps:
        by_episode.setdefault(episode, []).append(step)
    assert [by_episode[e.episode_id] for e in ended] == [
        list(range(e.steps)) for e in ended]
    batches = sent(worker, TransitionBatch)
    assert all((b.policy_version == 7).all() for b in batches)
    assert all(b.event.experiment_id == "exp-1" for b in batches)
    # every episode's last step carries its final observation
    assert sum(int(b.truncated.sum()) for b in batches) == 3
    assert sum(len(b.final_observation) for b in batches) == 3


def test_info_is_the_state_after_the_action(worker: RobotWorker) -> None:
    worker.tick(LEASE, [])
    worker.flush()
    [batch] = sent(worker, TransitionBatch)
    # the observation ends with goal - ee; info's ee_pos is where the action led
    ee_before = batch.observation[0][6:9]
    assert not np.allclose(batch.info["ee_pos"][0], ee_before)


def test_estop_holds_the_robot_before_anything_else_until_resumed(
    worker: RobotWorker,
) -> None:
    for _ in range(5):
        worker.tick(LEASE, [])
    worker.tick(LEASE, [Cmd.RESUME, Cmd.ESTOP])  # an e-stop voids what came before it
    assert worker.state is ev.RobotState.ESTOPPED
    assert sent(worker, ev.EpisodeEndedV1)[-1].reason is ev.EpisodeEndReason.ESTOPPED
    before = worker.steps_total
    for _ in range(5):
        worker.tick(LEASE, [])
    assert worker.steps_total == before
    worker.tick(LEASE, [Cmd.RESUME])
    assert worker.state is ev.RobotState.RUNNING
    assert worker.steps_total == before + 1


def test_pause_keeps_the_episode_open_and_records_nothing(worker: RobotWorker) -> None:
    for _ in range(3):
        worker.tick(LEASE, [])
    worker.tick(LEASE, [Cmd.PAUSE])
    for _ in range(4):
        worker.tick(LEASE, [])
    assert worker.steps_total == 3 and not sent(worker, ev.EpisodeEndedV1)
    worker.tick(LEASE, [Cmd.RESUME])
    worker.flush()
    assert [s for _, s in steps_of(worker)] == [0, 1, 2, 3]


def test_stop_ends_the_episode_and_waits_for_resume(worker: RobotWorker) -> None:
    worker.tick(LEASE, [])
    worker.tick(LEASE, [Cmd.STOP])
    assert worker.state is ev.RobotState.STOPPED
    assert sent(worker, ev.EpisodeEndedV1)[-1].reason is ev.EpisodeEndReason.STOPPED
    worker.tick(LEASE, [])
    assert worker.steps_total == 1
