"""Third-party task suites behind the robot interface, for real (issue 11 §4).

Meta-World, gymnasium-robotics (Fetch) and gym-hil run in the suites' own Python 3.12 venv
(``make suites``, which ``make test`` runs) in a child process of each robot. The robot
contract (probe, shapes, determinism, the reach expert) is in ``tests/unit/test_robots.py``,
parametrised over every registered type; here: each suite's own task semantics agree with
USER's success rules and reward jobs, and the suite's or our scripted experts solve them.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents import policies, registry
from agents import robot as robot_mod
from agents.sim import suites
from schemas import tasks as rules
from schemas.spaces import RobotSpec


def _run(robot: robot_mod.Robot, seed: int) -> tuple[robot_mod.Step, list[robot_mod.Step]]:
    act = policies.scripted(robot)
    step = robot.reset(seed=seed)
    steps = [step]
    while not step.done:
        step = robot.step(act(step.observation))
        steps.append(step)
    return step, steps


def test_the_suites_run_on_their_own_mujoco_beside_users() -> None:
    import mujoco

    robot = registry.make_robot("gym_hil_panda", seed=0, validate=False)
    inner = robot.inner if hasattr(robot, "inner") else robot
    assert mujoco.__version__.startswith("4.")
    assert inner._live().mujoco == "3.3.0"  # the child reports its own MuJoCo
    robot.close()


def test_gym_hil_lift_ends_on_the_suites_success_which_is_users_rule_and_reward() -> None:
    robot = registry.make_robot("gym_hil_panda", seed=0, validate=False)
    assert robot.spec.task == "lift"
    lifted = 0
    for seed in range(6):
        last, steps = _run(robot, seed)
        info = {k: np.stack([s.info[k] for s in steps[1:]]) for k in robot.spec.info}
        success = rules.lift_success(info)
        # The suite ends the episode exactly when USER's rule first holds.
        assert last.terminated == bool(success[-1])
        assert not success[:-1].any()
        lifted += bool(success[-1])
    assert lifted >= 5
    robot.close()


def test_fetch_push_reports_the_cube_on_a_table_at_z_0_so_users_push_rule_applies() -> None:
    robot = registry.make_robot("fetch", task="push", seed=0, validate=False)
    step = robot.reset(seed=3)
    # Resting on the table: the cube's centre is half its edge above the top.
    assert abs(float(step.info["cube_pos"][2]) - rules.CUBE_HALF) < 0.005
    assert not bool(rules.push_success(step.info))
    robot.close()


@pytest.mark.parametrize("task", ["push", "pick_place_air"])
def test_metaworlds_own_experts_succeed_under_users_rules(task: str) -> None:
    robot = registry.make_robot("metaworld_sawyer", task=task, seed=0, validate=False)
    done = 0
    for seed in range(3):
        _, steps = _run(robot, seed)
        info = {k: np.stack([s.info[k] for s in steps]) for k in robot.spec.info}
        done += bool(rules.SUCCESS_RULES[task](info).any())
    assert done >= 2
    robot.close()


def test_a_suite_robots_spec_round_trips_like_any_robots() -> None:
    robot = registry.make_robot("fetch", seed=0)
    assert RobotSpec.model_validate_json(robot.spec.model_dump_json()) == robot.spec
    robot.close()


def test_lerobot_env_so101_makes_and_steps_in_the_suites_venv_on_its_mujoco() -> None:
    # lerobot-env-so101 (an SO-101 pick-cube packaged as a LeRobot env plug-in) wants
    # mujoco < 4.0: it installs beside Meta-World, Fetch and gym-hil on the suites' 3.3.0.
    python = suites.suite_python()
    assert python is not None
    env = suites.ChildEnv("so101", python, "gymnasium", "lerobot_env_so101/SO101PickCube-v0",
                          0, 100)
    try:
        assert env.mujoco == "3.3.0"
        first = env.reset(seed=0)
        assert isinstance(first.obs, dict)
        assert first.obs["agent_pos"].shape == (14,)
        assert first.obs["environment_state"].shape == (3,)  # the cube's position
        steps = [env.step(np.array([0.5, 0.0, -0.5, 1.0])) for _ in range(5)]
        assert isinstance(steps[-1].obs, dict)
        assert not np.allclose(steps[-1].obs["agent_pos"], first.obs["agent_pos"])
        assert not any(s.terminated or s.truncated or s.success for s in steps)
    finally:
        env.close()
