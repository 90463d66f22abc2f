"""`userctl history compare E1 E2 …` — success of several experiments side by side.

From the Delta ``transitions`` table (one reward function's view), per experiment: every
episode in the order it ended, the experiment's environment steps and wall-clock seconds
at that moment, and the success rate over the last ``--window`` episodes.  An episode
succeeded if the reward function said ``success`` at any of its steps (the learner's
rule).  Prints a summary per experiment and writes one PNG with two panels — success vs
environment steps and vs wall clock — e.g. async vs sync, per-type vs shared policy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import history

#: One row per episode of the chosen experiments, in the order they ended.
EPISODES_BY_END = """
WITH ep AS (
  SELECT experiment_id, robot_id, episode_id, bool_or(success) AS success,
         count(*) AS steps, min(observed_ns) AS first_ns, max(observed_ns) AS end_ns
  FROM transitions
  WHERE list_contains($experiments, experiment_id) AND reward_fn = $reward_fn
  GROUP BY experiment_id, robot_id, episode_id)
SELECT experiment_id, success, steps,
       CAST(sum(steps) OVER (PARTITION BY experiment_id ORDER BY end_ns
                             ROWS UNBOUNDED PRECEDING) AS BIGINT) AS env_steps,
       (end_ns - min(first_ns) OVER (PARTITION BY experiment_id)) / 1e9 AS wall_s
FROM ep ORDER BY experiment_id, end_ns
"""


@dataclass
class Series:
    """One experiment's success curve."""

    experiment: str
    env_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    wall_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    success_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    success: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def episodes(self) -> int:
        return len(self.success)


def series(root: Path, experiments: list[str], reward_fn: str, window: int
           ) -> list[Series]:
    """Each experiment's curve (an empty one for an experiment without episodes)."""
    table = history.sql(root, EPISODES_BY_END,
                        {"experiments": experiments, "reward_fn": reward_fn})
    out = []
    names = np.asarray(table.column("experiment_id").to_pylist()) if table.num_rows else \
        np.zeros(0, str)
    for name in experiments:
        mask = names == name
        s = Series(name)
        if mask.any():
            s.success = np.asarray(table.column("success").to_numpy(zero_copy_only=False),
                                   bool)[mask]
            s.env_steps = table.column("env_steps").to_numpy()[mask]
            s.wall_s = table.column("wall_s").to_numpy()[mask]
            s.success_rate = rolling_mean(s.success, window)
        out.append(s)
    return out


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    x = np.asarray(values, float)
    total = np.cumsum(x)
    shifted = np.concatenate([np.zeros(window), total])[: len(x)]
    counts = np.minimum(np.arange(1, len(x) + 1), window)
    mean: np.ndarray = (total - shifted) / counts
    return mean


def plot(curves: list[Series], out: Path, *, reward_fn: str, window: int) -> Path:
    """Both panels on one figure, one line per experiment; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    for s in curves:
        if s.episodes == 0:
            continue
        label = f"{s.experiment} ({s.episodes} episodes)"
        by_steps.plot(s.env_steps, 100 * s.success_rate, label=label)
        by_time.plot(s.wall_s / 60, 100 * s.success_rate, label=label)
    by_steps.set_xlabel("environment steps of the experiment")
    by_time.set_xlabel("wall clock since the experiment's first step (min)")
    by_steps.set_ylabel(f"success rate, last {window} episodes (%)")
    for ax in (by_steps, by_time):
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    by_steps.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"success vs steps and vs wall clock ({reward_fn})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def register(hsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``compare`` under ``userctl history``."""
    s = hsub.add_parser("compare", help="success vs env steps and vs wall clock of several "
                                        "experiments, printed and plotted (PNG)")
    s.add_argument("experiments", nargs="+", metavar="EXPERIMENT")
    s.add_argument("--reward", default="reach_dense@1", metavar="NAME@VERSION")
    s.add_argument("--window", type=int, default=50, help="episodes per success rate")
    s.add_argument("-o", "--out", type=Path, default=None,
                   help="PNG to write (default runs/compare-<E1>-vs-….png)")
    s.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    import duckdb

    from infra.broker import REPO
    from pipeline import sink

    if args.window < 1:
        raise SystemExit("userctl history compare: --window must be at least 1")
    root = args.root or sink.SinkSettings().root
    try:
        curves = series(root, list(dict.fromkeys(args.experiments)), args.reward, args.window)
    except duckdb.Error as exc:
        raise SystemExit(f"userctl history compare: {str(exc).splitlines()[0]} "
                         f"(is there a transitions table under {root}?)") from None
    empty = [s.experiment for s in curves if s.episodes == 0]
    if len(empty) == len(curves):
        raise SystemExit(f"userctl history compare: no episodes of {', '.join(empty)} with "
                         f"reward {args.reward} under {root}")
    rows = [["EXPERIMENT", "EPISODES", "ENV STEPS", "WALL", "FINAL SUCCESS", "BEST",
             "STEPS TO 50%"]]
    for s in curves:
        if s.episodes == 0:
            rows.append([s.experiment, "0", "-", "-", "-", "-", "-"])
            continue
        reached = np.flatnonzero((s.success_rate >= 0.5)
                                 & (np.arange(s.episodes) + 1 >= min(args.window, s.episodes)))
        rows.append([s.experiment, str(s.episodes), str(int(s.env_steps[-1])),
                     f"{s.wall_s[-1] / 60:.1f} min", f"{s.success_rate[-1]:.0%}",
                     f"{s.success_rate.max():.0%}",
                     str(int(s.env_steps[reached[0]])) if len(reached) else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    out = args.out or REPO / "runs" / ("compare-" + "-vs-".join(args.experiments)[:150] + ".png")
    plot(curves, out, reward_fn=args.reward, window=args.window)
    print(f"plot: {out}")
    if empty:
        print(f"(no episodes for {', '.join(empty)})")
    return 0
