"""Episode outcomes as the learner and the demo's report count them (numpy only, no torch:
``infra.progress`` uses it in the watching process).

An episode succeeded if the reward function said ``success`` at any of its steps and no
human took over at any of them — the policy's own success: a rescued episode is a failure
of the policy, so the stop condition (``stop.target_success``) and the curves measure the
policy, not the operator.  The end of an episode is its truncated or terminated row,
possibly in a later batch than its successes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from schemas.transitions import RewardedTransitionBatch


class EpisodeOutcomes:
    """Follows open episodes across batches; ``max_open`` bounds the ones whose end never
    came (oldest forgotten first)."""

    def __init__(self, max_open: int = 10_000) -> None:
        self._succeeded: dict[tuple[str, str], None] = {}
        self._taken: dict[tuple[str, str], None] = {}
        self._max_open = max_open

    def feed(self, robot_id: npt.ArrayLike, episode_id: npt.ArrayLike, success: npt.ArrayLike,
             intervention: npt.ArrayLike | None, ended: npt.ArrayLike) -> list[bool]:
        """The outcomes of the episodes that end in these rows (all (n,): robot and
        episode ids, the reward's success, the human flag or None, truncated | terminated),
        in row order."""
        robots, episodes = np.asarray(robot_id).astype(str), np.asarray(episode_id).astype(str)

        def keys(rows: npt.ArrayLike) -> list[tuple[str, str]]:
            idx = np.flatnonzero(rows)
            return list(zip(robots[idx].tolist(), episodes[idx].tolist(), strict=True))

        self._succeeded.update(dict.fromkeys(keys(success)))
        if intervention is not None:
            self._taken.update(dict.fromkeys(keys(intervention)))
        out = []
        for k in keys(ended):
            out.append(k in self._succeeded and k not in self._taken)
            self._succeeded.pop(k, None)
            self._taken.pop(k, None)
        for open_ in (self._succeeded, self._taken):
            while len(open_) > self._max_open:  # episodes whose end never came
                del open_[next(iter(open_))]
        return out

    def feed_batch(self, batch: RewardedTransitionBatch) -> list[bool]:
        """:meth:`feed` with one robot's rewarded batch (``transitions``)."""
        return self.feed(np.full(len(batch), batch.event.robot_id), batch.episode_id,
                         batch.success, batch.intervention, batch.truncated | batch.terminated)
