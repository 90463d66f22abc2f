"""Simulated robots (MuJoCo). Importing this package registers the built-in types.

``MUJOCO_GL`` must be set before MuJoCo is first imported: cameras render offscreen with
EGL (Mesa's software renderer where there is no GPU) unless the environment says
otherwise.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from agents.sim import arm7, reacher2d  # registers the types

__all__ = ["arm7", "reacher2d"]
