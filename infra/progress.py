"""Live progress of an experiment, derived from its events, and the report it leaves.

:class:`Progress` folds rewarded transition batches, heartbeats and learner metrics of
one experiment into what a researcher watches: steps/s, episodes and success rate per
robot type, policy version and its lag, buffer size.  An episode succeeded if the reward
function said ``success`` at any of its steps — the learner's rule too (its stop condition
and the demo's agree).  :func:`write_report` turns the same numbers
into ``runs/<experiment>/``: ``curves.png`` (success rate per robot type against
environment steps, each marked where it first met the target), ``curves.csv``,
``summary.json`` and ``README.md``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learners.outcomes import EpisodeOutcomes
from schemas import events as ev
from schemas.experiment import StopSpec
from schemas.transitions import RewardedTransitionBatch

#: Steps over which the live intervention rate is taken.
INTERVENTION_WINDOW = 1000


@dataclass
class TypeStats:
    """One robot type's record in an experiment."""

    steps: int = 0
    episodes: int = 0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=50))
    #: (seconds since start, env steps of this type, success rate over the window)
    curve: list[tuple[float, int, float]] = field(default_factory=list)
    #: Steps a human (takeover device) chose, and (seconds, env steps, fraction of the
    #: last ``INTERVENTION_WINDOW`` steps that were interventions) per batch.
    interventions: int = 0
    intervention_curve: list[tuple[float, int, float]] = field(default_factory=list)
    _recent_flags: deque[tuple[int, int]] = field(default_factory=deque)

    def intervention_rate(self) -> float | None:
        steps = sum(n for n, _ in self._recent_flags)
        return sum(k for _, k in self._recent_flags) / steps if steps else None

    @property
    def success_rate(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    def first_reached(self, target: float, episodes: int) -> tuple[float, int, float] | None:
        """The curve's first point (seconds since start, env steps of this type, success
        rate) at ``target`` or more over at least ``episodes`` episodes (the stop rule's)."""
        for i, point in enumerate(self.curve):
            if i + 1 >= episodes and point[2] >= target:
                return point
        return None


class Progress:
    """Everything the live view and the report show, for one experiment."""

    def __init__(self, experiment_id: str, *, window: int = 50,
                 started: float | None = None) -> None:
        self.experiment_id = experiment_id
        self.window = window
        self.started = time.time() if started is None else started
        self.types: dict[str, TypeStats] = {}
        self.metrics: dict[str, float | None] = {}
        self.policy_version = 0
        self.learner_step = 0
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self._outcomes = EpisodeOutcomes()

    def _type(self, robot_type: str) -> TypeStats:
        if robot_type not in self.types:
            self.types[robot_type] = TypeStats(recent=deque(maxlen=self.window))
        return self.types[robot_type]

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.types.values())

    def on_rewarded(self, batch: RewardedTransitionBatch, now: float | None = None) -> None:
        if batch.event.experiment_id != self.experiment_id:
            return
        now = time.time() if now is None else now
        stats = self._type(batch.event.robot_type)
        stats.steps += len(batch)
        took = int(np.count_nonzero(batch.intervention))
        stats.interventions += took
        stats._recent_flags.append((len(batch), took))
        while sum(n for n, _ in stats._recent_flags) - stats._recent_flags[0][0] \
                >= INTERVENTION_WINDOW:
            stats._recent_flags.popleft()
        if stats.interventions:
            rate = stats.intervention_rate()
            assert rate is not None
            stats.intervention_curve.append((now - self.started, stats.steps, rate))
        for outcome in self._outcomes.feed_batch(batch):
            stats.episodes += 1
            stats.recent.append(outcome)
            rate = stats.success_rate
            assert rate is not None
            stats.curve.append((now - self.started, stats.steps, rate))
        self._rate.append((now, self.steps))

    def on_metrics(self, event: ev.LearnerMetricsV1) -> None:
        if event.experiment_id.split(".")[0] != self.experiment_id:
            return
        self.metrics.update(event.metrics)
        self.policy_version = max(self.policy_version, event.policy_version)
        self.learner_step = max(self.learner_step, event.learner_step)

    @property
    def steps_per_s(self) -> float:
        if len(self._rate) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def stop_reason(self, stop: StopSpec, robot_types: tuple[str, ...],
                    now: float | None = None) -> str | None:
        """Why the experiment should stop now, or None to go on."""
        now = time.time() if now is None else now
        targets = stop.target_robot_types or robot_types
        reached = [
            t for t in targets
            if (s := self.types.get(t)) is not None and len(s.recent) >= min(
                stop.success_window, self.window) and (s.success_rate or 0) >= stop.target_success
        ]
        if targets and len(reached) == len(targets):
            return (f"target success {stop.target_success:.0%} reached by "
                    f"{', '.join(targets)}")
        if stop.max_env_steps is not None and self.steps >= stop.max_env_steps:
            return f"{self.steps} environment steps (limit {stop.max_env_steps})"
        if stop.max_wall_s is not None and now - self.started >= stop.max_wall_s:
            return f"time bound of {stop.max_wall_s:.0f} s reached"
        return None

    def reached(self, stats: TypeStats, stop: StopSpec) -> tuple[float, int, float] | None:
        """When ``stats``' type first met ``stop``'s target (the rule of :meth:`stop_reason`)."""
        return stats.first_reached(stop.target_success, min(stop.success_window, self.window))

    def summary(self, stop: StopSpec | None = None) -> dict[str, object]:
        """The numbers of the report; with ``stop``, when each type first met its target
        (``target_reached``: seconds since start and env steps of the type, or None)."""
        return {
            "experiment": self.experiment_id,
            "wall_s": round(time.time() - self.started, 1),
            "env_steps": self.steps,
            "policy_version": self.policy_version,
            "learner_step": self.learner_step,
            "robot_types": {
                name: {"steps": s.steps, "episodes": s.episodes,
                       "success_rate": s.success_rate,
                       "interventions": s.interventions,
                       "intervention_rate_recent": s.intervention_rate(),
                       "best_success_rate": max((c[2] for c in s.curve), default=None),
                       **({} if stop is None else {"target_reached": (
                           None if (at := self.reached(s, stop)) is None
                           else {"wall_s": round(at[0], 1), "env_steps": at[1]})})}
                for name, s in sorted(self.types.items())
            },
            "learner_metrics": self.metrics,
        }


