"""Scene tasks for the simulated manipulators: ``reach``, ``push``, ``pick_place``.

A task is what an experiment's ``task`` field names. For a simulated manipulator
(``agents.sim.manipulators``) it is a scene (objects added to the robot's MJCF with
``mujoco.MjSpec``), a reset distribution, the task part of the observation, the ``info``
arrays reward jobs read, a success rule (``schemas.tasks``, shared with the reward jobs)
and a scripted expert (``agents.sim.experts``). The table top is at z = 0; the robot's
base stands at the world origin, facing +x.

Tasks are discovered through the ``user.tasks`` entry points (``topics.plugins``); the
built-ins below are registered that way in USER's ``pyproject.toml``. A lab adds one by
writing an object with the ``SceneTask`` attributes and declaring it under that group.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import mujoco
import numpy as np
import numpy.typing as npt

from agents.sim import experts
from schemas import tasks as rules
from topics import plugins

__all__ = [
    "ENTRY_POINTS",
    "PICK_PLACE",
    "PUSH",
    "REACH",
    "CubeTask",
    "ReachTask",
    "SceneTask",
    "available",
    "get",
]

log = logging.getLogger(__name__)

Vec = npt.NDArray[np.float64]
#: The entry-point group tasks are discovered in.
ENTRY_POINTS = "user.tasks"


#: A Cartesian box (low xyz, high xyz), world frame, metres.
Box = tuple[tuple[float, float, float], tuple[float, float, float]]


class SceneTask(Protocol):
    """What a manipulator needs from a task (module docstring)."""

    @property
    def name(self) -> str:
        """Registered name, the experiment's ``task``."""

    @property
    def info_keys(self) -> tuple[str, ...]:
        """``info`` arrays sent each step, float32 (3,) each; ``ee_pos`` is the robot's."""

    @property
    def observation_size(self) -> int:
        """Length of the task part of the observation."""

    @property
    def workspace(self) -> Box:
        """Where the end effector may go (the safety layer keeps it there)."""

    @property
    def max_episode_steps(self) -> int:
        """Episode length at 20 Hz."""

    def build(self, world: mujoco.MjSpec) -> None:
        """Add the task's objects to the scene (the table is there already)."""

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData,
              rng: np.random.Generator) -> Vec:
        """Place the objects for a new episode; return the end effector's start (3,)."""

    def observe(self, model: mujoco.MjModel, data: mujoco.MjData,
                ee: Vec) -> tuple[Vec, dict[str, Vec]]:
        """The task part of the observation and the ``info`` arrays (``ee_pos`` included)."""

    def success(self, info: Mapping[str, npt.NDArray[np.floating]]) -> bool:
        """The task is solved in this state."""

    def expert(self, max_step_m: float) -> Callable[[npt.NDArray[np.floating]],
                                                     npt.NDArray[np.float32]]:
        """A scripted policy for the manipulator observation layout and a position step
        of ``max_step_m`` per unit action (``agents.sim.experts``)."""


def _add_mocap_marker(world: mujoco.MjSpec, name: str, rgba: tuple[float, ...],
                      size: float, kind: mujoco.mjtGeom) -> None:
    body = world.worldbody.add_body(name=name, mocap=True)
    body.add_geom(type=kind, size=[size, size, 0.001], rgba=list(rgba), contype=0,
                  conaffinity=0, group=2)


@dataclasses.dataclass(frozen=True)
class ReachTask:
    """Move the end effector to a random point above the table."""

    name: str = "reach"
    info_keys: tuple[str, ...] = rules.INFO_KEYS["reach"]
    observation_size: int = 6
    workspace: Box = ((0.3, -0.3, 0.02), (0.75, 0.3, 0.45))
    max_episode_steps: int = 60
    goal_low: tuple[float, float, float] = (0.35, -0.25, 0.05)
    goal_high: tuple[float, float, float] = (0.7, 0.25, 0.4)

    def build(self, world: mujoco.MjSpec) -> None:
        _add_mocap_marker(world, "goal", (0.1, 0.8, 0.1, 0.6), 0.02,
                          mujoco.mjtGeom.mjGEOM_SPHERE)

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData,
              rng: np.random.Generator) -> Vec:
        goal = rng.uniform(self.goal_low, self.goal_high)
        data.mocap_pos[model.body("goal").mocapid[0]] = goal
        return _start_ee(rng)

    def observe(self, model: mujoco.MjModel, data: mujoco.MjData,
                ee: Vec) -> tuple[Vec, dict[str, Vec]]:
        goal = data.mocap_pos[model.body("goal").mocapid[0]].copy()
        return np.concatenate([goal, goal - ee]), {rules.EE_POS: ee, rules.GOAL_POS: goal}

    def success(self, info: Mapping[str, npt.NDArray[np.floating]]) -> bool:
        return bool(rules.reach_success(info))

    def expert(self, max_step_m: float) -> experts.Policy:
        return experts.Reach(max_step_m)


