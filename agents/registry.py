"""Robot types by name: ``register_robot("reacher2d", factory)``, ``make_robot("reacher2d")``.

The built-in simulated types (``agents.sim``) register themselves the first time a type
is looked up, so importing this module does not import MuJoCo.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from agents import robot as robot_mod
from agents import safety, validation

__all__ = ["RobotFactory", "make_robot", "register_robot", "robot_types"]

#: Builds an unguarded, unvalidated robot from keyword options (seed, control_hz, cameras…).
RobotFactory = Callable[..., robot_mod.Robot]

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_BUILTIN_MODULES = ("agents.sim",)
_factories: dict[str, RobotFactory] = {}
_builtins_loaded = False


def register_robot(name: str, factory: RobotFactory, *, replace: bool = False) -> None:
    """Make ``name`` buildable by ``make_robot``.

    Raises ``ValueError`` for a malformed name, or when ``name`` is taken and ``replace``
    is false.
    """
    if not _NAME.match(name):
        raise ValueError(f"robot type {name!r} must match {_NAME.pattern}")
    if name in _factories and not replace and _factories[name] is not factory:
        raise ValueError(f"robot type {name!r} is already registered; pass replace=True")
    _factories[name] = factory


def robot_types() -> list[str]:
    """The registered type names, sorted."""
    _load_builtins()
    return sorted(_factories)


def make_robot(name: str, *, validate: bool = True, **options: object) -> safety.Guarded:
    """Build a robot of type ``name``, probe it, and wrap it in the safety layer.

    ``options`` go to the type's factory (the simulated arms take ``seed``, ``control_hz``,
    ``cameras``, ``camera_size``, ``max_episode_steps``). With ``validate`` the robot is
    probed as ``agents.validation.validate`` describes. Raises ``RobotError`` (one line)
    for an unknown type, options the factory rejects, or a failed probe.
    """
    _load_builtins()
    factory = _factories.get(name)
    if factory is None:
        known = ", ".join(sorted(_factories)) or "none"
        raise robot_mod.RobotError(f"unknown robot type {name!r}; registered types: {known}")
    try:
        robot = factory(**options)
    except TypeError as exc:
        raise robot_mod.RobotError(f"robot type {name!r} rejects its options: {exc}") from exc
    if validate:
        try:
            validation.validate(robot)
        except robot_mod.RobotError:
            robot.close()
            raise
    return safety.Guarded(robot)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
