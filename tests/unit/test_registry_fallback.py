"""A source tree that was never installed (no entry points) still has every built-in."""

from __future__ import annotations

import pytest

from agents import registry


def test_without_installed_entry_points_every_built_in_robot_type_registers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.plugins, "load", lambda group, reload=False: [])
    monkeypatch.setattr(registry, "_factories", {})
    monkeypatch.setattr(registry, "_tasks", {})
    registry._load_builtins(reload=True)
    assert set(registry.robot_types()) >= {"reacher2d", "arm7", "panda", "ur5e"}
    assert "pick_place" in registry.robot_tasks("panda")
