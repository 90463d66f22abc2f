"""Plug-ins through Python entry points: how robot types, tasks, reward functions, policy
kinds and algorithms from a lab's own package reach USER.

A package registers its objects in its ``pyproject.toml``, the ecosystem's convention
(pytest and LeRobot plug-ins work the same way)::

    [project.entry-points."user.robots"]
    gripper9 = "mylab.robots:GRIPPER9"        # a robot type (agents.registry.RobotType)

    [project.entry-points."user.rewards"]
    mylab = "mylab.rewards"                   # a module whose @register lines run on import

USER's own built-ins are registered the same way in its ``pyproject.toml``. Each registry
(``agents.registry``, ``agents.sim.tasks``, ``pipeline.rewards``, ``learners``) calls
:func:`load` for its group before a lookup. A plug-in that fails to import is reported in
one log line and skipped — it never crashes the role that looked it up; ``userctl
plugins`` lists every entry point with the package it came from and any error.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import threading

__all__ = ["GROUPS", "Plugin", "discover", "load"]

log = logging.getLogger(__name__)

#: The entry-point groups USER reads, by what they register.
GROUPS: dict[str, str] = {
    "user.robots": "robot types",
    "user.tasks": "tasks (scenes, reset distributions, success rules, experts)",
    "user.rewards": "reward functions (modules with @register lines)",
    "user.policies": "policy kinds (modules with registration lines)",
    "user.algorithms": "learning algorithms (modules with registration lines)",
}


@dataclasses.dataclass(frozen=True)
class Plugin:
    """One entry point and what loading it gave."""

    group: str
    name: str
    #: ``module`` or ``module:attribute``, as the package declares it.
    target: str
    #: ``distribution version`` of the package that declares it.
    package: str
    #: The loaded object (``None`` when loading failed).
    value: object = None
    #: One line saying why loading failed, or ``None``.
    error: str | None = None


_lock = threading.Lock()
_loaded: dict[str, list[Plugin]] = {}


def discover(group: str) -> list[Plugin]:
    """The entry points declared in ``group``, not loaded, sorted by name."""
    out = []
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist
        package = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "?"
        out.append(Plugin(group=group, name=ep.name, target=ep.value, package=package))
    return sorted(out, key=lambda p: (p.name, p.package))


def load(group: str, *, reload: bool = False) -> list[Plugin]:
    """Load every entry point in ``group`` once per process and return them all.

    Never raises for a broken plug-in: its ``Plugin.error`` says why in one line, logged
    once as a warning. ``reload`` re-reads the installed packages (a test that has just
    installed one).
    """
    with _lock:
        if reload or group not in _loaded:
            _loaded[group] = [_load_one(p) for p in discover(group)]
        return list(_loaded[group])


def _load_one(plugin: Plugin) -> Plugin:
    ep = importlib.metadata.EntryPoint(name=plugin.name, value=plugin.target, group=plugin.group)
    try:
        value = ep.load()
    except Exception as exc:  # a plug-in's bug must not crash the role that loads it
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {detail}"[:200]
        log.warning("plug-in %s %r from %s (%s) skipped: %s", plugin.group, plugin.name,
                    plugin.package, plugin.target, error)
        return dataclasses.replace(plugin, error=error)
    return dataclasses.replace(plugin, value=value)
