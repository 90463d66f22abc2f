"""Remote inference without Kafka: asynchronous action chunks, late replies, holding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from agents import policies
from agents.inference import InferenceCore
from agents.remote import RemotePolicy
from schemas import events as ev

HZ = 20.0
PERIOD_NS = int(1e9 / HZ)


class ChunkPolicy:
    """A served policy whose action i of a chunk is the observation's first value + i."""

    def __init__(self, chunk: int = 10) -> None:
        self.chunk = chunk

    def act(self, observation: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.asarray(observation)[:, :2]

    def act_chunk(self, observation: np.ndarray, instructions: Sequence[str],
                  images: object = None) -> np.ndarray:
        base = np.asarray(observation, np.float32)[:, :1]
        steps = np.arange(self.chunk, dtype=np.float32)[None, :, None]
        return np.repeat(base[:, None] + steps, 2, axis=2)


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class Link:
    """Requests reach the server after ``latency`` periods; a dead server drops them."""

    def __init__(self, core: InferenceCore, latency: int) -> None:
        self.core, self.latency, self.alive = core, latency, True
        self.in_flight: list[tuple[int, ev.InferenceRequestV1]] = []
        self.period = 0

    def send(self, request: ev.InferenceRequestV1) -> None:
        if self.alive:
            self.in_flight.append((self.period + self.latency, request))

    def due(self) -> list[ev.ActionChunkV1]:
        ready = [r for t, r in self.in_flight if t <= self.period]
        self.in_flight = [(t, r) for t, r in self.in_flight if t > self.period]
        return self.core.answer(ready) if ready and self.alive else []


def robot(link: Link | None, clock: Clock, sent: list[ev.InferenceRequestV1] | None = None,
          retry_s: float = 0.5) -> RemotePolicy:
    def send(request: ev.InferenceRequestV1) -> None:
        if sent is not None:
            sent.append(request)
        if link is not None:
            link.send(request)
    return RemotePolicy(robot_id="r1", site="lab-a", experiment_id=lambda: "e1", send=send,
                        control_hz=HZ, retry_s=retry_s, clock_ns=clock)


def chunk(request: ev.InferenceRequestV1, values: Sequence[float]) -> ev.ActionChunkV1:
    return ev.ActionChunkV1(site="lab-a", robot_id="r1", experiment_id="e1",
                            request_seq=request.request_seq, step=request.step,
                            sent_ns=request.sent_ns, actions=tuple((v, v) for v in values))


def step(remote: RemotePolicy, clock: Clock, obs: float = 0.0) -> np.ndarray | None:
    try:
        return remote(np.array([obs, 0.0], np.float32))
    finally:
        clock.ns += PERIOD_NS


def test_a_late_reply_is_never_executed_and_a_partly_late_one_starts_at_the_due_step() -> None:
    clock, sent = Clock(), []
    remote = robot(None, clock, sent, retry_s=0.4)  # asks again after 8 periods
    for _ in range(12):  # no reply yet: the robot holds every period
        with pytest.raises(policies.NoActionDue):
            step(remote, clock)
    first = sent[0]
    remote.deliver(chunk(first, [99.0] * 10))  # for steps 0..9; it is step 12 now
    with pytest.raises(policies.NoActionDue):
        step(remote, clock)
    assert remote.stats.late_dropped == 1
    latest = sent[-1]  # asked again after 0.4 s without an answer
    assert 8 <= latest.step < 12
    remote.deliver(chunk(latest, [float(i) for i in range(10)]))  # it is step 13 now
    executed = [step(remote, clock) for _ in range(3)]
    skipped = 13 - latest.step  # actions for steps already gone are never executed
    assert [a[0] for a in executed if a is not None] == [float(skipped + k) for k in range(3)]
    assert all(a is None or a[0] != 99.0 for a in executed)


def test_an_older_reply_never_replaces_the_chunk_in_use() -> None:
    clock, sent = Clock(), []
    remote = robot(None, clock, sent, retry_s=0.1)
    for _ in range(3):
        with pytest.raises(policies.NoActionDue):
            step(remote, clock)
    old, new = sent[0], sent[-1]
    remote.deliver(chunk(new, [1.0] * 10))
    remote.deliver(chunk(old, [99.0] * 10))  # arrives after the newer one
    action = step(remote, clock)
    assert action is not None and action[0] == 1.0
    assert remote.stats.stale_dropped == 1


def test_with_a_steady_link_control_never_waits_after_the_first_chunk() -> None:
    clock = Clock()
    link = Link(InferenceCore(lambda: (ChunkPolicy(10), 3)), latency=3)
    remote = robot(link, clock)
    held_after_first = 0
    got_first = False
    for period in range(400):
        link.period = period
        for reply in link.due():
            remote.deliver(reply)
        try:
            step(remote, clock, obs=float(period))
            got_first = True
        except policies.NoActionDue:
            held_after_first += got_first
    assert got_first and held_after_first == 0
    assert remote.stats.late_dropped == 0
    assert remote.lead_periods >= 3  # asks at least a round trip ahead
    assert remote.policy_version == 3


def test_a_dead_server_makes_the_robot_hold_and_it_resumes_when_one_is_back() -> None:
    clock = Clock()
    link = Link(InferenceCore(lambda: (ChunkPolicy(10), 1)), latency=2)
    remote = robot(link, clock, retry_s=0.5)
    acted: list[bool] = []
    for period in range(300):
        link.period = period
        link.alive = not 100 <= period < 200
        for reply in link.due():
            remote.deliver(reply)
        try:
            step(remote, clock)
            acted.append(True)
        except policies.NoActionDue:
            acted.append(False)
    assert all(acted[20:100])          # served
    assert not any(acted[115:200])     # the server is gone: holds (after its last chunk)
    assert all(acted[220:])            # a server is back: asked again, acts again


def test_the_core_answers_a_batch_in_one_pass_and_cuts_actions_to_each_robot() -> None:
    core = InferenceCore(lambda: (ChunkPolicy(4), 7), replica="r0")
    reqs = [ev.InferenceRequestV1(site="lab-a", robot_id=f"r{i}", experiment_id="e1",
                                  request_seq=0, step=5, sent_ns=1, observation=(float(i), 0.0),
                                  action_dim=1 if i else None)
            for i in range(3)]
    replies = core.answer(reqs)
    assert [r.robot_id for r in replies] == ["r0", "r1", "r2"]
    assert all(r.batch_size == 3 and r.policy_version == 7 for r in replies)
    assert replies[0].actions[1] == (1.0, 1.0)
    assert replies[2].actions[3] == (5.0,)


def test_a_worker_holds_the_robot_while_no_action_is_due_and_records_nothing() -> None:
    from agents import registry
    from agents.outbox import MemoryOutbox
    from agents.worker import Lease, RobotWorker

    robot = registry.make_robot("reacher2d", seed=3)
    due = {"now": False}

    def policy(observation: np.ndarray) -> np.ndarray:
        if not due["now"]:
            raise policies.NoActionDue("no reply yet")
        return np.zeros(2, np.float32)

    sink = MemoryOutbox()
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=sink,
                         policy=lambda: (policy, 0), flush_steps=1000, flush_s=1000.0)
    lease = Lease("e1", "l1")
    limit = robot.spec.max_episode_steps
    for _ in range(limit + 5):  # held past the episode's time limit: the episode ends
        worker.tick(lease, [])
    assert worker.held_no_action == limit + 5
    assert worker.steps_total == 0
    ended = [p for _, p in sink.sent if isinstance(p, ev.EpisodeEndedV1)]
    assert [e.reason for e in ended] == [ev.EpisodeEndReason.TIME_LIMIT]
    due["now"] = True
    for _ in range(3):  # actions again: a fresh episode runs
        worker.tick(lease, [])
    assert worker.steps_total == 3


