"""Learning on the manipulators: env steps to the target success, per task and robot type.

Each run wires, in one process, simulated robots of the asked types driven by
:class:`agents.worker.RobotWorker`, the task's reward function, and
:class:`learners.loop.Learner` with the **experiment spec's defaults** (what a new user
gets without touching a hyper-parameter). Robots are stepped as fast as the CPU allows in
rounds of ``--round-steps`` env steps, then the learner trains up to its UTD cap and
publishes: the figure is env steps (robot time), not wall-clock, so it does not depend on
how busy the machine is. Kafka and Delta are not involved (the async-sync and learner
benchmarks measure those parts).

Runs (``--runs``, comma separated):

* ``reach-arm7``, ``reach-panda`` — 4 robots, ``reach_dense@1``; target 90 % over the
  last 50 episodes within 30,000 env steps.
* ``push-panda`` — 4 Pandas, ``push_dense@2``; target 70 % within 150,000 env steps.
* ``cotrain-per-type``, ``cotrain-shared`` — 2 Pandas + 2 UR5e on reach, one policy per
  type vs one shared policy (``policy.shared_across_types``); the shared one should need
  at most 1.5× the env steps of the per-type one.
* ``reach-fetch``, ``lift-gym-hil`` — third-party suites through the same robot interface
  (``make suites``): gymnasium-robotics' FetchReach (4 robots, ``reach_dense@1``, 90 %
  within 30,000) and gym-hil's Panda pick-cube (4 robots, ``lift_dense@1`` — the suite's
  own dense reward —, 70 % within 100,000). ``reach-metaworld``, ``push-metaworld`` —
  Meta-World v3's Sawyer ``reach-v3`` / ``push-v3`` (4 robots, 500-step episodes, USER's
  reach/push rules = the suite's 5 cm success; 90 % within 100,000 / 70 % within 150,000
  with ``push_dense@2``). Not in the default ``--runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents import registry, safety, validation
from agents import robot as robot_mod
from agents.policies import PolicyFn, RandomPolicy
from agents.worker import Lease, RobotWorker
from infra.bench import report
from infra.bench.async_sync import LocalPublisher, MemorySink
from learners.loop import Learner, Steps
from learners.outcomes import EpisodeOutcomes
from learners.policies import PolicySpec
from pipeline import rewards
from schemas.experiment import ExperimentSpec

HELP = "learning on Panda/UR5e/arm7: env steps to the target success (reach, push, co-training)"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: which robots, which task and reward, what counts as done."""

    robots: tuple[tuple[str, int], ...]
    task: str
    reward: str
    target: float
    budget_steps: int
    shared: bool = False


