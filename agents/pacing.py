"""Real-time pacing: run a loop at a control rate and measure the deadlines it misses.

``Pacer(hz).wait()`` ends each control period. Period k's deadline is ``t0 + (k+1)/hz``;
a period whose work ends after its deadline is *missed*. A late loop does not try to
catch up with a burst of short periods (a robot would jerk): it skips to the next
deadline on the original grid, so the rate stays ``hz`` and the phase is kept.
``Pacer(None)`` runs as fast as possible and never misses.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

__all__ = ["Pacer", "PacingStats"]


@dataclasses.dataclass(frozen=True)
class PacingStats:
    """Counts since the pacer started (or since ``Pacer.restart``)."""

    periods: int
    missed: int
    #: The largest overrun of a deadline, in seconds (0 when none was missed).
    max_lateness_s: float
    elapsed_s: float

    @property
    def missed_fraction(self) -> float:
        return self.missed / self.periods if self.periods else 0.0

    @property
    def rate_hz(self) -> float:
        """Periods per second actually achieved."""
        return self.periods / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Pacer:
    """Ends control periods at ``hz`` (module docstring); ``hz=None`` does not wait.

    ``clock`` and ``sleep`` are injectable so tests can drive a fake clock.
    """

    def __init__(
        self,
        hz: float | None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if hz is not None and not (hz > 0 and math.isfinite(hz)):
            raise ValueError(f"control rate must be a positive number of Hz, not {hz}")
        self.hz = hz
        self.period_s = 0.0 if hz is None else 1.0 / hz
        self._clock = clock
        self._sleep = sleep
        self.restart()

    def restart(self) -> None:
        """Start a new grid now and zero the counts (e.g. after a pause)."""
        self._t0 = self._clock()
        self._slot = 0  # index of the period in progress on the grid
        self._periods = 0
        self._missed = 0
        self._max_late = 0.0

    def wait(self) -> bool:
        """End the current period: sleep until its deadline. Returns False if it was missed."""
        self._periods += 1
        if self.hz is None:
            return True
        now = self._clock()
        deadline = self._t0 + (self._slot + 1) * self.period_s
        if now > deadline:
            self._missed += 1
            self._max_late = max(self._max_late, now - deadline)
            # Next deadline: the first grid point after now.
            self._slot = math.floor((now - self._t0) / self.period_s)
            return False
        self._slot += 1
        # time.sleep overshoots by well under a millisecond on Linux; at 20 Hz that is
        # noise, and the next deadline stays on the grid, so it does not accumulate.
        self._sleep(deadline - now)
        return True

    @property
    def stats(self) -> PacingStats:
        return PacingStats(
            periods=self._periods,
            missed=self._missed,
            max_lateness_s=self._max_late,
            elapsed_s=self._clock() - self._t0,
        )
