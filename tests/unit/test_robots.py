"""The robot layer: registry, start-up probe, simulated arms, safety, pacing, hosting."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import numpy.typing as npt
import pytest

from agents import host, pacing, policies, registry, safety, validation
from agents import robot as robot_mod
from agents.sim import arm, reacher2d
from schemas import spaces
from schemas import tasks as task_rules

#: Every registered type is held to the same contract.
ROBOT_TYPES = registry.robot_types()
#: …set up for every task it can do.
ROBOT_TASKS = [(name, task) for name in ROBOT_TYPES for task in registry.robot_tasks(name)]
#: …and the types that can reach (the third-party suites included: `make suites`).
REACHERS = [name for name in ROBOT_TYPES if "reach" in registry.robot_tasks(name)]


def _distance(step: robot_mod.Step) -> float:
    return float(np.linalg.norm(step.info["goal_pos"] - step.info["ee_pos"]))


def _reach_radius(robot: robot_mod.Robot) -> float:
    inner = robot.inner if isinstance(robot, safety.Guarded) else robot
    if isinstance(inner, arm.MujocoArm):
        return inner.config.success_radius
    return task_rules.REACH_RADIUS


class _Lying(robot_mod.Robot):
    """Delegates to a real robot but announces a different spec."""

    def __init__(self, robot: robot_mod.Robot, spec: spaces.RobotSpec) -> None:
        self._robot, self._spec = robot, spec

    @property
    def spec(self) -> spaces.RobotSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        return self._robot.reset(seed)

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        return self._robot.step(action)

    def hold(self) -> robot_mod.Step:
        return self._robot.hold()


# -- registry and start-up probe ---------------------------------------------------------


def test_the_planar_and_the_real_model_arm_types_are_registered() -> None:
    assert {"reacher2d", "arm7", "panda", "ur5e"} <= set(ROBOT_TYPES)
    assert set(registry.robot_tasks("panda")) >= {"reach", "push", "pick_place"}
    assert registry.robot_tasks("arm7") == ("reach",)


@pytest.mark.parametrize(("name", "task"), ROBOT_TASKS)
def test_each_type_builds_passes_its_probe_and_fits_20_hz(name: str, task: str) -> None:
    robot = registry.make_robot(name, task=task, seed=0)
    report = validation.validate(robot)
    assert robot.spec.robot_type == name
    assert robot.spec.control_hz == 20.0
    assert report.max_hz > 20.0


@pytest.mark.parametrize(("name", "task"), ROBOT_TASKS)
def test_each_task_sends_the_info_its_reward_jobs_read(name: str, task: str) -> None:
    robot = registry.make_robot(name, task=task, seed=0)
    policy = policies.RandomPolicy(robot.spec.action, seed=0)
    step = robot.reset(seed=1)
    for _ in range(3):
        assert step.observation.shape == robot.spec.observation.shape
        assert set(step.info) == set(task_rules.INFO_KEYS[task])
        assert all(v.shape == (3,) and v.dtype == np.float32 for v in step.info.values())
        step = robot.step(policy(step.observation))


def test_a_task_the_type_cannot_do_fails_with_one_line() -> None:
    with pytest.raises(robot_mod.RobotError,
                       match="robot type 'arm7' cannot do task 'push'; it can do: reach"):
        registry.make_robot("arm7", task="push")
    with pytest.raises(robot_mod.RobotError, match="cannot do task 'stack'; it can do: "):
        registry.make_robot("panda", task="stack")


@pytest.mark.parametrize("name", ROBOT_TYPES)
def test_spec_matches_the_shapes_the_robot_produces(name: str) -> None:
    robot = registry.make_robot(name, seed=0)
    spec = robot.spec
    policy = policies.RandomPolicy(spec.action, seed=0)
    step = robot.reset(seed=1)
    for _ in range(3):
        assert step.observation.shape == spec.observation.shape
        assert step.observation.dtype == np.dtype(spec.observation.dtype)
        assert set(step.info) == set(spec.info) == set(task_rules.INFO_KEYS[spec.task])
        for key, aspec in spec.info.items():
            assert step.info[key].shape == aspec.shape == (3,)
            assert step.info[key].dtype == np.float32
        assert step.images == {}
        action = policy(step.observation)
        assert action.shape == spec.action.shape
        assert np.all(np.abs(action) <= 1.0)
        step = robot.step(action)


def test_probe_rejects_a_spec_that_announces_the_wrong_observation_size() -> None:
    real = registry.make_robot("reacher2d", validate=False)
    wrong_obs = spaces.ArraySpec(shape=(13,), dtype="float32")
    liar = _Lying(real, real.spec.model_copy(update={"observation": wrong_obs}))
    with pytest.raises(robot_mod.RobotError) as err:
        validation.validate(liar)
    message = str(err.value)
    assert "\n" not in message
    assert "'reacher2d'" in message
    assert "observation has shape (12,) but the spec announces (13,)" in message


def test_probe_rejects_a_spec_that_announces_a_camera_the_robot_lacks() -> None:
    real = registry.make_robot("reacher2d", validate=False)
    cams = (spaces.CameraSpec(name="wrist", height=32, width=32),)
    liar = _Lying(real, real.spec.model_copy(update={"cameras": cams}))
    with pytest.raises(robot_mod.RobotError, match=r"images has keys \[\] but the spec"):
        validation.validate(liar)


def test_probe_rejects_a_robot_whose_spec_differs_from_the_announced_one() -> None:
    robot = registry.make_robot("reacher2d", validate=False)
    announced = robot.spec.model_copy(update={"max_episode_steps": 80})
    with pytest.raises(robot_mod.RobotError, match="max_episode_steps: announced 80"):
        validation.validate(robot, expected=announced)


def test_probe_rejects_a_control_rate_the_robot_cannot_keep() -> None:
    with pytest.raises(robot_mod.RobotError, match=r"a step takes .* but 100000 Hz allows"):
        registry.make_robot("arm7", control_hz=100_000.0)


def test_a_model_without_the_configured_joint_fails_with_one_line() -> None:
    bad = dataclasses.replace(reacher2d.CONFIG, joints=("shoulder", "wrist"))
    with pytest.raises(robot_mod.RobotError) as err:
        arm.MujocoArm(bad)
    assert str(err.value) == "reacher2d: the model has no joint named 'wrist'"


def test_an_unknown_type_names_the_registered_ones() -> None:
    with pytest.raises(robot_mod.RobotError, match="unknown robot type 'hexapod'.*reacher2d"):
        registry.make_robot("hexapod")


def test_unknown_options_fail_with_one_line() -> None:
    with pytest.raises(robot_mod.RobotError, match="'reacher2d' rejects its options"):
        registry.make_robot("reacher2d", gripper=True)


def test_a_new_type_is_one_factory_and_one_registration() -> None:
    slow = dataclasses.replace(reacher2d.CONFIG, robot_type="reacher2d-slow", max_joint_speed=1.0)
    registry.register_robot("reacher2d-slow", lambda **kw: arm.MujocoArm(slow, **kw), replace=True)
    robot = registry.make_robot("reacher2d-slow", seed=0)
    assert robot.spec.robot_type == "reacher2d-slow"
    with pytest.raises(ValueError, match="already registered"):
        registry.register_robot("reacher2d-slow", reacher2d.make)


# -- episodes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROBOT_TYPES)
def test_stepping_is_deterministic_given_a_seed(name: str) -> None:
    def rollout() -> npt.NDArray[np.float32]:
        robot = registry.make_robot(name, validate=False)
        policy = policies.RandomPolicy(robot.spec.action, seed=3)
        step = robot.reset(seed=11)
        obs = [step.observation]
        for _ in range(10):
            step = robot.step(policy(step.observation))
            obs.append(step.observation)
        return np.stack(obs)

    np.testing.assert_array_equal(rollout(), rollout())


def test_different_seeds_give_different_goals() -> None:
    robot = registry.make_robot("reacher2d", validate=False)
    goals = {tuple(robot.reset(seed=s).info["goal_pos"].tolist()) for s in range(5)}
    assert len(goals) == 5


@pytest.mark.parametrize("name", REACHERS)
def test_the_scripted_policy_reaches_the_goal_in_most_episodes(name: str) -> None:
    robot = registry.make_robot(name, seed=0)
    policy = policies.scripted(robot)
    radius = _reach_radius(robot)
    reached = 0
    for seed in range(10):
        step = robot.reset(seed=seed)
        start = _distance(step)
        while not step.done:
            step = robot.step(policy(step.observation))
        reached += _distance(step) < radius
        assert _distance(step) < start or start < radius
    assert reached >= 9


def test_an_episode_is_truncated_at_its_length_and_must_then_be_reset() -> None:
    robot = registry.make_robot("reacher2d", max_episode_steps=5, validate=False)
    step = robot.reset(seed=0)
    zero = np.zeros(robot.spec.action.shape, np.float32)
    for i in range(1, 6):
        step = robot.step(zero)
        assert step.index == i
        assert step.truncated == (i == 5)
        assert not step.terminated
    with pytest.raises(robot_mod.RobotError, match="episode is over; call reset"):
        robot.step(zero)
    assert robot.reset(seed=1).index == 0


# -- cameras -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cameras"), [("reacher2d", ("overhead",)), ("arm7", ("front",))])
def test_cameras_render_uint8_hwc_of_the_announced_shape(
    name: str, cameras: tuple[str, ...]
) -> None:
    try:
        robot = registry.make_robot(name, cameras=cameras, camera_size=(48, 64))
    except robot_mod.RobotError as exc:
        if "cannot render cameras offscreen" in str(exc):
            pytest.skip(f"no offscreen OpenGL here: {exc}")
        raise
    try:
        assert [c.shape for c in robot.spec.cameras] == [(48, 64, 3)] * len(cameras)
        step = robot.reset(seed=0)
        for cam in cameras:
            image = step.images[cam]
            assert image.dtype == np.uint8
            assert image.shape == (48, 64, 3)
            assert image.std() > 0  # a scene, not a blank buffer
    finally:
        robot.close()


def test_bad_options_fail_with_one_line() -> None:
    with pytest.raises(robot_mod.RobotError, match=r"reacher2d: bad option \(max_episode_steps"):
        registry.make_robot("reacher2d", max_episode_steps=0)
    with pytest.raises(robot_mod.RobotError, match=r"reacher2d: camera_size must be"):
        registry.make_robot("reacher2d", cameras=("overhead",), camera_size=(0, 64))


def test_an_unknown_camera_fails_with_one_line() -> None:
    with pytest.raises(robot_mod.RobotError, match="reacher2d: the model has no camera named"):
        registry.make_robot("reacher2d", cameras=("top",))


# -- safety --------------------------------------------------------------------------------


def test_actions_beyond_the_limits_are_clipped_to_them() -> None:
    def final_obs(action_value: float) -> tuple[npt.NDArray[np.float32], int]:
        robot = registry.make_robot("reacher2d", validate=False)
        step = robot.reset(seed=2)
        for _ in range(5):
            step = robot.step(np.full(2, action_value, np.float32))
        return step.observation, robot.clipped_actions

    clipped, count = final_obs(7.5)
    at_limit, none = final_obs(1.0)
    np.testing.assert_array_equal(clipped, at_limit)
    assert (count, none) == (5, 0)


def test_clip_action_bounds_each_element() -> None:
    spec = spaces.ArraySpec(shape=(3,), low=(-1.0, 0.0, -2.0), high=(1.0, 0.5, 2.0))
    out = safety.clip_action(spec, [5.0, -1.0, 1.0])
    np.testing.assert_array_equal(out, np.array([1.0, 0.0, 1.0], np.float32))


def test_a_non_finite_or_misshapen_action_holds_the_robot_instead() -> None:
    robot = registry.make_robot("reacher2d", validate=False)
    robot.reset(seed=0)
    robot.step(np.array([np.nan, 0.0]))
    robot.step(np.zeros(3))
    assert robot.rejected_actions == 2
    assert robot.last_rejection is not None and "shape (3,)" in robot.last_rejection


def test_joint_targets_stay_inside_the_joint_range() -> None:
    robot = registry.make_robot("reacher2d", validate=False, max_episode_steps=60)
    robot.reset(seed=0)
    for _ in range(60):
        step = robot.step(np.array([0.0, 1.0], np.float32))
    elbow = float(np.arctan2(step.observation[3], step.observation[1]))
    assert 2.4 < elbow < 2.6 + 0.02


def test_estop_holds_the_robot_and_refuses_reset_until_released() -> None:
    robot = registry.make_robot("arm7", validate=False)
    robot.reset(seed=0)
    for _ in range(3):
        robot.step(np.ones(7, np.float32))
    robot.estop()
    held = [robot.step(np.ones(7, np.float32)).info["ee_pos"] for _ in range(10)]
    # It decelerates within a period or two, then stays put whatever it is told.
    assert np.linalg.norm(held[-1] - held[3]) < 1e-3
    assert robot.estopped
    with pytest.raises(robot_mod.RobotError, match="e-stop is engaged; call release"):
        robot.reset(seed=1)
    robot.release()
    assert robot.reset(seed=1).index == 0


# -- pacing and hosting ----------------------------------------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def test_a_period_that_overruns_is_counted_and_the_grid_is_kept() -> None:
    clock = _FakeClock()
    pacer = pacing.Pacer(10.0, clock=clock, sleep=clock.sleep)
    work = [0.02, 0.02, 0.25, 0.02, 0.02]  # the third period's work overruns 2.5 periods
    results = []
    for w in work:
        clock.now += w
        results.append(pacer.wait())
    assert results == [True, True, False, True, True]
    stats = pacer.stats
    assert (stats.periods, stats.missed) == (5, 1)
    assert stats.missed_fraction == pytest.approx(0.2)
    assert stats.max_lateness_s == pytest.approx(0.15)
    # Deadlines stay on the 0.1 s grid: the late period's work ends at 0.45 (0.15 s past
    # its deadline), the next two periods end at 0.5 and 0.6 — no burst to catch up.
    assert clock.now == pytest.approx(100.6)


def test_a_pacer_without_a_rate_never_waits() -> None:
    clock = _FakeClock()
    pacer = pacing.Pacer(None, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert pacer.wait()
    assert clock.now == 100.0 and pacer.stats.missed == 0


def test_two_robots_on_one_clock_keep_20_hz_in_real_time() -> None:
    robots = [registry.make_robot(name, seed=i) for i, name in enumerate(ROBOT_TYPES)]
    lockstep = host.Lockstep(robots)
    steps = lockstep.reset(list(range(len(robots))))
    pols = [policies.scripted(r) for r in robots]
    start = time.perf_counter()
    for _ in range(20):
        steps = lockstep.step([p(s.observation) for p, s in zip(pols, steps, strict=True)])
    elapsed = time.perf_counter() - start
    stats = lockstep.stats
    assert stats.periods == 20
    assert stats.missed_fraction <= 0.1
    assert 0.9 < elapsed < 1.3
    assert stats.rate_hz == pytest.approx(20.0, rel=0.15)


def test_many_robots_step_as_fast_as_possible_and_reset_one_by_one() -> None:
    robots = [registry.make_robot("reacher2d", seed=i, max_episode_steps=4) for i in range(4)]
    lockstep = host.Lockstep(robots, realtime=False)
    steps = lockstep.reset([0, 1, 2, 3])
    zero = np.zeros(2, np.float32)
    episodes = 0
    start = time.perf_counter()
    for _ in range(10):
        steps = lockstep.step([zero] * 4)
        for i, s in enumerate(steps):
            if s.done:
                episodes += 1
                steps[i] = lockstep.reset_one(i)
    assert time.perf_counter() - start < 0.5  # 40 steps, far below 10 periods of 50 ms
    assert episodes == 8
    assert lockstep.stats.missed == 0


def test_robots_with_different_rates_cannot_share_a_clock() -> None:
    robots = [
        registry.make_robot("reacher2d", validate=False),
        registry.make_robot("reacher2d", validate=False, control_hz=10.0),
    ]
    with pytest.raises(ValueError, match="share one control rate"):
        host.Lockstep(robots)


@pytest.mark.parametrize("break_it", ["huge gains", "nan qpos"])
def test_an_unstable_simulation_ends_the_episode_instead_of_resetting_in_it(
    break_it: str,
) -> None:
    robot = reacher2d.make(seed=0)
    robot.reset(seed=1)
    before = None
    for _ in range(3):
        before = robot.step(np.full(2, 0.5, np.float32))
    assert before is not None
    if break_it == "huge gains":  # a servo a trillion times too stiff: qacc blows up
        robot.model.actuator_gainprm[:, 0] *= 1e12
        robot.model.actuator_biasprm[:, 1] *= 1e12
    else:
        robot.data.qpos[0] = np.nan
    broken = robot.step(np.ones(2, np.float32))
    assert broken.truncated and broken.done and not broken.terminated
    assert "simulation unstable" in broken.unstable
    assert broken.index == 4
    # The last valid state, not MuJoCo's silent reset to the reference pose:
    np.testing.assert_array_equal(broken.observation, before.observation)
    assert np.all(np.isfinite(broken.observation))
    with pytest.raises(robot_mod.RobotError, match="episode is over"):
        robot.step(np.zeros(2, np.float32))


def test_a_stable_episode_reports_no_instability() -> None:
    robot = reacher2d.make(seed=0)
    step = robot.reset(seed=1)
    while not step.done:
        step = robot.step(np.ones(2, np.float32))
        assert step.unstable == ""
