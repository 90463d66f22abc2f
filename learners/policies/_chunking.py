"""How a robot executes a chunked policy's action chunks (the executor itself is
``agents.chunking.ChunkExecutor``, per robot, without torch).

A chunked policy predicts H actions at once; robots turn the chunks into one action per
control step in one of two ways:

* ``chunk`` — run ``execute_steps`` actions of a chunk open-loop, then ask for a new one
  (ACT's and Diffusion Policy's receding horizon);
* ``ensemble`` — ask for a chunk every step and execute the weighted mean of every live
  chunk's prediction for this step, weights ``exp(-decay * age)`` with the oldest
  prediction weighted most (ACT's temporal ensembling, Zhao et al. 2023, "Learning
  Fine-Grained Bimanual Manipulation with Low-Cost Hardware").

The executor drops queued actions at an episode's start, after a takeover (they were
planned for a state the human has since left), and when the policy version changes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkExecution:
    """How a robot executes a chunked policy's chunks (module docstring)."""

    horizon: int
    mode: str = "ensemble"
    execute_steps: int = 0
    """``chunk`` mode: actions run per chunk (0: the whole chunk)."""
    decay: float = 0.1
    """``ensemble`` mode: weight exp(-decay * age), the oldest prediction first."""