RUNS: dict[str, RunSpec] = {
    "reach-arm7": RunSpec((("arm7", 4),), "reach", "reach_dense@1", 0.9, 30_000),
    "reach-panda": RunSpec((("panda", 4),), "reach", "reach_dense@1", 0.9, 30_000),
    "push-panda": RunSpec((("panda", 4),), "push", "push_dense@2", 0.7, 150_000),
    "cotrain-per-type": RunSpec((("panda", 2), ("ur5e", 2)), "reach", "reach_dense@1",
                                0.9, 30_000),
    "cotrain-shared": RunSpec((("panda", 2), ("ur5e", 2)), "reach", "reach_dense@1",
                              0.9, 30_000, shared=True),
    # Third-party suites (the suites' venv: `make suites`).
    "reach-fetch": RunSpec((("fetch", 4),), "reach", "reach_dense@1", 0.9, 30_000),
    "lift-gym-hil": RunSpec((("gym_hil_panda", 4),), "lift", "lift_dense@1", 0.7, 100_000),
    "reach-metaworld": RunSpec((("metaworld_sawyer", 4),), "reach", "reach_dense@1", 0.9,
                               100_000),
    "push-metaworld": RunSpec((("metaworld_sawyer", 4),), "push", "push_dense@2", 0.7,
                              150_000),
    "pick-place-metaworld": RunSpec((("metaworld_sawyer", 4),), "pick_place_air",
                                    "pick_place_air_dense@1", 0.7, 150_000),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default="reach-arm7,reach-panda,cotrain-per-type,cotrain-shared,"
                   "push-panda", help=f"which runs, in order ({', '.join(RUNS)})")
    p.add_argument("--window", type=int, default=50, help="episodes the success rate is over")
    p.add_argument("--round-steps", type=int, default=200,
                   help="env steps collected (all robots together) between training rounds")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap every run at this many env steps (default: each run's budget)")
    p.add_argument("--max-wall-s", type=float, default=None, help="time bound per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where SAC trains (robots always step on the CPU)")
    p.add_argument("--reward", default=None,
                   help="reward NAME@VERSION instead of each run's (e.g. push_dense@2)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE",
                   help="override an experiment-spec field, dotted, value as JSON "
                        "(e.g. algorithm.utd_ratio=2, algorithm.batch_size=512); repeatable")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results (and this machine's lines) to this JSON file")
    p.add_argument("--from-json", type=Path, nargs="+", default=None,
                   help="run nothing: write the section from results other runs saved with "
                        "--json (runs spread over processes or machines)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true")


def experiment(name: str, run: RunSpec, seed: int,
               overrides: Sequence[str] = ()) -> ExperimentSpec:
    """The spec a user would submit for this run: defaults everywhere but the task (and
    the ``--set FIELD=VALUE`` overrides, dotted paths into the spec, values as JSON)."""
    policy: dict[str, object] = {"shared_across_types": True} if run.shared else {}
    raw: dict[str, Any] = {
        "name": f"bench-{name}",
        "task": run.task,
        "robots": [{"robot_type": t, "count": n} for t, n in run.robots],
        "reward": run.reward,
        "algorithm": {"seed": seed},
        "policy": policy,
    }
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value: object = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return ExperimentSpec.model_validate(raw)


@dataclass
class Result:
    name: str
    run: RunSpec
    env_steps: int = 0
    updates: int = 0
    wall_s: float = 0.0
    reached_at: dict[str, int] = field(default_factory=dict)
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    variant: str = ""
    """what differs from the defaults besides the reward (``--set``, ``--device``)."""

    @property
    def reached_all(self) -> int | None:
        """Env steps when the last robot type reached the target (None: not all did)."""
        types = [t for t, _ in self.run.robots]
        if all(t in self.reached_at for t in types):
            return max(self.reached_at[t] for t in types)
        return None


def _robot(robot_type: str, task: str, seed: int) -> safety.Guarded:
    """A robot as an agent builds it, probed for what its spec announces but not for its
    pace: the benchmark steps robots unpaced, so a loaded machine (a 17 ms gym-hil step took
    297 ms at load 15) must not fail a run on the real-time budget."""
    robot = registry.make_robot(robot_type, task=task, seed=seed, validate=False)
    try:
        validation.validate(robot, time_budget=math.inf)
    except robot_mod.RobotError:
        robot.close()
        raise
    return robot


def learn(name: str, run: RunSpec, *, window: int, round_steps: int, max_steps: int | None,
          max_wall_s: float | None, seed: int,
          on_progress: Callable[[Result], None] | None = None, device: str = "cpu",
          overrides: Sequence[str] = ()) -> Result:
    """Run one benchmark to its target or budget; the success rate is per robot type over
    the last ``window`` episodes (an episode succeeds if the reward said so at any step).
    ``device``: where SAC's networks train (``cuda``: a GPU; the robots step on the CPU)."""
    torch.manual_seed(seed)
    spec = experiment(name, run, seed, overrides)
    reward = rewards.lookup(run.reward)
    robots = [_robot(t, run.task, seed + 10 * k + i)
              for k, (t, n) in enumerate(run.robots) for i in range(n)]
    policy_specs = {r.spec.robot_type: PolicySpec.from_robot_spec(r.spec) for r in robots}
    current: dict[str, tuple[PolicyFn, int]] = {}

    def source(robot_type: str, fallback: PolicyFn) -> Callable[[], tuple[PolicyFn, int]]:
        return lambda: current.get(robot_type) or (fallback, 0)

    def publisher_for(stream: str) -> tuple[LocalPublisher, int]:
        robot_type = stream.rsplit(".", 1)[-1]

        def swap(act: PolicyFn, version: int) -> None:
            current[robot_type] = (act, version)
        return LocalPublisher(policy_specs[robot_type], swap), 0

    sink = MemorySink()
    workers = [
        RobotWorker(r, robot_id=f"bench-{r.spec.robot_type}-{i}", site="lab-a", sink=sink,
                    policy=source(r.spec.robot_type,
                                  RandomPolicy(r.spec.action, seed=seed + 100 + i)),
                    flush_steps=25, flush_s=3600.0)
        for i, r in enumerate(robots)
    ]
    lease = Lease(spec.name, "bench")
    learner = Learner(spec, policy_specs.get, publisher_for, device=device)
    learner.open_known()
    outcomes = EpisodeOutcomes()
    recent: dict[str, deque[bool]] = defaultdict(lambda: deque(maxlen=window))
    variant = "; ".join([*overrides, *([f"SAC on {device}"] if device != "cpu" else [])])
    result = Result(name, run, seed=seed, variant=variant)
    budget = run.budget_steps if max_steps is None else max_steps
    started = time.monotonic()
    per_round = max(1, round_steps // len(workers))
    while result.env_steps < budget:
        if max_wall_s is not None and time.monotonic() - started > max_wall_s:
            break
        for _ in range(per_round):
            for w in workers:
                w.tick(lease, [])
        for w in workers:
            w.flush()
        for raw in sink.take():
            rewarded = rewards.apply(reward, raw)
            learner.add(Steps.of_batch(rewarded), "live")
            result.env_steps += len(rewarded)
            robot_type = raw.event.robot_type
            for outcome in outcomes.feed_batch(rewarded):
                recent[robot_type].append(outcome)
        while learner.train_round():
            pass
        learner.publish_all()
        rates = {t: sum(q) / len(q) for t, q in recent.items() if len(q) == window}
        result.curve.append((result.env_steps, rates))
        for t, rate in rates.items():
            if rate >= run.target and t not in result.reached_at:
                result.reached_at[t] = result.env_steps
        if on_progress is not None:
            on_progress(result)
        if result.reached_all is not None:
            break
    result.wall_s = time.monotonic() - started
    result.updates = learner.update_step
    result.final = {t: sum(q) / len(q) for t, q in recent.items() if q}
    for w in workers:
        w.robot.close()
    return result


def _fmt_steps(value: int | None) -> str:
    return "not reached" if value is None else f"{value:,}"


def _curve_text(result: Result, points: int = 8) -> str:
    curve = [(s, r) for s, r in result.curve if r]
    if not curve:
        return "-"
    picks = [curve[int(i)] for i in np.linspace(0, len(curve) - 1, min(points, len(curve)))]
    return ", ".join(f"{s / 1000:.0f}k: " + "/".join(f"{v:.0%}" for v in r.values())
                     for s, r in picks)


class _Progress:
    """Prints a run's progress every 30 s (and calls ``save`` then: partial results)."""

    def __init__(self, save: Callable[[Result], None] | None = None) -> None:
        self.last = time.monotonic()
        self.save = save

    def __call__(self, r: Result) -> None:
        if time.monotonic() - self.last > 30:
            self.last = time.monotonic()
            print(f"  {r.env_steps:,} steps, {r.curve[-1][1]}", flush=True)
            if self.save is not None:
                self.save(r)


def _to_json(r: Result) -> dict[str, object]:
    return {"name": r.name, "seed": r.seed, "reward": r.run.reward, "variant": r.variant,
            "env_steps": r.env_steps, "updates": r.updates,
            "wall_s": r.wall_s, "reached_at": r.reached_at, "final": r.final,
            "curve": [[s, rates] for s, rates in r.curve if rates]}


def _of_json(raw: dict[str, Any]) -> Result:
    run = RUNS[raw["name"]]
    run = dataclasses.replace(run, reward=raw.get("reward", run.reward))
    return Result(raw["name"], run, raw["env_steps"], raw["updates"],
                  raw["wall_s"], dict(raw["reached_at"]),
                  [(int(s), dict(rates)) for s, rates in raw["curve"]], dict(raw["final"]),
                  int(raw.get("seed", 0)), str(raw.get("variant", "")))


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        saved = [json.loads(p.read_text()) for p in args.from_json]
        merged = [_of_json(r) for doc in saved for r in doc["results"]]
        commands = [line for doc in saved for line in doc["machine"]
                    if line.startswith("- command:")]
        machine = [line for line in saved[0]["machine"] if not line.startswith("- command:")]
        if len(commands) > 1:
            machine.append(f"- commands: {len(commands)} processes side by side, one per run "
                           "and seed, each `userctl bench manipulators --runs RUN --seed SEED "
                           "--json FILE` (+ `--max-wall-s` where shown below); merged with "
                           "`--from-json`")
        machine += sorted({"  " + c for c in commands})
        return _write(args, merged, machine)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("userctl bench manipulators: --device cuda, but torch sees no CUDA "
                         "device here")
    torch.set_num_threads(1)
    command = ["userctl", "bench", "manipulators", "--runs", args.runs, "--seed", str(args.seed)]
    if args.max_wall_s is not None:
        command += ["--max-wall-s", f"{args.max_wall_s:g}"]
    if args.device != "cpu":
        command += ["--device", args.device]
    if args.reward is not None:
        command += ["--reward", args.reward]
    for item in args.overrides:
        command += ["--set", item]
    machine = report.machine_lines(command)
    if args.device == "cuda":
        machine.append(f"- learner: SAC on {torch.cuda.get_device_name(0)} (torch "
                       f"{torch.__version__}); robots step on the CPU")
    results: list[Result] = []

    def save(partial: Result | None = None) -> None:
        """The results so far (a run in progress too) to ``--json``: a process stopped
        from outside still leaves its curve."""
        if args.json is not None:
            done = results + ([partial] if partial is not None else [])
            args.json.write_text(json.dumps({"machine": machine,
                                             "results": [_to_json(r) for r in done]}))

    for name in args.runs.split(","):
        spec = RUNS[name]
        if args.reward is not None:
            spec = dataclasses.replace(spec, reward=args.reward)
        print(f"running {name} (up to {spec.budget_steps:,} env steps, {spec.reward}, "
              f"SAC on {args.device})…", flush=True)
        r = learn(name, spec, window=args.window, round_steps=args.round_steps,
                  max_steps=args.max_steps, max_wall_s=args.max_wall_s, seed=args.seed,
                  on_progress=_Progress(save), device=args.device, overrides=args.overrides)
        results.append(r)
        print(f"{name}: target at {_fmt_steps(r.reached_all)} env steps; final "
              f"{r.final}; {r.updates} updates in {r.wall_s:.0f} s "
              f"({r.env_steps / max(r.wall_s, 1e-9):.0f} env steps/s)", flush=True)
    save()
    return _write(args, results, machine)


def _write(args: argparse.Namespace, results: list[Result], machine: list[str]) -> int:
    lines = ["## Learning on manipulators (`userctl bench manipulators`)", ""]
    lines += machine
    lines += [
        "- what: in one process, no Kafka/Delta; robots stepped unpaced in rounds of "
        f"{args.round_steps} env steps, then SAC trains to its UTD cap; the experiment "
        "spec's defaults (SAC, 256×256 MLP, UTD 1, batch 256, 1,000 warm-up steps); "
        f"success rate per robot type over the last {args.window} episodes",
        "",
        "| run | seed | robots | task, reward | target | budget | env steps run (wall) | "
        "env steps to target | success at the end | curve (env steps: success) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        robots = " + ".join(f"{n}× {t}" for t, n in r.run.robots)
        final = "/".join(f"{v:.0%}" for v in r.final.values()) or "-"
        lines.append(
            f"| {r.name}{f' ({r.variant})' if r.variant else ''} | {r.seed} | {robots} | "
            f"{r.run.task}, {r.run.reward} | "
            f"{r.run.target:.0%} | {r.run.budget_steps:,} | {r.env_steps:,} ({r.wall_s:.0f} s) | "
            f"{_fmt_steps(r.reached_all)} | {final} | "
            f"{_curve_text(r)} |")
    per_type = [r for r in results if r.name == "cotrain-per-type"]
    shared = [r for r in results if r.name == "cotrain-shared"]
    if per_type and shared:
        def steps(rs: list[Result]) -> tuple[float, bool]:
            """Mean env steps to target; a run that never reached counts its last step
            (a lower bound), flagged."""
            got = [r.reached_all or r.env_steps for r in rs]
            return sum(got) / len(got), all(r.reached_all for r in rs)
        (a, a_all), (b, b_all) = steps(per_type), steps(shared)
        lines += ["", f"Shared policy vs one policy per type, mean env steps to target: "
                  f"{b:,.0f}{'' if b_all else ' (not all runs reached: at least)'} vs "
                  f"{a:,.0f}{'' if a_all else ' (not all runs reached: at least)'} = "
                  f"{b / a:.2f}×{' or less' if not a_all and b_all else ''} (goal ≤ 1.5×)."]
    lines += ["", "Env steps are robot time and do not depend on the machine; a run stopped by "
              "its time bound (`--max-wall-s`) before reaching the target says `not reached` "
              "with the env steps it ran, a partial curve rather than a result at its budget."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        report.write_section("manipulators", text, args.out)
    return 0
