"""Asynchronous vs synchronous learning, same code, same machine, side by side.

Both modes run the same parts in one process: K simulated ``reacher2d`` robots driven by
:class:`agents.worker.RobotWorker` at their real-time control rate, the ``reach_dense@1``
reward function, and :class:`learners.loop.Learner` (SAC, the experiment spec's
hyper-parameters) with weights swapped into the robots as published versions.

* **sync** — collect ``--round-steps`` environment steps, then train (as many updates as
  the update-to-data ratio allows), then publish weights, in turn: robots wait while the
  learner trains and the learner waits while robots collect.
* **async** — robots run on their own thread and never wait; the learner trains on
  whatever has arrived and publishes every ``weight_sync.every_updates`` updates.

``--paper`` (issue 17 §7) shapes the workload like the paper's CNN + SAC setup: robots at
10 Hz rendering an ``overhead`` camera, the ``cnn_gaussian`` policy (a conv encoder +
256×2 heads), so an update costs what a pixel update costs; the asynchronous learner
trains whenever it has data (UTD cap at the schema's maximum, 64: never the limit), the
synchronous one ``--utd`` updates per collected step, robots waiting meanwhile.

Reported per mode: learner updates/s over the run, wall-clock and environment steps to
the target success rate (over the last ``--window`` episodes), or the rate reached when
the time bound came first.  Kafka and Delta are not involved: this isolates the
scheduling effect, as the paper's per-update comparison does.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents import pacing, registry
from agents.policies import FramesPolicy, PolicyFn, RandomPolicy
from agents.worker import Lease, RobotWorker
from infra.bench import report
from learners import policies
from learners.loop import Learner, Steps
from learners.outcomes import EpisodeOutcomes
from learners.policies import PolicySpec
from learners.weights_sync import PublisherStats, Snapshot
from pipeline import rewards
from schemas.experiment import ExperimentSpec
from schemas.transitions import TransitionBatch
from topics import catalog, serde

HELP = "async vs sync learning on simulated reachers: updates/s and time to target success"
PAPER = {"CNN + SAC": 4.61, "π0": 5.70}
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robots", type=int, default=4, help="reacher2d robots (default 4)")
    p.add_argument("--max-wall-s", type=float, default=420.0, help="time bound per mode")
    p.add_argument("--target", type=float, default=0.8, help="target success rate")
    p.add_argument("--window", type=int, default=40, help="episodes the rate is over")
    p.add_argument("--round-steps", type=int, default=400,
                   help="sync mode: env steps collected per round")
    p.add_argument("--utd", type=float, default=1.0, help="updates per env step (cap)")
    p.add_argument("--hidden", type=int, default=64, help="MLP width (two layers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="async,sync", help="which modes, in order")
    p.add_argument("--paper", action="store_true",
                   help="paper-shaped workload: camera images, cnn_gaussian, 10 Hz robots")
    p.add_argument("--image-size", type=int, default=64, help="--paper: camera side (px)")
    p.add_argument("--hz", type=float, default=None,
                   help="robots' control rate (default: theirs, 20 Hz; --paper: 10 Hz)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="SAC batch (default 256; --paper: 128)")
    p.add_argument("--skip-probe", action="store_true",
                   help="build robots without their start-up timing probe (an overloaded "
                        "machine fails it; the run's missed periods show in env steps/s)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true")


#: --paper: the asynchronous learner's UTD cap (the schema's maximum: never the limit).
PAPER_ASYNC_UTD = 64.0


def experiment(args: argparse.Namespace, mode: str = "sync") -> ExperimentSpec:
    paper = getattr(args, "paper", False)
    batch = getattr(args, "batch_size", None) or (128 if paper else 256)
    utd = PAPER_ASYNC_UTD if paper and mode == "async" else args.utd
    raw: dict[str, object] = {
        "name": "bench-async-sync",
        "robots": [{"robot_type": "reacher2d", "count": args.robots}],
        "algorithm": {"name": "sac", "utd_ratio": utd, "batch_size": batch,
                      "warmup_steps": 200 if paper else 1000, "seed": args.seed},
        "policy": {"kind": "mlp_gaussian", "hidden": [args.hidden, args.hidden]},
        "buffer": {"memory_budget_mb": 256},
        "weight_sync": {"every_updates": 100, "every_s": 2.0},
        "stop": {"target_success": args.target, "success_window": args.window},
    }
    if paper:
        raw["policy"] = {"kind": "cnn_gaussian", "hidden": [256, 256]}
        raw["observation"] = {"cameras": ["overhead"],
                              "image_size": [args.image_size, args.image_size]}
        raw["weight_sync"] = {"every_updates": 20, "every_s": 2.0}
    return ExperimentSpec.model_validate(raw)


class LocalPublisher:
    """Weights 'published' by building the policy in this process (no transport)."""

    def __init__(self, spec: PolicySpec, on_version: Callable[[PolicyFn, int], None]) -> None:
        self.stats = PublisherStats()
        self._spec = spec
        self._on_version = on_version
        self._version = 0

    @property
    def published_version(self) -> int:
        return self._version

    def publish(self, snapshot: Snapshot) -> None:
        policy = policies.build(snapshot.kind, self._spec, dict(snapshot.options))
        policy.load_weights(snapshot.tensors)
        self._version += 1
        self.stats.published += 1
        version = self._version

        def act(obs: np.ndarray) -> np.ndarray:
            return np.asarray(policy.act(obs[None, :])[0])

        def act_on_frames(obs: np.ndarray, images: Mapping[str, np.ndarray] | None
                          ) -> np.ndarray:
            frames = {c: img[None] for c, img in (images or {}).items()}
            return np.asarray(policy.act(obs[None, :], images=frames)[0])

        self._on_version(FramesPolicy(act_on_frames) if policy.cameras else act, version)


class MemorySink:
    """What workers send: raw batches kept for the reward function; the rest dropped."""

    def __init__(self) -> None:
        self.batches: deque[TransitionBatch] = deque()
        self.lock = threading.Lock()

    def send(self, spec: catalog.TopicSpec, payload: serde.Payload, *,
             over_budget: bool = False) -> None:
        if isinstance(payload, TransitionBatch):
            with self.lock:
                self.batches.append(payload)

    def take(self) -> list[TransitionBatch]:
        with self.lock:
            out = list(self.batches)
            self.batches.clear()
        return out


@dataclass
class Result:
    mode: str
    wall_s: float = 0.0
    updates: int = 0
    env_steps: int = 0
    reached_at_s: float | None = None
    reached_at_steps: int | None = None
    final_rate: float | None = None
    versions: int = 0
    episodes: int = 0
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=40))
    lags: list[int] = field(default_factory=list)
    """per step: the newest published version when it was scored minus the one that acted"""

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.wall_s if self.wall_s else 0.0


class Harness:
    """Robots, rewards and a learner of one mode, wired in one process."""

    def __init__(self, args: argparse.Namespace, mode: str) -> None:
        torch.manual_seed(args.seed)
        self.args = args
        self.spec = experiment(args, mode)
        self.result = Result(mode, recent=deque(maxlen=args.window))
        self.sink = MemorySink()
        self.outcomes = EpisodeOutcomes()
        self.reward = rewards.lookup("reach_dense@1")
        options: dict[str, Any] = {}
        if getattr(args, "paper", False):
            options = {"cameras": ("overhead",),
                       "camera_size": (args.image_size, args.image_size)}
        hz = getattr(args, "hz", None) or (10.0 if getattr(args, "paper", False) else None)
        if hz:
            options["control_hz"] = hz
        validate = not getattr(args, "skip_probe", False)
        robots = [registry.make_robot("reacher2d", seed=args.seed + i, validate=validate,
                                      **options)
                  for i in range(args.robots)]
        self.hz = robots[0].spec.control_hz
        self.policy_spec = PolicySpec.from_robot_spec(robots[0].spec)
        # The seeds an agent gives its robots and their random policies (agents.agent).
        randoms = [RandomPolicy(r.spec.action, seed=args.seed + 1000 + i)
                   for i, r in enumerate(robots)]
        self.current: tuple[PolicyFn, int] | None = None
        self.lock = threading.Lock()
        self.workers = [
            RobotWorker(r, robot_id=f"bench-{i}", site="lab-a", sink=self.sink,
                        policy=self._policy_source(randoms[i]), flush_steps=25,
                        flush_s=60.0)
            for i, r in enumerate(robots)
        ]
        self.lease = Lease(self.spec.name, "bench")
        self.learner = Learner(self.spec, lambda _t: self.policy_spec, self._publisher)
        self.learner.open_known()
        self.started = time.monotonic()

    def _policy_source(self, fallback: PolicyFn) -> Callable[[], tuple[PolicyFn, int]]:
        def current() -> tuple[PolicyFn, int]:
            with self.lock:
                return self.current or (fallback, 0)
        return current

    def _publisher(self, stream: str) -> tuple[LocalPublisher, int]:
        def swap(act: PolicyFn, version: int) -> None:
            with self.lock:
                self.current = (act, version)
            self.result.versions = version
        return LocalPublisher(self.policy_spec, swap), 0

    def tick_robots(self) -> None:
        for w in self.workers:
            w.tick(self.lease, [])

    def feed(self) -> int:
        """Score what robots sent and hand it to the learner; track episode success."""
        n = 0
        for raw in self.sink.take():
            rewarded = rewards.apply(self.reward, raw)
            self.result.lags.extend(
                (self.result.versions - np.asarray(rewarded.policy_version)).tolist())
            self.learner.add(Steps.of_batch(rewarded), "live")
            n += len(rewarded)
            for outcome in self.outcomes.feed_batch(rewarded):
                self.result.episodes += 1
                self.result.recent.append(outcome)
        self.result.env_steps += n
        return n

    def rate(self) -> float | None:
        r = self.result.recent
        return sum(r) / len(r) if len(r) >= r.maxlen else None  # type: ignore[operator]

    def check_target(self) -> bool:
        rate = self.rate()
        if rate is not None and rate >= self.args.target and self.result.reached_at_s is None:
            self.result.reached_at_s = time.monotonic() - self.started
            self.result.reached_at_steps = self.result.env_steps
        return self.result.reached_at_s is not None

    def finish(self) -> Result:
        self.result.wall_s = time.monotonic() - self.started
        self.result.updates = self.learner.update_step
        self.result.final_rate = self.rate()
        for w in self.workers:
            w.robot.close()
        return self.result


def run_sync(args: argparse.Namespace) -> Result:
    h = Harness(args, "sync")
    pacer = pacing.Pacer(h.hz)
    per_round = max(1, args.round_steps // args.robots)
    while time.monotonic() - h.started < args.max_wall_s and not h.check_target():
        pacer.restart()
        for _ in range(per_round):  # collect: the learner waits
            h.tick_robots()
            pacer.wait()
        for w in h.workers:
            w.flush()
        h.feed()
        while h.learner.train_round():  # train: the robots wait
            if time.monotonic() - h.started >= args.max_wall_s:
                break
        h.learner.publish_all()  # sync weights, then collect again
    return h.finish()


def run_async(args: argparse.Namespace) -> Result:
    h = Harness(args, "async")
    stop = threading.Event()
    every = h.spec.weight_sync.every_updates

    def learn() -> None:
        last_published = 0
        try:
            while (time.monotonic() - h.started < args.max_wall_s and not h.check_target()
                   and not stop.is_set()):
                h.feed()
                if not h.learner.train_round():
                    time.sleep(0.005)  # the UTD cap is reached: new data is on its way
                if h.learner.update_step - last_published >= every:
                    h.learner.publish_all()
                    last_published = h.learner.update_step
        finally:
            stop.set()

    # The robots run on this (main) thread: MuJoCo's EGL cameras render only on the thread
    # that made them; the learner trains on its own thread and never waits for them.
    thread = threading.Thread(target=learn, name="learner", daemon=True)
    thread.start()
    pacer = pacing.Pacer(h.hz)
    try:
        while not stop.is_set():
            h.tick_robots()
            pacer.wait()
    finally:
        stop.set()
        thread.join(timeout=60)
    return h.finish()


def _fmt(value: float | None, unit: str = "") -> str:
    return "not reached" if value is None else f"{value:,.0f}{unit}"


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    if args.paper:  # torch.optim's first use imports triton, which segfaults once
        # MuJoCo's EGL renderer exists: make an optimiser step before any camera renders.
        w = torch.zeros(1, requires_grad=True)
        torch.optim.Adam([w]).step()
    results: dict[str, Result] = {}
    for mode in args.modes.split(","):
        print(f"running {mode} (up to {args.max_wall_s:.0f} s)…", flush=True)
        results[mode] = (run_async if mode == "async" else run_sync)(args)
        r = results[mode]
        print(f"{mode}: {r.updates_per_s:.1f} updates/s, {r.env_steps} env steps, "
              f"target at {_fmt(r.reached_at_s, ' s')}, final rate "
              f"{'-' if r.final_rate is None else f'{r.final_rate:.0%}'}", flush=True)
    section = "async-sync-paper" if args.paper else "async-sync"
    lines = ["## Async vs sync learning" + (", paper-shaped (CNN + SAC on images, 10 Hz)"
                                            if args.paper else ""), ""]
    lines += report.machine_lines()
    lines.append(f"- load average at start: "
                 f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min)")
    hz = args.hz or (10 if args.paper else 20)
    if args.paper:
        spec = experiment(args)
        lines.append(
            f"- what: {args.robots} simulated reacher2d robots at {hz:g} Hz real time, each "
            f"rendering an `overhead` camera {args.image_size}×{args.image_size}, "
            f"reach_dense@1, SAC with cnn_gaussian (conv encoder, 256×2 heads), batch "
            f"{spec.algorithm.batch_size}, one process, no Kafka/Delta; sync: rounds of "
            f"{args.round_steps} env steps then {args.utd:g} update per collected step, "
            f"robots waiting; async: the learner trains whenever it has data (UTD cap "
            f"{PAPER_ASYNC_UTD:g}, never reached), robots never wait; target "
            f"{args.target:.0%} success over the last {args.window} episodes; time bound "
            f"{args.max_wall_s:.0f} s per mode")
    else:
        lines.append(
            f"- what: {args.robots} simulated reacher2d robots at {hz:g} Hz real time, "
            f"reach_dense@1, SAC {args.hidden}×2, UTD cap {args.utd:g}, one process, no "
            f"Kafka/Delta; sync rounds of {args.round_steps} env steps; target "
            f"{args.target:.0%} success over the last {args.window} episodes; time bound "
            f"{args.max_wall_s:.0f} s per mode")
    lines += [
        "",
        "| mode | learner updates/s | env steps/s | env steps | weight versions | "
        "wall-clock to target | env steps to target | success at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        lines.append(
            f"| {r.mode} | {r.updates_per_s:.1f} | "
            f"{r.env_steps / r.wall_s if r.wall_s else 0:.1f} | {r.env_steps:,} | "
            f"{r.versions} | {_fmt(r.reached_at_s, ' s')} | {_fmt(r.reached_at_steps)} | "
            f"{'-' if r.final_rate is None else f'{r.final_rate:.0%}'} |")
    if {"async", "sync"} <= set(results):
        a, s = results["async"], results["sync"]
        speedup = a.updates_per_s / s.updates_per_s if s.updates_per_s else float("nan")
        lines += ["", f"**Per-update speed-up of async over sync: {speedup:.2f}×** "
                  f"(paper: {PAPER['CNN + SAC']}× CNN + SAC, {PAPER['π0']}× π0)."]
        if a.reached_at_s and s.reached_at_s:
            lines.append(f"Wall-clock to {args.target:.0%} success: "
                         f"{s.reached_at_s / a.reached_at_s:.2f}× faster async.")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        report.write_section(section, text, args.out)
    return 0
