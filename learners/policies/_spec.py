"""What a policy knows about its robot (torch-free: agents import it without the networks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import spaces

#: Header metadata keys that make a weights blob self-describing.
KIND_KEY = "policy_kind"
OPTIONS_KEY = "policy_options"


@dataclass(frozen=True)
class PolicySpec:
    """What a policy needs to know about its robot: sizes and action bounds."""

    observation_dim: int
    """length of the flat state observation."""
    action_dim: int
    """length of the flat action."""
    action_low: tuple[float, ...]
    """per-element lower action bound."""
    action_high: tuple[float, ...]
    """per-element upper action bound."""

    def __post_init__(self) -> None:
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(
                f"action bounds have {len(self.action_low)}/{len(self.action_high)} values "
                f"for an action of {self.action_dim}"
            )
        if not all(lo < hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise ValueError(
                f"action_low {self.action_low} not below action_high {self.action_high} everywhere"
            )

    @classmethod
    def from_robot_spec(cls, spec: spaces.RobotSpec) -> PolicySpec:
        """Flatten a robot's observation and action specs.

        Raises ``ValueError`` if the action is unbounded: squashed policies need bounds,
        so give the robot's action spec ``low``/``high``.
        """
        act = spec.action
        if act.low is None or act.high is None:
            raise ValueError(
                f"robot type {spec.robot_type!r} has an unbounded action; set low/high on "
                "its action spec"
            )

        def flat(bound: float | tuple[float, ...]) -> tuple[float, ...]:
            values = np.broadcast_to(np.asarray(bound, dtype=np.float64), (act.size,))
            return tuple(float(v) for v in values)

        return cls(spec.observation.size, act.size, flat(act.low), flat(act.high))


def hidden_sizes_option(options: Mapping[str, Any]) -> tuple[int, ...]:
    """The ``hidden_sizes`` option (default 256x2), validated."""
    raw = options.get("hidden_sizes", [256, 256])
    items = raw if isinstance(raw, list | tuple) else []
    sizes = tuple(n for n in items if isinstance(n, int) and not isinstance(n, bool) and n > 0)
    if not sizes or len(sizes) != len(items):
        raise ValueError(f"hidden_sizes must be a non-empty list of positive ints, got {raw!r}")
    return sizes
