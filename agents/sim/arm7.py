"""``arm7``: a 7-DoF arm on a fixed base reaching random goals in front of it.

Goals are uniform in a box 0.3–0.6 m ahead, ±0.3 m to the sides and 0.15–0.55 m high;
the start pose is a bent-elbow home pose with ±0.1 rad noise per joint. Episodes last
100 steps (5 s at 20 Hz); a goal within 5 cm counts as reached. At |action| = 1 a joint
turns at 1.5 rad/s. Observation: 30 floats (see ``agents.sim.arm``). Cameras:
``front``, ``side``.
"""

from __future__ import annotations

import numpy as np

from agents import registry
from agents.sim import arm

__all__ = ["CONFIG", "make"]


def _sample_goal(rng: np.random.Generator) -> arm.Vec:
    return rng.uniform([0.3, -0.3, 0.15], [0.6, 0.3, 0.55])


CONFIG = arm.ArmConfig(
    robot_type="arm7",
    model_file="arm7.xml",
    joints=("j1", "j2", "j3", "j4", "j5", "j6", "j7"),
    home=(0.0, 0.3, 0.0, 1.6, 0.0, 0.9, 0.0),
    start_noise=(0.1,) * 7,
    sample_goal=_sample_goal,
    max_joint_speed=1.5,
    task_dims=3,
    success_radius=0.05,
    max_episode_steps=100,
)


def make(**options: object) -> arm.MujocoArm:
    """An ``arm7``; options as ``agents.sim.arm.MujocoArm`` takes them."""
    return arm.MujocoArm(CONFIG, **options)  # type: ignore[arg-type]


registry.register_robot(CONFIG.robot_type, make)
