"""Executing a chunked policy's action chunks on one robot, one control step at a time.

The execution modes (``chunk``: open loop for ``execute_steps``; ``ensemble``: ACT's
temporal ensembling, Zhao et al. 2023) are described with the policy side's
``learners.policies.ChunkExecution``; this module holds no torch, so an agent that only
replays chunks from a remote inference service does not load it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["ChunkExecutor", "Execution"]

#: observation -> (H, action_dim) chunk, for one robot.
ChunkFn = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]


class Execution(Protocol):
    """What :class:`ChunkExecutor` needs to know (``learners.policies.ChunkExecution``)."""

    @property
    def mode(self) -> str: ...
    @property
    def execute_steps(self) -> int: ...
    @property
    def decay(self) -> float: ...


class ChunkExecutor:
    """One robot's queue of planned actions (module docstring)."""

    def __init__(self) -> None:
        self._queue: deque[npt.NDArray[np.float32]] = deque()
        self._live: list[tuple[int, npt.NDArray[np.float32]]] = []  # (age, chunk)
        self._key: object = None

    def reset(self) -> None:
        self._queue.clear()
        self._live.clear()

    def next(self, chunk_fn: ChunkFn, observation: npt.NDArray[np.floating],
             execution: Execution, key: object = None) -> npt.NDArray[np.float32]:
        """The action to execute now.  ``key`` (e.g. the policy version) resets the
        queue when it changes."""
        if key != self._key:
            self.reset()
            self._key = key
        if execution.mode == "chunk":
            if not self._queue:
                chunk = np.asarray(chunk_fn(observation), np.float32)
                steps = execution.execute_steps or len(chunk)
                self._queue.extend(chunk[:max(1, min(steps, len(chunk)))])
            return self._queue.popleft()
        chunk = np.asarray(chunk_fn(observation), np.float32)
        self._live = [(age + 1, c) for age, c in self._live if age + 1 < len(c)]
        self._live.append((0, chunk))
        # The oldest live chunk predicted this step first: weight it most (ACT).
        preds = np.stack([c[age] for age, c in self._live])
        weights = np.exp(-execution.decay * np.arange(len(self._live)))  # oldest first
        mean: npt.NDArray[np.float32] = ((weights[:, None] * preds).sum(0)
                                         / weights.sum()).astype(np.float32)
        return mean
