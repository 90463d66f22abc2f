"""Takeover devices override the policy and hand back; the worker records every step's
executed action, the proposal and the flag, and counts takeovers per episode (real MuJoCo,
a real pseudo-terminal, real evdev events)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from agents import registry, takeover
from agents.outbox import MemoryOutbox
from agents.policies import scripted
from agents.worker import Lease, RobotWorker
from schemas import events as ev
from schemas.experiment import TakeoverSpec
from schemas.transitions import TransitionBatch

LEASE = Lease("exp-1", "lease-1")


def _expert_then_wrong(expert, wrong_from: int, wrong_to: int):  # type: ignore[no-untyped-def]
    """The expert's own action, except on steps [wrong_from, wrong_to) of an episode."""
    counter = {"t": 0}

    def policy(observation: np.ndarray) -> np.ndarray:
        t = counter["t"]
        counter["t"] += 1
        action = np.asarray(expert(observation), np.float32)
        return -action if wrong_from <= t < wrong_to else action

    return policy


def test_the_action_rule_takes_over_when_the_policy_strays_and_hands_back() -> None:
    robot = registry.make_robot("panda", task="push", seed=5, validate=False)
    expert = scripted(robot)
    operator = takeover.make(TakeoverSpec(kind="scripted", threshold=0.5, patience=2,
                                          min_steps=5, agree_steps=3, rule="action"),
                             action_size=4, expert=expert)
    assert isinstance(operator, takeover.ScriptedOperator)
    policy = _expert_then_wrong(scripted(robot), 10, 40)
    worker = RobotWorker(robot, robot_id="p1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (policy, 3), flush_steps=1000, flush_s=600.0,
                         takeover=operator)
    for _ in range(60):
        worker.tick(LEASE, [])
    worker.tick(None, [])
    [batch] = [p for _, p in worker.sink.sent if isinstance(p, TransitionBatch)]  # type: ignore[attr-defined]
    flags = batch.intervention
    # Strays from step 10; after 2 steps of patience the operator has control.
    assert not flags[:11].any() and flags[11:40].all()
    # Back on track at step 40: agreement for 3 steps, then the policy drives again.
    assert flags[40:42].all() and not flags[43:].any()
    took = flags.astype(bool)
    # The executed action is the expert's; the proposal is kept where it was overridden
    # (the opposite while the policy strayed, the same once it agrees again).
    np.testing.assert_allclose(batch.policy_action[11:40], -batch.action[11:40], atol=1e-6)
    np.testing.assert_allclose(batch.policy_action[40:42], batch.action[40:42], atol=1e-6)
    assert not batch.policy_action[~took].any()
    [ended] = [p for _, p in worker.sink.sent if isinstance(p, ev.EpisodeEndedV1)]  # type: ignore[attr-defined]
    assert ended.takeovers == 1 and ended.interventions == int(flags.sum())


def _drive(robot, policy, operator, seed: int,  # type: ignore[no-untyped-def]
           task: str = "push"):
    """One episode (the module docstring's loop): did it succeed, which steps were taken
    over."""
    from agents.sim import tasks

    rule = tasks.get(task)
    step = robot.reset(seed=seed)
    if operator is not None:
        operator.reset()
    success, flags = False, []
    while not step.done:
        proposal = np.asarray(policy(step.observation), np.float32)
        human = None if operator is None else operator(step.observation, proposal)
        flags.append(human is not None)
        step = robot.step(proposal if human is None else human)
        success = success or rule.success(step.info)
    return success, np.array(flags)


def _slower(expert, speed: float):  # type: ignore[no-untyped-def]
    """The expert's way at ``speed`` times its pace."""

    def policy(observation: np.ndarray) -> np.ndarray:
        action = np.array(expert(observation), np.float32)
        action[:3] *= speed
        return action

    return policy


