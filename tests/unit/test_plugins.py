"""Plug-ins from a lab's own package: entry points, `userctl plugins`, broken plug-ins.

The test builds a tiny package in a temporary folder (pyproject + one module), pip-installs
it into this venv, uses its robot type and reward function, and uninstalls it afterwards.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agents import policies, registry
from infra import cmd_fleet
from pipeline import rewards
from schemas.experiment import ExperimentSpec
from tests.unit.test_manipulators import InfoBatch
from topics import plugins

PACKAGE = "user-plugin-fixture"
MODULE = "user_plugin_fixture"

_PYPROJECT = f"""
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{PACKAGE}"
version = "0.0.1"

[tool.setuptools]
py-modules = ["{MODULE}"]

[project.entry-points."user.robots"]
reacher2d-lab = "{MODULE}:make"

[project.entry-points."user.rewards"]
lab = "{MODULE}"

[project.entry-points."user.tasks"]
broken = "{MODULE}_missing:TASK"
"""

_MODULE = '''
"""A lab's own robot type and reward function."""
import dataclasses

import numpy as np

from agents.sim import arm, reacher2d
from pipeline.rewards import Rewards, register

CONFIG = dataclasses.replace(reacher2d.CONFIG, robot_type="reacher2d-lab", max_joint_speed=2.0)


def make(**options):
    return arm.MujocoArm(CONFIG, **options)


@register("lab_reach", "1", needs=("ee_pos", "goal_pos"))
def lab_reach(batch):
    """1 within 10 cm of the goal."""
    d = np.linalg.norm(batch.info["goal_pos"] - batch.info["ee_pos"], axis=1)
    return Rewards(reward=(d < 0.1).astype(np.float32), success=d < 0.1,
                   terminated=np.zeros(len(batch), bool))
'''


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, timeout=300)


def _reload() -> None:
    importlib.invalidate_caches()
    for group in plugins.GROUPS:
        plugins.load(group, reload=True)
    registry._load_builtins(reload=True)


@pytest.fixture(scope="module")
def lab_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    src: Path = tmp_path_factory.mktemp("lab-plugin")
    (src / "pyproject.toml").write_text(textwrap.dedent(_PYPROJECT))
    (src / f"{MODULE}.py").write_text(textwrap.dedent(_MODULE))
    _pip("install", "--no-deps", "--no-build-isolation", str(src))
    try:
        _reload()
        yield PACKAGE
    finally:
        _pip("uninstall", "-y", PACKAGE)
        _reload()


def test_a_lab_package_adds_a_robot_type_and_a_reward_used_by_an_experiment(
    lab_package: str,
) -> None:
    spec = ExperimentSpec.model_validate({
        "name": "lab", "task": "reach", "reward": "lab_reach@1",
        "robots": [{"robot_type": "reacher2d-lab", "count": 2}]})
    assert cmd_fleet.task_problems(spec) == []
    robot = registry.make_robot("reacher2d-lab", seed=0)  # probed and guarded
    policy = policies.scripted(robot)
    step = robot.reset(seed=0)
    ee, goal = [], []
    while not step.done:
        step = robot.step(policy(step.observation))
        ee.append(step.info["ee_pos"])
        goal.append(step.info["goal_pos"])

    batch = InfoBatch({"ee_pos": np.stack(ee), "goal_pos": np.stack(goal)})
    scored = rewards.lookup(spec.reward)(batch)  # type: ignore[arg-type]
    assert scored.success[-1] and scored.reward[-1] == 1.0


def test_userctl_plugins_lists_each_with_its_package_and_a_broken_one_in_one_line(
    lab_package: str,
) -> None:
    out = subprocess.run([sys.executable, "-m", "infra.cli", "plugins"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    rows = {(line.split()[0], line.split()[1]): line for line in out.splitlines()[1:]}
    assert f"{PACKAGE} 0.0.1" in rows[("user.robots", "reacher2d-lab")]
    assert "user-robot-learning" in rows[("user.robots", "panda")]
    assert rows[("user.robots", "panda")].rstrip().endswith("ok")
    broken = rows[("user.tasks", "broken")]
    assert "broken: ModuleNotFoundError" in broken


def test_a_broken_plug_in_is_skipped_and_the_rest_still_load(lab_package: str) -> None:
    loaded = {p.name: p for p in plugins.load("user.tasks")}
    assert loaded["broken"].error is not None and "\n" not in loaded["broken"].error
    assert {"reach", "push", "pick_place"} <= {n for n, p in loaded.items() if p.error is None}
    assert "push" in registry.robot_tasks("panda")