@dataclasses.dataclass(frozen=True)
class CubeTask:
    """A 5 cm cube on the table, and a goal for it: a target spot (``push``) or a bin
    (``pick_place``). The cube starts upright at a random spot and yaw (±0.3 rad); the
    goal is 0.15–0.25 m away from it."""

    name: str
    info_keys: tuple[str, ...]
    #: The goal is a bin (pick_place) rather than a spot on the table (push).
    bin: bool
    max_episode_steps: int
    observation_size: int = 12
    workspace: Box = ((0.25, -0.35, 0.01), (0.8, 0.35, 0.35))
    cube_low: tuple[float, float] = (0.4, -0.15)
    cube_high: tuple[float, float] = (0.6, 0.15)

    def build(self, world: mujoco.MjSpec) -> None:
        h = rules.CUBE_HALF
        cube = world.worldbody.add_body(name="cube", pos=[0.5, 0.0, h])
        cube.add_freejoint(name="cube")
        cube.add_geom(name="cube", type=mujoco.mjtGeom.mjGEOM_BOX, size=[h, h, h],
                      rgba=[0.8, 0.2, 0.2, 1], mass=0.1, friction=[1.0, 0.01, 0.001],
                      condim=4, solref=[0.005, 1.0])
        if not self.bin:
            _add_mocap_marker(world, "goal", (0.1, 0.8, 0.1, 0.6), rules.PUSH_RADIUS,
                              mujoco.mjtGeom.mjGEOM_CYLINDER)
            return
        # A mocap bin: its walls collide, and moving the mocap body moves them. The table
        # is its floor (a thin floor of its own lets a dropped cube tunnel into the table).
        goal = world.worldbody.add_body(name="goal", mocap=True)
        inner, wall, height = rules.BIN_HALF_INNER, 0.01, rules.BIN_WALL_HEIGHT
        rgba = [0.3, 0.3, 0.7, 1]
        for i, (x, y, sx, sy) in enumerate([
            (inner + wall, 0, wall, inner + 2 * wall), (-inner - wall, 0, wall, inner + 2 * wall),
            (0, inner + wall, inner, wall), (0, -inner - wall, inner, wall),
        ]):
            goal.add_geom(name=f"bin_wall{i}", type=mujoco.mjtGeom.mjGEOM_BOX,
                          size=[sx, sy, height / 2], pos=[x, y, height / 2], rgba=rgba)

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData,
              rng: np.random.Generator) -> Vec:
        cube_xy = rng.uniform(self.cube_low, self.cube_high)
        yaw = rng.uniform(-0.3, 0.3)
        if self.bin:
            # The bin sits on the side of the cube nearer the table's edge, clear of it.
            side = -1.0 if cube_xy[1] > 0 else 1.0
            goal_xy = np.array([rng.uniform(0.4, 0.6), cube_xy[1] + side * rng.uniform(0.2, 0.25)])
        else:
            angle = rng.uniform(-np.pi, np.pi)
            goal_xy = cube_xy + rng.uniform(0.15, 0.25) * np.array([np.cos(angle), np.sin(angle)])
            goal_xy = np.clip(goal_xy, [0.35, -0.25], [0.7, 0.25])
        qadr = model.joint("cube").qposadr[0]
        data.qpos[qadr:qadr + 3] = [cube_xy[0], cube_xy[1], rules.CUBE_HALF]
        data.qpos[qadr + 3:qadr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        data.mocap_pos[model.body("goal").mocapid[0]] = [goal_xy[0], goal_xy[1], 0.0]
        return _start_ee(rng)

    def observe(self, model: mujoco.MjModel, data: mujoco.MjData,
                ee: Vec) -> tuple[Vec, dict[str, Vec]]:
        cube = data.body("cube").xpos.copy()
        goal = data.mocap_pos[model.body("goal").mocapid[0]].copy()
        obs = np.concatenate([cube, goal, cube - ee, goal - cube])
        return obs, {rules.EE_POS: ee, rules.CUBE_POS: cube, rules.GOAL_POS: goal}

    def success(self, info: Mapping[str, npt.NDArray[np.floating]]) -> bool:
        rule = rules.pick_place_success if self.bin else rules.push_success
        return bool(rule(info))

    def expert(self, max_step_m: float) -> experts.Policy:
        return experts.PickPlace(max_step_m) if self.bin else experts.Push(max_step_m)


def _start_ee(rng: np.random.Generator) -> Vec:
    """The end effector starts above the table's middle, ±5 cm."""
    return np.array([0.45, 0.0, 0.25]) + rng.uniform(-0.05, 0.05, size=3)


REACH = ReachTask()
PUSH = CubeTask(name="push", info_keys=rules.INFO_KEYS["push"], bin=False,
                max_episode_steps=150)
PICK_PLACE = CubeTask(name="pick_place", info_keys=rules.INFO_KEYS["pick_place"], bin=True,
                      max_episode_steps=150)


def available() -> dict[str, SceneTask]:
    """Every task from the ``user.tasks`` entry points (the built-ins when none are
    installed), by name. A broken plug-in is logged in one line and left out."""
    found: dict[str, SceneTask] = {}
    for plugin in plugins.load(ENTRY_POINTS):
        value = plugin.value
        if plugin.error is not None:
            continue
        if not all(hasattr(value, a) for a in ("name", "build", "reset", "observe", "expert")):
            log.warning("plug-in %s %r from %s skipped: %s is not a scene task",
                        ENTRY_POINTS, plugin.name, plugin.package, plugin.target)
            continue
        found[plugin.name] = value  # type: ignore[assignment]
    if not found:
        found = {t.name: t for t in (REACH, PUSH, PICK_PLACE)}
    return dict(sorted(found.items()))


def names() -> tuple[str, ...]:
    """The names of ``available()`` tasks."""
    return tuple(available())


def get(name: str) -> SceneTask:
    """The task named ``name``; raises ``KeyError`` with the known names."""
    known = available()
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(known)}") from None