@pytest.mark.parametrize("task", ["push", "pick_place"])
def test_the_progress_rule_leaves_alone_a_policy_that_gets_there_its_own_way(task: str
                                                                           ) -> None:
    # A policy at 60 % of the expert's pace still gets the cube home: a person watching
    # lets it, the action rule (a gated expert) takes it over all the same.
    robot = registry.make_robot("panda", task=task, seed=0, validate=False)
    expert = scripted(robot)
    by_action = takeover.ScriptedOperator(expert, threshold=0.5, patience=3, rule="action")
    watching = takeover.make(TakeoverSpec(kind="scripted", patience=3), action_size=4,
                             expert=expert)
    assert isinstance(watching, takeover.ScriptedOperator) and watching.rule == "progress"
    slower = _slower(expert, 0.6)
    for seed in (11, 12, 13):
        assert _drive(robot, slower, None, seed, task)[0]  # it succeeds on its own
        success, flags = _drive(robot, slower, watching, seed, task)
        assert success and not flags.any()
        success, flags = _drive(robot, expert, watching, seed, task)  # the expert itself
        assert success and not flags.any()
        assert _drive(robot, slower, by_action, seed, task)[1].any()
    assert watching.takeovers == 0


@pytest.mark.parametrize("task", ["push", "pick_place"])
@pytest.mark.parametrize("failing", ["frozen", "backwards"])
def test_the_progress_rule_takes_over_a_failing_policy_and_the_episode_succeeds(
        failing: str, task: str) -> None:
    # A policy that never gets there alone (stalls, or makes the task worse) must be
    # taken over and helped home: an operator that never intervenes fails this test.
    robot = registry.make_robot("panda", task=task, seed=0, validate=False)
    expert = scripted(robot)
    frozen = lambda obs: np.zeros(4, np.float32)  # noqa: E731
    backwards = _expert_then_wrong(expert, 5, 1000)
    policy = frozen if failing == "frozen" else backwards
    assert not _drive(robot, policy, None, 21, task)[0]
    operator = takeover.ScriptedOperator(expert, patience=3, rule="progress")
    policy = frozen if failing == "frozen" else _expert_then_wrong(expert, 5, 1000)
    success, flags = _drive(robot, policy, operator, 21, task)
    assert success and operator.takeovers >= 1
    first = int(np.argmax(flags))
    if failing == "frozen":  # it waits out the stall, then drives
        assert first == operator.stall_steps and "no progress" in operator.reason
    else:  # it sees the task getting worse within a few steps of the policy turning
        assert 5 < first < 5 + 15 and "worse" in operator.reason


def test_the_progress_rule_needs_an_expert_that_measures_progress() -> None:
    def no_measure(obs: np.ndarray) -> np.ndarray:
        return np.zeros(4, np.float32)

    with pytest.raises(RuntimeError, match="progress"):
        takeover.ScriptedOperator(no_measure, rule="progress")
    assert takeover.ScriptedOperator(no_measure, rule="auto").rule == "action"


def test_a_policy_that_acts_like_the_expert_is_never_overridden() -> None:
    robot = registry.make_robot("panda", task="reach", seed=1, validate=False)
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0.3)
    worker = RobotWorker(robot, robot_id="p1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (scripted(robot), 0), flush_steps=1000,
                         flush_s=600.0, takeover=operator)
    for _ in range(30):
        worker.tick(LEASE, [])
    worker.flush()
    [batch] = [p for _, p in worker.sink.sent if isinstance(p, TransitionBatch)]  # type: ignore[attr-defined]
    assert not batch.intervention.any() and operator.takeovers == 0


def test_with_threshold_zero_the_operator_drives_every_step_as_one_takeover() -> None:
    robot = registry.make_robot("panda", task="reach", seed=2, validate=False)
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0)
    worker = RobotWorker(robot, robot_id="p1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: (lambda obs: np.zeros(4, np.float32), 0),
                         flush_steps=1000, flush_s=600.0, takeover=operator)
    for _ in range(12):
        worker.tick(LEASE, [])
    worker.tick(None, [])
    [batch] = [p for _, p in worker.sink.sent if isinstance(p, TransitionBatch)]  # type: ignore[attr-defined]
    assert batch.intervention.all()
    [ended] = [p for _, p in worker.sink.sent if isinstance(p, ev.EpisodeEndedV1)]  # type: ignore[attr-defined]
    assert (ended.takeovers, ended.interventions) == (1, 12)