def metric(values: dict[str, float | None], *names: str) -> float | None:
    """The first of ``names`` the learner reported (metric names are namespaced)."""
    for name in names:
        value = values.get(name)
        if value is not None:
            return value
    for key, value in values.items():
        if value is not None and any(key.endswith(n.split("/")[-1]) for n in names):
            return value
    return None


def render(progress: Progress, fleet_rows: list[list[str]], stop: StopSpec) -> str:
    """The live view: fleet table, then learning."""
    lines = [f"USER demo — experiment {progress.experiment_id} — "
             f"{time.time() - progress.started:.0f} s", ""]
    if fleet_rows:
        widths = [max(len(r[i]) for r in fleet_rows) for i in range(len(fleet_rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in fleet_rows]
        lines.append("")
    lines.append(f"{'ROBOT TYPE':12s} {'STEPS':>8s} {'EPISODES':>9s} {'SUCCESS':>8s}  "
                 f"REACHED {stop.target_success:.0%}")
    for name, s in sorted(progress.types.items()):
        rate = "-" if s.success_rate is None else f"{s.success_rate:.0%}"
        at = progress.reached(s, stop)
        when = "-" if at is None else f"at {at[1]} steps, {at[0]:.0f} s"
        lines.append(f"{name:12s} {s.steps:8d} {s.episodes:9d} {rate:>8s}  {when}")
    m = progress.metrics
    lag = metric(m, "replay/version_lag_mean")
    size = metric(m, "replay/size")
    ups = metric(m, "charts/updates_per_s")
    lines += [
        "",
        f"env steps/s {progress.steps_per_s:7.1f}   policy version {progress.policy_version}"
        f"   lag {'-' if lag is None else f'{lag:.1f}'}"
        f"   buffer {'-' if size is None else f'{size:.0f}'}"
        f"   updates/s {'-' if ups is None else f'{ups:.1f}'}",
        f"stops at {stop.target_success:.0%} success"
        + (f" or after {stop.max_wall_s:.0f} s" if stop.max_wall_s else "")
        + "   (Ctrl-C stops everything)",
    ]
    return "\n".join(lines)


def plot_interventions(progress: Progress, path: Path) -> bool:
    """Plot the intervention rate per robot type against env steps (a falling rate: the
    policy is taking over); nothing is written when no step was an intervention."""
    curves = {n: s.intervention_curve for n, s in progress.types.items()
              if s.intervention_curve}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    for name, curve in sorted(curves.items()):
        ax.plot([c[1] for c in curve], [100 * c[2] for c in curve], label=name)
    ax.set_xlabel("environment steps of the robot type")
    ax.set_ylabel(f"interventions, last {INTERVENTION_WINDOW} steps (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{progress.experiment_id}: takeovers (falling = the policy takes over)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(progress: Progress, out: Path, *, reason: str,
                 stop: StopSpec) -> Path:
    """Write curves.png, curves.csv, summary.json and README.md under ``out``; returns
    ``out``. Each type's curve is marked where it first met the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    # Against each type's env steps (robot time) and against wall-clock minutes (what the
    # demo's time bound counts); each curve marked where it first met the target.
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for i, (name, s) in enumerate(sorted(progress.types.items())):
        if not s.curve:
            continue
        rates = [100 * c[2] for c in s.curve]
        line, = by_steps.plot([c[1] for c in s.curve], rates,
                              label=f"{name} ({s.episodes} episodes)")
        by_time.plot([c[0] / 60 for c in s.curve], rates, color=line.get_color(), label=name)
        if (at := progress.reached(s, stop)) is not None:
            for ax, x, text in ((by_steps, at[1], f"{at[1]} steps"),
                                (by_time, at[0] / 60, f"{at[0]:.0f} s")):
                ax.plot([x], [100 * at[2]], marker="o", color=line.get_color())
                ax.annotate(text, (x, 100 * at[2]), textcoords="offset points",
                            xytext=(4, -12 - 10 * i), fontsize=8, color=line.get_color())
    for ax in (by_steps, by_time):
        ax.axhline(100 * stop.target_success, color="grey", linestyle="--", linewidth=1,
                   label=f"target {stop.target_success:.0%}")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    if stop.max_wall_s is not None:
        by_time.axvline(stop.max_wall_s / 60, color="black", linestyle=":", linewidth=1,
                        label=f"time bound {stop.max_wall_s / 60:.0f} min")
        by_time.legend(loc="upper left", fontsize=8)
    by_steps.set_xlabel("environment steps of the robot type")
    by_steps.set_ylabel(f"success rate, last {progress.window} episodes (%)")
    by_time.set_xlabel("minutes since the start")
    fig.suptitle(f"{progress.experiment_id}: learning curves per robot type")
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    plt.close(fig)
    took_over = plot_interventions(progress, out / "interventions.png")

    with (out / "curves.csv").open("w") as f:
        f.write("robot_type,wall_s,env_steps,success_rate\n")
        for name, s in sorted(progress.types.items()):
            f.writelines(f"{name},{t:.1f},{n},{r:.4f}\n" for t, n, r in s.curve)
    summary = {**progress.summary(stop), "stopped_because": reason}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = []
    for name, stats in sorted(progress.types.items()):
        rate = "-" if stats.success_rate is None else f"{stats.success_rate:.0%}"
        at = progress.reached(stats, stop)
        when = "not reached" if at is None else f"{at[1]} env steps, {at[0]:.0f} s"
        lines.append(f"| {name} | {stats.steps} | {stats.episodes} | {rate} | {when} |")
    rows = "\n".join(lines)
    (out / "README.md").write_text(
        f"# {progress.experiment_id}\n\n"
        f"Stopped because: {reason}, after {summary['wall_s']} s and "
        f"{summary['env_steps']} environment steps; policy version "
        f"{summary['policy_version']}.\n\n"
        "| robot type | env steps | episodes | success (last "
        f"{progress.window}) | reached {stop.target_success:.0%} at |\n"
        f"|---|---:|---:|---:|---:|\n{rows}\n\n"
        "![learning curves](curves.png)\n\n"
        + ("![intervention rate](interventions.png)\n\n" if took_over else "")
        + "Everything it produced stays inspectable: `userctl history`, "
        f"`userctl tail transitions --robot …`, `userctl experiments show "
        f"{progress.experiment_id}`, `infra/bin/kafka-*`.\n"
    )
    return out
