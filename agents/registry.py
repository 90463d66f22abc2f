"""Robot types by name: ``register_robot("reacher2d", factory)``, ``make_robot("reacher2d")``.

Types come from the ``user.robots`` entry points (``topics.plugins``): USER's own
(``reacher2d``, ``arm7``, ``panda``, ``ur5e``) and any installed lab package's, loaded the
first time a type is looked up, so importing this module does not import MuJoCo. A type
set up for several tasks (``reach``, ``push``, ``pick_place``) takes ``task=`` from
``make_robot``; a plain factory is a reach-only type.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

from agents import robot as robot_mod
from agents import safety, validation
from topics import plugins

__all__ = [
    "ENTRY_POINTS",
    "RobotFactory",
    "RobotType",
    "make_robot",
    "register_robot",
    "robot_tasks",
    "robot_types",
]

log = logging.getLogger(__name__)

#: Builds an unguarded, unvalidated robot from keyword options (seed, control_hz, cameras…).
RobotFactory = Callable[..., robot_mod.Robot]
#: The entry-point group robot types are discovered in.
ENTRY_POINTS = "user.robots"


@dataclasses.dataclass(frozen=True)
class RobotType:
    """What a ``user.robots`` entry point names: a factory and the tasks it can be set up
    for. ``tasks`` is a tuple, or a function returning one (types that take any
    registered scene task). The factory takes ``task=`` as a keyword option."""

    factory: RobotFactory
    tasks: tuple[str, ...] | Callable[[], tuple[str, ...]]


_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
#: Where the built-ins are declared (``[project.entry-points."user.robots"]``): read when no
#: ``user.robots`` entry point is installed (a source tree that was never installed), so
#: every built-in still registers, from the one list.
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_factories: dict[str, RobotFactory] = {}
_tasks: dict[str, tuple[str, ...] | Callable[[], tuple[str, ...]] | None] = {}
_builtins_loaded = False


def register_robot(
    name: str,
    factory: RobotFactory,
    *,
    tasks: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    replace: bool = False,
) -> None:
    """Make ``name`` buildable by ``make_robot``.

    ``tasks``: the tasks the factory can be set up for (it then takes ``task=``); ``None``
    for a reach-only factory that takes no ``task``. Raises ``ValueError`` for a
    malformed name, or when ``name`` is taken and ``replace`` is false.
    """
    if not _NAME.match(name):
        raise ValueError(f"robot type {name!r} must match {_NAME.pattern}")
    if name in _factories and not replace and _factories[name] is not factory:
        raise ValueError(f"robot type {name!r} is already registered; pass replace=True")
    _factories[name] = factory
    _tasks[name] = tasks


def robot_tasks(name: str) -> tuple[str, ...]:
    """The tasks robot type ``name`` can be set up for; raises ``RobotError`` (one line)
    for an unknown type."""
    _load_builtins()
    if name not in _factories:
        raise _unknown(name)
    tasks = _tasks.get(name)
    if tasks is None:
        return ("reach",)
    return tuple(tasks() if callable(tasks) else tasks)


def robot_types() -> list[str]:
    """The registered type names, sorted."""
    _load_builtins()
    return sorted(_factories)


def make_robot(
    name: str, *, task: str | None = None, validate: bool = True, **options: object
) -> safety.Guarded:
    """Build a robot of type ``name`` set up for ``task`` (default: ``reach`` where the type
    can reach, else the first task it declares), probe it, and wrap it in the safety layer.

    ``options`` go to the type's factory (the simulated arms take ``seed``, ``control_hz``,
    ``cameras``, ``camera_size``, ``max_episode_steps``). With ``validate`` the robot is
    probed as ``agents.validation.validate`` describes. Raises ``RobotError`` (one line)
    for an unknown type, a task the type cannot do, options the factory rejects, or a
    failed probe.
    """
    _load_builtins()
    factory = _factories.get(name)
    if factory is None:
        raise _unknown(name)
    tasks = robot_tasks(name)
    if task is None:
        task = "reach" if "reach" in tasks else tasks[0]
    if task not in tasks:
        raise robot_mod.RobotError(
            f"robot type {name!r} cannot do task {task!r}; it can do: {', '.join(tasks)}")
    if _tasks.get(name) is not None:
        options["task"] = task
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


def _unknown(name: str) -> robot_mod.RobotError:
    known = ", ".join(sorted(_factories)) or "none"
    return robot_mod.RobotError(f"unknown robot type {name!r}; registered types: {known}")


def _load_builtins(*, reload: bool = False) -> None:
    """Register every ``user.robots`` entry point (once; ``reload`` re-reads them)."""
    global _builtins_loaded
    if _builtins_loaded and not reload:
        return
    _builtins_loaded = True
    found = plugins.load(ENTRY_POINTS, reload=reload) or _source_tree_builtins()
    for plugin in found:
        value = plugin.value
        try:
            if isinstance(value, RobotType):
                register_robot(plugin.name, value.factory, tasks=value.tasks, replace=True)
            elif callable(value):
                register_robot(plugin.name, value, replace=True)
            elif plugin.error is None:
                raise ValueError(f"{plugin.target} is neither a RobotType nor a factory")
        except ValueError as exc:
            log.warning("plug-in %s %r from %s skipped: %s", ENTRY_POINTS, plugin.name,
                        plugin.package, exc)


def _source_tree_builtins() -> list[plugins.Plugin]:
    """The built-in robot types as the source tree's ``pyproject.toml`` declares them
    (loaded like entry points); [] without one."""
    try:
        declared = tomllib.loads(_PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINTS]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        importlib.import_module("agents.sim")  # registers the simulated types it imports
        return []
    out = []
    for name, target in declared.items():
        ep = importlib.metadata.EntryPoint(name=name, value=target, group=ENTRY_POINTS)
        out.append(plugins.Plugin(ENTRY_POINTS, name, target, "source tree", ep.load()))
    return out