def test_the_keyboard_toggles_a_takeover_and_moves_the_end_effector() -> None:
    master, slave = os.openpty()
    device = takeover.KeyboardTeleop(4, speed=0.5, stream=slave)
    try:
        obs, proposal = np.zeros(10, np.float32), np.ones(4, np.float32)
        assert device(obs, proposal) is None
        os.write(master, b"tw")
        np.testing.assert_allclose(device(obs, proposal), [0.5, 0, 0, -1])  # type: ignore[arg-type]
        os.write(master, b"dr ")
        np.testing.assert_allclose(device(obs, proposal), [0, -0.5, 0.5, 1])  # type: ignore[arg-type]
        np.testing.assert_allclose(device(obs, proposal), [0, 0, 0, 1])  # type: ignore[arg-type]
        os.write(master, b"t")
        assert device(obs, proposal) is None
        os.write(master, b"t")
        device.reset()  # a new episode hands control back
        assert device(obs, proposal) is None
    finally:
        device.close()
        os.close(master)
        os.close(slave)


class _Pad:
    """An evdev device stand-in: real evdev events and capabilities, queued by the test
    (no /dev/input on this machine)."""

    def __init__(self) -> None:
        from evdev import AbsInfo, ecodes

        info = AbsInfo(value=0, min=-32768, max=32767, fuzz=0, flat=0, resolution=0)
        self.caps = {ecodes.EV_ABS: [(ecodes.ABS_X, info), (ecodes.ABS_Y, info),
                                     (ecodes.ABS_RY, info)],
                     ecodes.EV_KEY: [ecodes.BTN_SOUTH, ecodes.BTN_EAST]}
        self.queue: list[object] = []

    def capabilities(self, absinfo: bool = True) -> dict[int, list[object]]:
        return self.caps

    def read(self) -> list[object]:
        if not self.queue:
            raise BlockingIOError
        got, self.queue = self.queue, []
        return got


def test_a_gamepad_button_takes_over_and_its_sticks_move_the_end_effector() -> None:
    from evdev import InputEvent, ecodes

    pad = _Pad()
    device = takeover.EvdevTeleop(pad, 4)
    obs, proposal = np.zeros(10, np.float32), np.zeros(4, np.float32)

    def event(kind: int, code: int, value: int) -> object:
        return InputEvent(0, 0, kind, code, value)

    assert device(obs, proposal) is None
    pad.queue = [event(ecodes.EV_KEY, ecodes.BTN_SOUTH, 1),
                 event(ecodes.EV_ABS, ecodes.ABS_X, 32767),
                 event(ecodes.EV_ABS, ecodes.ABS_Y, 1000)]  # inside the dead zone
    action = device(obs, proposal)
    assert action is not None
    np.testing.assert_allclose(action, [1, 0, 0, -1], atol=1e-4)
    pad.queue = [event(ecodes.EV_KEY, ecodes.BTN_EAST, 1)]
    np.testing.assert_allclose(device(obs, proposal), [1, 0, 0, 1], atol=1e-4)  # type: ignore[arg-type]
    pad.queue = [event(ecodes.EV_KEY, ecodes.BTN_SOUTH, 1)]
    assert device(obs, proposal) is None


def test_a_scripted_takeover_needs_a_robot_with_an_expert() -> None:
    with pytest.raises(RuntimeError, match="scripted expert"):
        takeover.make(TakeoverSpec(kind="scripted"), action_size=2, expert=None)
    assert takeover.make(TakeoverSpec(), action_size=2) is None


def test_an_agent_takes_its_takeover_device_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.agent import AgentSettings

    monkeypatch.setenv("USER_AGENT_TAKEOVER", '{"kind": "scripted", "threshold": 0.3}')
    settings = AgentSettings(robot_type="panda", site="lab-a")
    assert settings.takeover == TakeoverSpec(kind="scripted", threshold=0.3)
