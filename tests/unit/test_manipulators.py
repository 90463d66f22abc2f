"""Real-model arms (Panda, UR5e from robosuite's MJCF), their Cartesian action space, the
contact tasks, their scripted experts, their reward functions and submit-time checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agents import policies, registry, safety
from agents.sim import manipulators
from infra import cmd_fleet
from pipeline import rewards
from schemas import tasks as task_rules
from schemas.experiment import ExperimentSpec

ARMS = ("panda", "ur5e")


@dataclasses.dataclass
class InfoBatch:
    """The part of a ``TransitionBatch`` a reward function reads: ``info`` and its length."""

    info: dict[str, npt.NDArray[np.float32]]
    robot_id: str = "r"

    def __len__(self) -> int:
        return len(next(iter(self.info.values())))
TASKS = ("reach", "push", "pick_place")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ARMS)
def test_the_scripted_expert_solves_its_task_in_at_least_9_of_10_episodes(
    name: str, task: str
) -> None:
    robot = registry.make_robot(name, task=task, seed=0)
    expert = policies.scripted(robot)
    rule = task_rules.SUCCESS_RULES[task]
    solved = 0
    for seed in range(10):
        step = robot.reset(seed=seed)
        assert not rule(step.info)  # no episode starts solved
        while not step.done:
            step = robot.step(expert(step.observation))
        solved += bool(rule(step.info))
    assert solved >= 9


def test_the_models_come_from_the_robosuite_wheel() -> None:
    assets = manipulators.robosuite_assets()
    assert (assets / manipulators.PANDA_CONFIG.robot_xml).is_file()
    assert (assets / manipulators.UR5E_CONFIG.gripper_xml).is_file()
    assert "site-packages" in str(assets) or "dist-packages" in str(assets)


def test_the_action_is_an_end_effector_delta_plus_a_gripper_command() -> None:
    robot = registry.make_robot("panda", seed=0)
    assert robot.spec.action.shape == (4,)
    step = robot.reset(seed=3)
    start = step.info["ee_pos"].copy()
    for _ in range(10):
        step = robot.step(np.array([0.0, 1.0, 0.0, -1.0], np.float32))
    moved = step.info["ee_pos"] - start
    assert moved[1] > 0.05  # +y, several centimetres
    assert abs(moved[0]) < 0.01 and abs(moved[2]) < 0.01
    assert step.observation[6] > 0.9  # the gripper is open


def test_orientation_deltas_are_an_option() -> None:
    robot = registry.make_robot("ur5e", orientation=True, seed=0)
    assert robot.spec.action.shape == (7,)
    step = robot.reset(seed=0)
    for _ in range(3):
        step = robot.step(np.array([0, 0, 0, 0, 0, 1.0, 0], np.float32))
    assert np.isfinite(step.observation).all()


def test_the_safety_layer_keeps_the_end_effector_in_the_workspace() -> None:
    robot = registry.make_robot("panda", task="push", seed=0)
    assert isinstance(robot, safety.Guarded) and robot.workspace is not None
    low, high = np.array(robot.workspace.low), np.array(robot.workspace.high)
    step = robot.reset(seed=0)
    for _ in range(60):  # full speed down and away, into the table and past the edge
        step = robot.step(np.array([1.0, 1.0, -1.0, 1.0], np.float32))
    ee = step.info["ee_pos"]
    assert np.all(ee >= low - 0.01) and np.all(ee <= high + 0.01)
    assert robot.workspace_clips > 0


def test_workspace_limit_allows_only_moves_back_toward_the_box() -> None:
    box = safety.Workspace(low=(0.0, 0.0, 0.0), high=(1.0, 1.0, 1.0), step_m=0.1)
    action = np.array([1.0, -1.0, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(box.limit(action, [0.95, 0.5, 0.5]), [0.5, -1.0, 0.5, 1.0])
    # Outside already: moving further out is cut to zero, moving back is kept.
    np.testing.assert_allclose(box.limit(action, [1.2, 0.5, 0.5]), [0.0, -1.0, 0.5, 1.0])


@pytest.mark.parametrize(("task", "reward"), [("push", "push"), ("pick_place", "pick_place")])
def test_dense_and_sparse_rewards_agree_with_the_success_rule(task: str, reward: str) -> None:
    solved = {task_rules.EE_POS: np.array([[0.5, 0.0, 0.2], [0.5, 0.0, 0.1]]),
              task_rules.CUBE_POS: np.array([[0.5, 0.0, 0.1], [0.6, 0.2, 0.025]]),
              task_rules.GOAL_POS: np.array([[0.5, 0.3, 0.0], [0.6, 0.21, 0.0]])}
    assert task_rules.SUCCESS_RULES[task](solved).tolist() == [False, True]
    for kind in ("dense", "sparse"):
        fn = rewards.lookup(f"{reward}_{kind}@1")
        assert fn.needs == task_rules.INFO_KEYS[task]
    dense = rewards.lookup(f"{reward}_dense@1").fn
    sparse = rewards.lookup(f"{reward}_sparse@1").fn

    batch = InfoBatch({k: v.astype(np.float32) for k, v in solved.items()})
    d, s = dense(batch), sparse(batch)  # type: ignore[arg-type]
    assert d.success.tolist() == s.success.tolist() == [False, True]
    assert d.reward[1] > d.reward[0]
    assert s.reward.tolist() == [0.0, 1.0]


def test_lift_rewards_follow_gym_hils_rule_and_end_the_episode_on_success() -> None:
    # Rows: hand above the cube at rest; cube held 11 cm up (success); cube 11 cm up but
    # 8 cm from the hand (thrown, not held).
    goal = np.array([0.5, 0.0, 0.02 + task_rules.LIFT_HEIGHT])
    info = {task_rules.EE_POS: np.array([[0.5, 0.0, 0.1], [0.5, 0.0, 0.13], [0.5, 0.0, 0.21]]),
            task_rules.CUBE_POS: np.array([[0.5, 0.0, 0.02], [0.5, 0.0, 0.13], [0.5, 0.0, 0.13]]),
            task_rules.GOAL_POS: np.stack([goal] * 3)}
    assert task_rules.lift_success(info).tolist() == [False, True, False]
    batch = InfoBatch({k: v.astype(np.float32) for k, v in info.items()})
    dense = rewards.lookup("lift_dense@1").fn(batch)  # type: ignore[arg-type]
    sparse = rewards.lookup("lift_sparse@1").fn(batch)  # type: ignore[arg-type]
    assert dense.success.tolist() == sparse.success.tolist() == [False, True, False]
    assert dense.terminated.tolist() == [False, True, False]
    assert dense.reward[1] > dense.reward[2] > dense.reward[0]
    assert sparse.reward.tolist() == [0.0, 1.0, 0.0]


def _spec(task: str, *types: str) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "name": "t", "task": task,
        "robots": [{"robot_type": t, "count": 1} for t in types]})


def test_submit_refuses_a_task_a_robot_type_cannot_do_naming_the_field() -> None:
    assert cmd_fleet.task_problems(_spec("push", "panda", "ur5e")) == []
    assert cmd_fleet.task_problems(_spec("push", "panda", "arm7")) == [
        "task: robot type 'arm7' cannot do task 'push'; it can do: reach"]
    (unknown,) = cmd_fleet.task_problems(_spec("stack", "panda"))
    assert unknown.startswith("task: robot type 'panda' cannot do task 'stack'")


def test_submit_reports_spec_problems_as_field_level_lines(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ntask: push\nrobots:\n  - robot_type: reacher2d\n")
    with pytest.raises(SystemExit) as err:
        cmd_fleet.load_spec(path)
    assert str(err.value).splitlines()[1] == (
        "  task: robot type 'reacher2d' cannot do task 'push'; it can do: reach")
