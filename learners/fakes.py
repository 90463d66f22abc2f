"""Fakes for testing learners without robots, MuJoCo, Kafka or Delta.

:class:`PointMassReach` is a vectorised pure-numpy task that emits the same
:class:`~learners.core.StepBatch` rows (robot, episode, step, …) agents publish, so the
buffer's episode stitching is exercised as it is in production.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learners.core import StepBatch
from learners.policies import PolicySpec


@dataclass(frozen=True)
class PointMassConfig:
    """A 2-D point moved by velocity commands towards a random goal."""

    num_envs: int = 4
    """independent points (the fake's "robots")."""
    max_step: float = 0.1
    """distance moved per step at full action (actions lie in [-1, 1]^2)."""
    success_radius: float = 0.1
    """the episode succeeds and terminates once the point is this close to the goal."""
    max_episode_steps: int = 50
    """steps before the episode is truncated."""
    seed: int = 0
    """seeds starts and goals."""


class PointMassReach:
    """Observation ``(x, y, goal_x - x, goal_y - y)``, action a velocity, reward -distance.

    Points and goals are drawn uniformly from [-1, 1]^2; positions are clipped to it.
    Episodes end by success (``terminated``) or time limit (``truncated``, with the final
    observation in ``next_observation``); ended points reset at once.
    """

    spec = PolicySpec(
        observation_dim=4, action_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0)
    )

    def __init__(self, config: PointMassConfig | None = None) -> None:
        self.config = config = config or PointMassConfig()
        self._rng = np.random.default_rng(config.seed)
        n = config.num_envs
        self._pos = np.zeros((n, 2))
        self._goal = np.zeros((n, 2))
        self._step = np.zeros(n, dtype=np.int64)
        self._episode = np.zeros(n, dtype=np.int64)
        self._next_episode = 0
        self.successes: list[bool] = []
        """outcome of every finished episode, in finishing order."""
        self._reset(np.ones(n, dtype=bool))

    @property
    def observation(self) -> np.ndarray:
        """Current observations, (num_envs, 4) float32."""
        return np.concatenate([self._pos, self._goal - self._pos], axis=1).astype(np.float32)

    def step(self, action: np.ndarray, policy_version: int = 0) -> StepBatch:
        """Apply one action per point; returns the steps taken, one row per point."""
        cfg = self.config
        obs = self.observation
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._pos = np.clip(self._pos + cfg.max_step * action, -1.0, 1.0)
        distance = np.linalg.norm(self._goal - self._pos, axis=1)
        terminated = distance < cfg.success_radius
        truncated = ~terminated & (self._step + 1 >= cfg.max_episode_steps)
        steps = StepBatch(
            robot_id=np.arange(cfg.num_envs),
            episode_id=self._episode.copy(),
            step=self._step.copy(),
            observation=obs,
            action=action.astype(np.float32),
            reward=(-distance).astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            policy_version=np.full(cfg.num_envs, policy_version, dtype=np.int64),
            next_observation=self.observation,
        )
        self._step += 1
        ended = terminated | truncated
        self.successes.extend(terminated[ended].tolist())
        self._reset(ended)
        return steps

    def _reset(self, which: np.ndarray) -> None:
        k = int(which.sum())
        self._pos[which] = self._rng.uniform(-1.0, 1.0, size=(k, 2))
        self._goal[which] = self._rng.uniform(-1.0, 1.0, size=(k, 2))
        self._step[which] = 0
        self._episode[which] = self._next_episode + np.arange(k)
        self._next_episode += k
