"""What the pipeline costs in learning (issue 17 §8): the same robots, algorithm,
hyper-parameters and seed, once through the whole pipeline and once in one process.

* **pipeline** — a Kafka broker of the benchmark's own (free ports, its own state
  directory: no other experiment, controller or topic reaches it) and ``userctl demo``
  with a topology of its own: controller, reward job, learner and one agent hosting
  ``--robots`` reacher2d robots.  Steps go agent → Kafka (``transitions.raw``) → reward
  job → Kafka (``transitions``) → learner, and weights come back over Kafka (chunks,
  manifest, verified and swapped in by the agent).  No sink: the learner reads live steps
  from Kafka; the sink serves warm starts and history only.
* **in-process** — ``bench async-sync``'s asynchronous harness: the same robots (same
  seeds, same random-policy seeds), reward function and learner loop (SAC, the same spec)
  in one process, weights swapped in directly.

Reported for each: env steps and wall clock to the target success rate (or the rate
reached when the time bound came first), the learner's real updates-to-data ratio
(updates ÷ env steps at the end), and the policy-version lag of what robots ran (the
newest published version when a step was observed minus the version that acted; for the
pipeline from the ``transitions`` and ``weights.manifests`` topics after the run).  The
pipeline row also gives the time from ``userctl demo`` start (broker up, topics made) to
the learner's first update (learner metrics, every second here).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from infra.bench import async_sync, report

HELP = "env steps to target through the whole pipeline vs the same SAC in one process"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robots", type=int, default=4, help="reacher2d robots (default 4)")
    p.add_argument("--max-wall-s", type=float, default=600.0, help="time bound per mode")
    p.add_argument("--target", type=float, default=0.8, help="target success rate")
    p.add_argument("--window", type=int, default=40, help="episodes the rate is over")
    p.add_argument("--utd", type=float, default=1.0, help="updates per env step (cap)")
    p.add_argument("--hidden", type=int, default=64, help="MLP width (two layers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="pipeline,in-process", help="which modes, in order")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true")


@dataclass
class Outcome:
    mode: str
    wall_s: float = 0.0
    env_steps: int = 0
    updates: int = 0
    reached_s: float | None = None
    reached_steps: int | None = None
    final_rate: float | None = None
    lags: list[int] = field(default_factory=list)
    first_update_s: float | None = None
    note: str = ""
    rss_mb: dict[str, float] = field(default_factory=dict)
    """pipeline: peak RSS per role (VmHWM, sampled every 2 s)"""

    @property
    def utd(self) -> float:
        return self.updates / self.env_steps if self.env_steps else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _async_args(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(
        robots=args.robots, max_wall_s=args.max_wall_s, target=args.target,
        window=args.window, round_steps=400, utd=args.utd, hidden=args.hidden,
        seed=args.seed, modes="async", paper=False, image_size=64, hz=None,
        batch_size=None, out=args.out, no_write=True)


def run_in_process(args: argparse.Namespace) -> Outcome:
    import torch

    # As the pipeline's learner (USER_LEARN_TORCH_THREADS=1 in its topology): on a busy
    # machine a second intra-op thread makes each update wait for a descheduled peer.
    torch.set_num_threads(1)
    result = async_sync.run_async(_async_args(args))
    return Outcome("in-process", result.wall_s, result.env_steps, result.updates,
                   result.reached_at_s, result.reached_at_steps, result.final_rate,
                   list(result.lags))


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


def _role_peaks(root: int, peaks: dict[str, float]) -> None:
    """Fold the peak RSS of every ``userctl <role>`` under ``root`` into ``peaks`` (MB)."""
    for pid in _descendants(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        at = next((i for i, w in enumerate(words) if w.endswith(("userctl", "infra.cli"))),
                  None)
        if at is None or at + 1 >= len(words):
            continue
        role = words[at + 1]
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[role] = max(peaks.get(role, 0.0), int(line.split()[1]) / 1024)


def _lags(kafka: object, experiment: str) -> tuple[list[int], float | None, int]:
    """(per-step version lag, produced_at of the first learner update, updates) read back
    from the pipeline's topics."""
    from schemas import events as ev
    from schemas.transitions import RewardedTransitionBatch
    from topics import catalog
    from topics.follow import Follower
    from topics.settings import KafkaSettings
    from topics.validation import Accepted

    assert isinstance(kafka, KafkaSettings)
    follower = Follower(kafka, {catalog.TRANSITIONS: "beginning",
                                catalog.WEIGHTS_MANIFESTS: "beginning",
                                catalog.LEARNER_METRICS: "beginning"}, role="bench-cost")
    try:
        items, _ = follower.read_to_end(120.0)
    finally:
        follower.close()
    published: list[tuple[int, int]] = []  # (produced_ns, version)
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    first_update: float | None = None
    updates = 0
    for item in items:
        if not isinstance(item, Accepted):
            continue
        event = item.event
        if isinstance(event, ev.WeightsManifestV1) and event.experiment_id.startswith(
                experiment):
            published.append((int(event.produced_at.timestamp() * 1e9), event.version))
        elif isinstance(event, RewardedTransitionBatch) and (
                event.event.experiment_id == experiment):
            steps.append((np.asarray(event.observed_ns), np.asarray(event.policy_version)))
        elif isinstance(event, ev.LearnerMetricsV1) and event.experiment_id.startswith(
                experiment):
            updates = max(updates, event.learner_step)
            if event.learner_step > 0:
                at = event.produced_at.timestamp()
                first_update = at if first_update is None else min(first_update, at)
    published.sort()
    times = [t for t, _ in published]
    newest = np.maximum.accumulate([v for _, v in published]) if published else np.array([])
    lags: list[int] = []
    for observed, version in steps:
        for t, v in zip(observed.tolist(), version.tolist(), strict=True):
            i = bisect.bisect_right(times, t)
            lags.append(max(int(newest[i - 1]) - int(v), 0) if i else 0)
    return lags, first_update, updates


