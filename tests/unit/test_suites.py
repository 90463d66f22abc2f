"""Third-party suites behind the robot interface (issue 11 §4): what a missing suite says."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from agents import robot as robot_mod
from agents.sim import metaworld


def test_metaworld_maps_users_tasks_to_its_v3_environments() -> None:
    assert metaworld.ENVS == {"reach": "reach-v3", "push": "push-v3",
                              "pick_place": "pick-place-v3"}
    assert metaworld.SAWYER.tasks == ("reach", "push", "pick_place")


def test_a_task_metaworld_cannot_do_is_refused_in_one_line() -> None:
    with pytest.raises(robot_mod.RobotError, match="no task 'stack'"):
        metaworld.make(task="stack")


def test_without_the_suite_the_type_says_what_to_install() -> None:
    # USER's venv pins MuJoCo 4.0.0, which Meta-World 3.1.1 refuses (it pins 3.3.0).
    assert importlib.util.find_spec("metaworld") is None
    with pytest.raises(robot_mod.RobotError, match=r"pip install 'metaworld==3.1.1'"):
        metaworld.make(task="reach")


def test_a_suite_python_without_the_suite_fails_in_one_line_through_the_child() -> None:
    # The child protocol for real (a process, JSON lines), with this venv's python, which
    # has no Meta-World: the child's import error comes back as the robot's one-line error.
    with pytest.raises(robot_mod.RobotError,
                       match=r"^metaworld: make: ModuleNotFoundError: .*'(metaworld|gymnasium)'"):
        metaworld.make(task="reach", python=sys.executable)


def test_a_suite_python_that_does_not_exist_is_a_one_line_error() -> None:
    with pytest.raises(robot_mod.RobotError, match="cannot start"):
        metaworld.make(task="reach", python="/nonexistent/python")