def test_a_chunk_never_crosses_into_the_next_episode(caplog: pytest.LogCaptureFixture) -> None:
    clock, sent = Clock(), []
    remote = robot(None, clock, sent, retry_s=0.5)
    with pytest.raises(policies.NoActionDue):
        step(remote, clock)
    remote.deliver(chunk(sent[-1], [1.0] * 10))
    assert step(remote, clock) is not None
    in_flight = len(sent)
    for _ in range(8):  # runs its chunk and asks for the next one (not answered yet)
        step(remote, clock)
    assert len(sent) > in_flight
    asked_before_reset = sent[-1]

    caplog.clear()
    remote.reset()  # the worker starts a new episode
    with caplog.at_level("WARNING"), pytest.raises(policies.NoActionDue):
        step(remote, clock)  # no chunk for the new state yet: waits, asks at once
    fresh = sent[-1]
    assert fresh.request_seq > asked_before_reset.request_seq
    remote.deliver(chunk(asked_before_reset, [7.0] * 10))  # planned for the old episode
    with caplog.at_level("WARNING"), pytest.raises(policies.NoActionDue):
        step(remote, clock)
    assert remote.stats.stale_dropped == 1
    assert "holds" not in caplog.text  # one round trip at an episode start is no news
    remote.deliver(chunk(fresh, [2.0] * 10))
    action = step(remote, clock)
    assert action is not None and action[0] == 2.0


def test_the_worker_resets_a_stateful_policy_at_each_episode_start() -> None:
    from agents import registry
    from agents.outbox import MemoryOutbox
    from agents.worker import Lease, RobotWorker

    class Counting:
        resets = 0

        def __call__(self, observation: np.ndarray) -> np.ndarray:
            return np.zeros(2, np.float32)

        def reset(self) -> None:
            self.resets += 1

    robot, policy = registry.make_robot("reacher2d", seed=3), Counting()
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (policy, 0), flush_steps=1000, flush_s=1000.0)
    for _ in range(2 * robot.spec.max_episode_steps + 1):  # two episodes and a step
        worker.tick(Lease("e1", "l1"), [])
    assert policy.resets == 3
