"""``reacher2d``: a 2-DoF planar arm reaching random goals on a table.

Links of 0.12 m; goals uniform over the annulus 0.08–0.22 m around the shoulder (all
reachable); the start pose is a random shoulder angle and a random elbow angle in
±1 rad. Episodes last 50 steps (2.5 s at 20 Hz); a goal within 5 cm counts as reached.
At |action| = 1 a joint turns at 4 rad/s, so any goal is reachable in well under
half an episode. Observation: 12 floats (see ``agents.sim.arm``). Camera: ``overhead``.
"""

from __future__ import annotations

import math

import numpy as np

from agents import registry
from agents.sim import arm

__all__ = ["CONFIG", "make"]


def _sample_goal(rng: np.random.Generator) -> arm.Vec:
    # Area-uniform over the annulus: radius ~ sqrt(uniform(r0^2, r1^2)).
    r = math.sqrt(rng.uniform(0.08**2, 0.22**2))
    theta = rng.uniform(-math.pi, math.pi)
    return np.array([r * math.cos(theta), r * math.sin(theta), 0.02])


CONFIG = arm.ArmConfig(
    robot_type="reacher2d",
    model_file="reacher2d.xml",
    joints=("shoulder", "elbow"),
    home=(0.0, 0.0),
    start_noise=(math.pi, 1.0),
    sample_goal=_sample_goal,
    max_joint_speed=4.0,
    task_dims=2,
    success_radius=0.05,
    max_episode_steps=50,
)


def make(**options: object) -> arm.MujocoArm:
    """A ``reacher2d``; options as ``agents.sim.arm.MujocoArm`` takes them."""
    return arm.MujocoArm(CONFIG, **options)  # type: ignore[arg-type]


registry.register_robot(CONFIG.robot_type, make)
