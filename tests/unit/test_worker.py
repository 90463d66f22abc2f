"""A robot worker runs episodes under a lease and obeys commands (no Kafka, real MuJoCo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents import registry
from agents.outbox import MemoryOutbox
from agents.policies import RandomPolicy
from agents.sim.arm import MujocoArm
from agents.spool import Spool, SpooledRecord
from agents.worker import Lease, RobotWorker
from schemas import events as ev
from schemas import transitions
from schemas.transitions import TransitionBatch
from topics import catalog, serde

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


# -- step identity (issue 10, failing input 1: the agent side) -----------------------------


def identities(*workers: RobotWorker) -> list[tuple[str, str, int]]:
    return [(b.robot_id, b.event.incarnation, int(s))
            for w in workers for b in sent(w, TransitionBatch) for s in b.seq]


class SteppableClock:
    """A wall clock an NTP correction can step back: 50 ms per reading."""

    def __init__(self) -> None:
        self.now_ns = 1_800_000_000_000_000_000

    def __call__(self) -> int:
        self.now_ns += 50_000_000
        return self.now_ns


def test_a_clock_stepped_back_600_s_between_episodes_leaves_every_step_its_identity() -> None:
    robot = registry.make_robot("reacher2d", seed=3)
    policy = RandomPolicy(robot.spec.action, seed=3)
    clock = SteppableClock()
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (policy, 0), flush_steps=16, flush_s=60.0,
                         wall_ns=clock)
    assert robot.spec.max_episode_steps == 50
    for _ in range(50):  # episode 1
        worker.tick(LEASE, [])
    clock.now_ns -= 600 * 10**9  # NTP steps the clock back
    for _ in range(50):  # episode 2
        worker.tick(LEASE, [])
    batches = sent(worker, TransitionBatch)
    observed = np.concatenate([b.observed_ns for b in batches])
    assert len(observed) == 100
    assert observed[50:].max() < observed[:50].min()  # the clock did go back
    ids = identities(worker)
    assert len(set(ids)) == 100
    assert [seq for _, _, seq in ids] == list(range(100))
    assert {inc for _, inc, _ in ids} == {worker.incarnation}
    assert [e.steps for e in sent(worker, ev.EpisodeEndedV1)] == [50, 50]


def test_two_workers_claiming_r2_record_distinct_incarnations_never_merged() -> None:
    def claimant(seed: int) -> RobotWorker:
        robot = registry.make_robot("reacher2d", seed=seed)
        policy = RandomPolicy(robot.spec.action, seed=seed)
        # the same wall clock for both: their timestamps collide step for step
        return RobotWorker(robot, robot_id="r2", site="lab-a", sink=MemoryOutbox(),
                           policy=lambda: (policy, 0), flush_steps=10, flush_s=60.0,
                           wall_ns=lambda: 1_800_000_000_000_000_000)

    a, b = claimant(1), claimant(2)
    for _ in range(2):  # interleaved episodes of 25 steps
        for worker in (a, b):
            for _ in range(25):
                worker.tick(LEASE, [])
    for worker in (a, b):
        worker.close()
    assert a.incarnation != b.incarnation
    ids = identities(a, b)
    assert len(ids) == 100 and len(set(ids)) == 100
    assert {inc for _, inc, _ in identities(a)} == {a.incarnation}
    assert {inc for _, inc, _ in identities(b)} == {b.incarnation}


def test_each_lease_taken_mints_a_new_incarnation_counted_from_zero(
    worker: RobotWorker,
) -> None:
    for _ in range(5):
        worker.tick(LEASE, [])
    first = worker.incarnation
    worker.tick(None, [])
    for _ in range(3):
        worker.tick(Lease("exp-2", "lease-2"), [])
    worker.flush()
    assert worker.incarnation != first
    by_incarnation: dict[str, list[int]] = {}
    for _, inc, seq in identities(worker):
        by_incarnation.setdefault(inc, []).append(seq)
    assert by_incarnation == {first: [0, 1, 2, 3, 4], worker.incarnation: [0, 1, 2]}


def test_a_spooled_batch_keeps_its_identity_when_sent_again(tmp_path: Path) -> None:
    robot = registry.make_robot("reacher2d", seed=3)
    policy = RandomPolicy(robot.spec.action, seed=3)
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (policy, 0), flush_steps=8, flush_s=60.0)
    for _ in range(8):
        worker.tick(LEASE, [])
    [batch] = sent(worker, TransitionBatch)
    record = serde.encode(catalog.TRANSITIONS_RAW, batch)
    spool = Spool(tmp_path / "spool")
    spool.append(SpooledRecord(record.topic, record.key, record.value, tuple(record.headers),
                               record.partition))
    spool.close()
    again = Spool(tmp_path / "spool")  # the agent restarted: a new incarnation is minted…
    [resent] = again.peek(1)
    decoded = serde.decode(catalog.TRANSITIONS_RAW, resent.value, resent.headers)
    assert isinstance(decoded, TransitionBatch)
    # …but what was spooled keeps the identity it was recorded with.
    assert decoded.event.incarnation == batch.event.incarnation
    np.testing.assert_array_equal(decoded.seq, np.arange(8))


# -- takeovers and episode ends --------------------------------------------------------------


def test_a_takeover_records_the_executed_action_and_keeps_the_policy_proposal() -> None:
    robot = registry.make_robot("reacher2d", seed=3)
    proposal = np.array([0.25, -0.25], np.float32)
    human = np.array([-0.5, 0.5], np.float32)
    calls = iter(range(100))

    def takeover(observation: np.ndarray, proposed: np.ndarray) -> np.ndarray | None:
        np.testing.assert_array_equal(proposed, proposal)
        return human if next(calls) % 2 else None

    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (lambda obs: proposal, 0), flush_steps=6,
                         flush_s=60.0, takeover=takeover)
    for _ in range(6):
        worker.tick(LEASE, [])
    [batch] = sent(worker, TransitionBatch)
    back = serde.decode(catalog.TRANSITIONS_RAW, *_wire(batch))
    assert isinstance(back, TransitionBatch)
    for b in (batch, back):
        assert b.intervention.tolist() == [False, True] * 3
        np.testing.assert_array_equal(b.action[b.intervention], np.tile(human, (3, 1)))
        np.testing.assert_array_equal(b.action[~b.intervention], np.tile(proposal, (3, 1)))
        np.testing.assert_array_equal(b.policy_action[b.intervention],
                                      np.tile(proposal, (3, 1)))


def test_without_a_takeover_device_no_step_is_an_intervention(worker: RobotWorker) -> None:
    for _ in range(20):
        worker.tick(LEASE, [])
    worker.flush()
    assert not any(b.intervention.any() for b in sent(worker, TransitionBatch))


def test_the_last_step_of_each_episode_says_why_it_ended(worker: RobotWorker) -> None:
    n = worker.robot.spec.max_episode_steps
    for _ in range(n + 4):
        worker.tick(LEASE, [])
    worker.tick(LEASE, [Cmd.STOP])
    rows = [(bool(t), str(r)) for b in sent(worker, TransitionBatch)
            for t, r in zip(b.truncated, b.end_reason, strict=True)]
    assert len(rows) == n + 4
    assert [i for i, (_, r) in enumerate(rows) if r] == [n - 1, n + 3]
    assert rows[n - 1] == (True, "time_limit") and rows[n + 3] == (True, "stopped")


def test_an_unstable_simulator_ends_the_episode_truncated_with_sim_unstable(
    worker: RobotWorker,
) -> None:
    for _ in range(5):
        worker.tick(LEASE, [])
    arm = worker.robot.inner
    assert isinstance(arm, MujocoArm)
    arm.model.actuator_gainprm[:, 0] *= 1e12  # forced unstable: qacc blows up
    arm.model.actuator_biasprm[:, 1] *= 1e12
    worker.tick(LEASE, [])
    [ended] = sent(worker, ev.EpisodeEndedV1)
    assert ended.reason is ev.EpisodeEndReason.SIM_UNSTABLE and ended.steps == 6
    assert "qacc" in ended.detail and "unstable" in ended.detail
    [batch] = sent(worker, TransitionBatch)
    assert batch.truncated.tolist() == [False] * 5 + [True]
    assert batch.end_reason.tolist() == [""] * 5 + ["sim_unstable"]
    transitions.check_content(batch)  # the last valid state, no NaN: consumers accept it
    serde.decode(catalog.TRANSITIONS_RAW, *_wire(batch))
    # the next tick starts a new episode from a reset, not a continuation
    worker.tick(LEASE, [])
    [_, started] = sent(worker, ev.EpisodeStartedV1)
    assert started.episode_id != ended.episode_id


def _wire(batch: TransitionBatch) -> tuple[bytes, list[tuple[str, bytes]]]:
    record = serde.encode(catalog.TRANSITIONS_RAW, batch)
    return record.value, record.headers


def test_staggered_robots_flush_in_different_periods_even_after_episodes_end_together() -> None:
    """Issue 17: robots of one agent start together and their time-limited episodes end in
    the same period; with a stagger their age flushes (the Arrow encode + spool write of
    a batch) still fall in different periods, and no row waits longer than flush_s."""
    now = [0.0]
    period, flush_s, k = 0.0625, 0.5, 4  # exact in binary: slots fall on whole periods
    workers = []
    for i in range(k):
        robot = registry.make_robot("reacher2d", seed=i)
        policy = RandomPolicy(robot.spec.action, seed=i)
        workers.append(RobotWorker(
            robot, robot_id=f"r{i}", site="lab-a", sink=MemoryOutbox(),
            policy=lambda p=policy: (p, 0), flush_steps=1000, flush_s=flush_s,
            flush_stagger_s=flush_s * i / k, clock=lambda: now[0]))
    n = workers[0].robot.spec.max_episode_steps
    flushed_in: list[set[int]] = [set() for _ in workers]
    waits: list[float] = []
    for tick in range(3 * n):  # three episodes, ending together
        for i, w in enumerate(workers):
            before = len(sent(w, TransitionBatch))
            started = w._rows.started if len(w._rows) else now[0]
            w.tick(LEASE, [])
            if len(sent(w, TransitionBatch)) > before:
                flushed_in[i].add(tick)
                waits.append(now[0] - started)
        now[0] += period
    ends = {e * n - 1 for e in range(1, 4)}  # the periods episodes ended in flush all
    own = [ticks - ends for ticks in flushed_in]
    for i in range(k):
        for j in range(i + 1, k):
            assert not own[i] & own[j], (i, j, sorted(own[i] & own[j])[:5])
    assert max(waits) <= flush_s + 1e-9
    # Every step was sent, in order, none twice.
    for w in workers:
        w.flush()
        assert [s for _, s in steps_of(w)] == [t % n for t in range(3 * n)]
