"""Third-party suites behind the robot interface (issue 11 §4): what a missing suite says."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable

import pytest

from agents import robot as robot_mod
from agents.sim import fetch, gym_hil, metaworld


def test_metaworld_maps_users_tasks_to_its_v3_environments() -> None:
    assert metaworld.ENVS == {"reach": "reach-v3", "push": "push-v3",
                              "pick_place_air": "pick-place-v3"}
    assert metaworld.SAWYER.tasks == ("reach", "push", "pick_place_air")


def test_a_task_metaworld_cannot_do_is_refused_in_one_line() -> None:
    with pytest.raises(robot_mod.RobotError, match="no task 'stack'"):
        metaworld.make(task="stack")


@pytest.mark.parametrize("make", [metaworld.make, fetch.make, gym_hil.make])
def test_without_the_suite_the_type_says_what_to_install(
        make: Callable[..., robot_mod.Robot], monkeypatch: pytest.MonkeyPatch,
        tmp_path: pathlib.Path) -> None:
    # USER's venv pins MuJoCo 4.0.0, which Meta-World 3.1.1 refuses (it pins 3.3.0): the
    # suites live in a venv of their own, found through USER_SUITES_PYTHON or `make suites`.
    assert importlib.util.find_spec("metaworld") is None
    monkeypatch.delenv("USER_SUITES_PYTHON", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # no <prefix>/suites here
    with pytest.raises(robot_mod.RobotError, match=r"run `make suites`"):
        make()


def test_a_suite_python_without_the_suite_fails_in_one_line_through_the_child() -> None:
    # The child protocol for real (a process, JSON lines), with this venv's python, which
    # has no Meta-World: the child's import error comes back as the robot's one-line error.
    with pytest.raises(robot_mod.RobotError,
                       match=r"^metaworld: make: ModuleNotFoundError: .*'(metaworld|gymnasium)'"):
        metaworld.make(task="reach", python=sys.executable)


def test_a_suite_python_that_does_not_exist_is_a_one_line_error() -> None:
    with pytest.raises(robot_mod.RobotError, match="cannot start"):
        metaworld.make(task="reach", python="/nonexistent/python")


@pytest.mark.parametrize("name", ["reach-fetch", "lift-gym-hil", "reach-metaworld",
                                  "push-metaworld"])
def test_each_suite_benchmark_run_asks_a_task_and_reward_its_robot_type_can_serve(
        name: str) -> None:
    from agents import registry
    from infra.bench import manipulators as bench
    from pipeline import rewards
    from schemas import tasks as rules

    run = bench.RUNS[name]
    for robot_type, _ in run.robots:
        assert run.task in registry.robot_tasks(robot_type)
    assert set(rewards.lookup(run.reward).needs) <= set(rules.INFO_KEYS[run.task])
    assert bench.experiment(name, run, 0).task == run.task
