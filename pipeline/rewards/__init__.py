"""Reward functions: pure, vectorised ``TransitionBatch -> Rewards``, named ``name@version``.

A reward function is the one role this package defines for stream jobs (STYLE §1)::

    @rewards.register("reach_dense", "1", needs=("ee_pos", "goal_pos"))
    def reach_dense(batch: TransitionBatch) -> Rewards:
        ...

    fn = rewards.lookup("reach_dense@1")
    rewarded = rewards.apply(fn, raw_batch)   # a RewardedTransitionBatch

A version is immutable: once rows carrying ``name@version`` exist, change the code only
by registering a new version next to the old one (``userctl replay EXP --reward
name@2`` back-fills it over the history).  Built-ins live in :mod:`pipeline.rewards.reach`;
``pipeline/README.md`` shows how to add one.
"""

from pipeline.rewards._registry import (
    PLUGIN_MODULES,
    Registered,
    RewardError,
    RewardFn,
    Rewards,
    apply,
    available,
    lookup,
    register,
)

__all__ = [
    "PLUGIN_MODULES",
    "Registered",
    "RewardError",
    "RewardFn",
    "Rewards",
    "apply",
    "available",
    "lookup",
    "register",
]