def run_pipeline(args: argparse.Namespace, tmp: Path) -> Outcome:
    from infra.broker import Broker, BrokerSettings
    from topics import admin
    from topics.settings import KafkaSettings

    spec = async_sync.experiment(_async_args(args), "async")
    name = f"bench-cost-{time.strftime('%Y%m%d-%H%M%S')}"
    raw = spec.model_dump(mode="json")
    raw.update(name=name, reward="reach_dense@1")
    raw["robots"] = [{"robot_type": "reacher2d", "count": args.robots, "sites": ["lab-a"]}]
    raw["stop"] = {**raw["stop"], "max_wall_s": args.max_wall_s}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp / "topology.yaml").write_text(yaml.safe_dump({
        "name": "bench-cost",
        "env": {"OMP_NUM_THREADS": "1", "USER_LEARN_TORCH_THREADS": "1",
                "USER_LEARN_METRICS_S": "1", "USER_AGENT_FLUSH_MS": "250"},
        "roles": {
            "controller": {"userctl": ["controller"]},
            "rewards": {"userctl": ["rewards", "run", "reach_dense@1"]},
            "learner": {"userctl": ["learn", name]},
            "agent": {"userctl": ["agent", "--robot-type", "reacher2d", "--site", "lab-a",
                                  "--count", str(args.robots), "--seed", str(args.seed)]},
        }}, sort_keys=False))
    libs = Broker(BrokerSettings()).ensure_jars()
    broker = Broker(BrokerSettings(home=tmp / "kafka", libs=libs, port=_free_port(),
                                   controller_port=_free_port(), heap="512m",
                                   offsets_partitions=3))
    broker.start()
    try:
        kafka = KafkaSettings(bootstrap=broker.settings.bootstrap)
        admin.ensure_topics(kafka)
        env = {**os.environ, "USER_KAFKA_BOOTSTRAP": kafka.bootstrap,
               "USER_HOME": str(tmp / "home")}
        started = time.time()
        peaks: dict[str, float] = {}
        with open(tmp / "demo.log", "w") as log_file:
            demo = subprocess.Popen(
                [str(Path(sys.executable).parent / "userctl"), "demo",
                 "--experiment", str(tmp / "spec.yaml"),
                 "--topology", str(tmp / "topology.yaml"), "--name", name,
                 "--max-wall-s", str(args.max_wall_s), "--runs", str(tmp / "runs")],
                env=env, stdout=log_file, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + args.max_wall_s + 600
            while demo.poll() is None and time.monotonic() < deadline:
                _role_peaks(demo.pid, peaks)
                time.sleep(2.0)
            if demo.poll() is None:
                demo.kill()
        summary_path = tmp / "runs" / name / "summary.json"
        if not summary_path.exists():
            raise RuntimeError(f"the demo wrote no summary (rc {demo.returncode}): "
                               f"{(tmp / 'demo.log').read_text()[-2000:]}")
        summary = json.loads(summary_path.read_text())
        lags, first_update, updates = _lags(kafka, name)
    finally:
        broker.stop()
    typ = summary["robot_types"].get("reacher2d", {})
    reached = typ.get("target_reached") or {}
    return Outcome(
        "pipeline", float(summary["wall_s"]), int(summary["env_steps"]),
        max(updates, int(summary.get("learner_step") or 0)), reached.get("wall_s"),
        reached.get("env_steps"), typ.get("success_rate"), lags,
        None if first_update is None else first_update - started,
        note=str(summary.get("stopped_because", "")), rss_mb=peaks)


def _fmt(value: float | None, unit: str = "") -> str:
    return "not reached" if value is None else f"{value:,.0f}{unit}"


def _lag(lags: list[int]) -> str:
    if not lags:
        return "-"
    arr = np.asarray(lags)
    return f"{arr.mean():.1f} / {np.percentile(arr, 50):.0f} / {np.percentile(arr, 99):.0f}"


def run(args: argparse.Namespace) -> int:
    load = os.getloadavg()
    results: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="user-bench-cost-") as tmp:
        for mode in args.modes.split(","):
            print(f"running {mode} (up to {args.max_wall_s:.0f} s)…", flush=True)
            r = run_pipeline(args, Path(tmp)) if mode == "pipeline" else run_in_process(args)
            results[mode] = r
            print(f"{mode}: {r.env_steps} env steps, {r.updates} updates, target "
                  f"{_fmt(r.reached_steps)} steps / {_fmt(r.reached_s, ' s')}, lag "
                  f"{_lag(r.lags)} {r.note}", flush=True)
    lines = ["## Pipeline learning cost: whole pipeline vs one process", ""]
    lines += report.machine_lines()
    lines += [
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in load)} (1/5/15 min)",
        f"- what: {args.robots} simulated reacher2d robots at 20 Hz real time (seeds "
        f"{args.seed}…), reach_dense@1, SAC {args.hidden}×2, UTD cap {args.utd:g}, batch "
        f"256, warm-up 1,000 steps, seed {args.seed}; target {args.target:.0%} success "
        f"over the last {args.window} episodes; time bound {args.max_wall_s:.0f} s per "
        "mode. pipeline: a private broker + `userctl demo` (controller, reward job, "
        "learner, one agent; no sink); in-process: `bench async-sync`'s async harness",
        "",
        "| mode | env steps to target | wall to target | env steps | wall | learner "
        "updates | real UTD | version lag mean / p50 / p99 | success at the end | first "
        "update after start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        lines.append(
            f"| {r.mode} | {_fmt(r.reached_steps)} | {_fmt(r.reached_s, ' s')} | "
            f"{r.env_steps:,} | {r.wall_s:,.0f} s | {r.updates:,} | {r.utd:.2f} | "
            f"{_lag(r.lags)} | "
            f"{'-' if r.final_rate is None else f'{r.final_rate:.0%}'} | "
            f"{'-' if r.first_update_s is None else f'{r.first_update_s:.0f} s'} |")
    if results.get("pipeline") and results["pipeline"].rss_mb:
        lines += ["", "Peak RSS per role of the pipeline run (VmHWM, MB): " + ", ".join(
            f"{role} {mb:,.0f}" for role, mb in sorted(results["pipeline"].rss_mb.items()))
            + "."]
    if {"pipeline", "in-process"} <= set(results):
        p, i = results["pipeline"], results["in-process"]
        if p.reached_steps and i.reached_steps:
            lines += ["", f"**Env steps to target, pipeline ÷ in-process: "
                      f"{p.reached_steps / i.reached_steps:.2f}×** (target ≤ 1.2×)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        report.write_section("pipeline-cost", text, args.out)
    return 0
