"""Several robots in one process on one clock — how K simulated robots share 2 cores.

``Lockstep`` steps a list of robots once per control period, one after another on the
calling thread (MuJoCo steps of these small arms take a fraction of a millisecond, so a
thread per robot would cost more in switching than it saves), then waits for the shared
deadline. A period whose work overruns counts as one missed deadline for every robot in
it; ``Lockstep.stats`` is what the fleet benchmark reads. All robots must share one
control rate.

Usage::

    host = Lockstep([make_robot("reacher2d", seed=i) for i in range(4)])
    steps = host.reset([0, 1, 2, 3])
    while True:
        actions = [policy(s.observation) for s in steps]
        steps = host.step(actions)                 # paced to the control rate
        steps = [host.reset_one(i) if s.done else s for i, s in enumerate(steps)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agents import pacing
from agents import robot as robot_mod

__all__ = ["Lockstep"]


class Lockstep:
    """Steps ``robots`` together at their common control rate (module docstring).

    ``realtime=False`` runs as fast as possible (the pacer still counts periods).
    Raises ``ValueError`` for an empty list or mixed control rates.
    """

    def __init__(self, robots: Sequence[robot_mod.Robot], *, realtime: bool = True) -> None:
        if not robots:
            raise ValueError("Lockstep needs at least one robot")
        rates = {r.spec.control_hz for r in robots}
        if len(rates) != 1:
            raise ValueError(f"robots in one Lockstep share one control rate, got {sorted(rates)}")
        self.robots = list(robots)
        self.control_hz = rates.pop()
        self.pacer = pacing.Pacer(self.control_hz if realtime else None)

    def reset(self, seeds: Sequence[int | None] | None = None) -> list[robot_mod.Step]:
        """Reset every robot (``seeds[i]`` for robot i) and restart the clock."""
        seeds = list(seeds) if seeds is not None else [None] * len(self.robots)
        if len(seeds) != len(self.robots):
            raise ValueError(f"{len(seeds)} seeds for {len(self.robots)} robots")
        steps = [r.reset(s) for r, s in zip(self.robots, seeds, strict=True)]
        self.pacer.restart()
        return steps

    def reset_one(self, i: int, seed: int | None = None) -> robot_mod.Step:
        """Reset robot ``i`` inside the current period (its time counts toward it)."""
        return self.robots[i].reset(seed)

    def step(self, actions: Sequence[npt.NDArray[np.floating]]) -> list[robot_mod.Step]:
        """Apply ``actions[i]`` to robot i, then wait for the end of the period."""
        if len(actions) != len(self.robots):
            raise ValueError(f"{len(actions)} actions for {len(self.robots)} robots")
        steps = [r.step(a) for r, a in zip(self.robots, actions, strict=True)]
        self.pacer.wait()
        return steps

    @property
    def stats(self) -> pacing.PacingStats:
        return self.pacer.stats

    def close(self) -> None:
        for r in self.robots:
            r.close()
