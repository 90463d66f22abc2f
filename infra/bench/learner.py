"""Learner throughput: SAC updates/s with weight sync off and on, side by side, and
warm-start rows/s from a Delta history.

**Updates/s.**  Learners of the same experiment (SAC, one robot type, its buffer filled
with synthetic steps so the UTD cap never binds) run the learner's own ``train_round``
for ``--seconds`` per trial; trials of the modes alternate (off, on …, off, on …) so
drift of a shared machine hits every mode alike; updates/s is the median over
``--trials``, and "lost" the median over trials of ``1 - on/off`` of the off trial and
the on trial run right after it (paired, so slow drift cancels).  "off" publishes
nothing; "every N updates or T s" (the experiment spec's ``weight_sync``; the default
is 200 updates or 5 s) snapshots the actor on the training thread and publishes it
through ``learners.weights_sync.WeightsPublisher`` from its background thread — to the
broker's real ``weights`` topics when one answers at ``USER_KAFKA_BOOTSTRAP`` (bandwidth
cap off), else to an in-memory sink (the table says which).

**Warm start.**  A ``transitions`` table in the sink's row format (``pipeline.tables``)
on local disk; timed: reading this experiment's rows at one version with the learner's
Delta adapter, turning them into step arrays, and adding them to the learner's buffer
(dedupe watermark, replay ring, fingerprint, success tracking).  Median of
``--repeats``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from deltalake import write_deltalake

from infra.bench import report
from learners import _history, loop, policies, weights_sync
from learners.loop import Learner, Steps
from learners.weights_sync_kafka import KafkaWeightsSink
from pipeline import tables as sink_tables
from schemas import samples
from schemas.experiment import ExperimentSpec
from schemas.transitions import RewardedTransitionBatch
from topics import tables
from topics.settings import KafkaSettings

HELP = "learner updates/s with weight sync on vs off, and warm-start rows/s from Delta"

OBS_DIM, ACT_DIM = 17, 6
ROBOT = samples.robot_spec(obs_dim=OBS_DIM, act_dim=ACT_DIM, robot_type="bench")
REWARD = "bench@1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", default="256,256;1024,1024",
                   help="network sizes to measure, ';'-separated hidden widths of actor and "
                        "critics")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sync", default="200/5,20/0.5",
                   help="weight-sync modes to compare with off, 'N/T' = publish every N "
                        "updates or T seconds, comma-separated")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one trial")
    p.add_argument("--trials", type=int, default=7, help="trials per mode (median)")
    p.add_argument("--rows", type=int, default=200_000, help="Delta rows for the warm start")
    p.add_argument("--repeats", type=int, default=3, help="warm-start repeats (median)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--memory-sink", action="store_true",
                   help="publish to an in-memory sink even when a broker answers")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH,
                   help="the BENCHMARKS.md to update")
    p.add_argument("--no-write", action="store_true", help="print only")


def experiment(name: str, hidden: tuple[int, ...], batch_size: int, every: int,
               every_s: float = 3600.0) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "name": name, "reward": REWARD, "robots": [{"robot_type": ROBOT.robot_type}],
        "algorithm": {"utd_ratio": 64, "batch_size": batch_size, "warmup_steps": 0},
        "policy": {"hidden": list(hidden)},
        "buffer": {"memory_budget_mb": 256},
        "weight_sync": {"every_updates": every, "every_s": every_s, "bandwidth_mb_s": 1e6},
        "stop": {"target_success": 1.0, "success_window": 1000},
    })


def synthetic_batches(robots: int, batches: int, steps: int, experiment_id: str
                      ) -> list[RewardedTransitionBatch]:
    out = []
    for b in range(batches):
        for r in range(robots):
            raw = samples.batch(ROBOT, steps, rng=b * 1000 + r, robot_id=f"r{r}",
                                experiment_id=experiment_id, first_step=b * steps,
                                episode_len=100, site="lab-a" if r % 2 == 0 else "lab-b")
            out.append(RewardedTransitionBatch.from_raw(
                raw, reward_fn=REWARD, reward=-np.abs(raw.observation[:, 0]),
                success=raw.step == 90, terminated=np.zeros(steps, bool)))
    return out


class _Off:
    """A publisher that publishes nothing: the "sync off" baseline."""

    stats = weights_sync.PublisherStats()
    published_version = 0

    def publish(self, snapshot: weights_sync.Snapshot) -> None:
        pass


@dataclass
class Mode:
    name: str
    learner: Learner
    publisher: weights_sync.WeightsPublisher | None
    rates: list[float]
    snapshot_s: float = 0.0
    snapshots: int = 0
    updates: int = 0


def _timed(fn: Callable[..., None], mode: Mode) -> Callable[..., None]:
    def wrapper(*args: Any) -> None:
        t = time.perf_counter()
        fn(*args)
        mode.snapshot_s += time.perf_counter() - t
        mode.snapshots += 1

    return wrapper


def bench_updates(args: argparse.Namespace, kafka: KafkaSettings | None,
                  hidden: tuple[int, ...]) -> tuple[list[Mode], str]:
    syncs = [(int(x.split("/")[0]), float(x.split("/")[1]))
             for x in args.sync.split(",") if x.strip()]
    run_id = uuid.uuid4().hex[:8]
    data = synthetic_batches(8, 25, 100, f"bench-{run_id}")
    modes: list[Mode] = []
    target = "in-memory sink"
    for every, every_s in [(0, 3600.0), *syncs]:
        name = f"bench-{run_id}-{every or 'off'}"
        spec = experiment(name, hidden, args.batch_size, every or 1_000_000, every_s)
        publisher: weights_sync.WeightsPublisher | None = None

        def factory(stream: str, every: int = every) -> tuple[loop.Publisher, int]:
            nonlocal publisher, target
            if every == 0:
                return _Off(), 0
            if kafka is not None:
                sink: weights_sync.WeightsSink = KafkaWeightsSink(kafka, role="bench-learner")
                target = f"Kafka at {kafka.bootstrap}"
            else:
                sink = weights_sync.InMemoryWeightsSink()
            publisher = weights_sync.WeightsPublisher(
                sink, stream, weights_sync.WeightSyncSettings(max_bytes_per_s=0))
            publisher.start(first_version=1)
            return publisher, 0

        learner = Learner(spec, lambda _t: policies.PolicySpec.from_robot_spec(ROBOT), factory)
        for batch in data:
            learner.add(dataclasses.replace(Steps.of_batch(batch), experiment_id=name),
                        "history")
        mode = Mode("off" if every == 0 else f"every {every} updates or {every_s:g} s",
                    learner, publisher, [])
        tl = learner.types[ROBOT.robot_type]
        tl.publish = _timed(tl.publish, mode)  # type: ignore[method-assign]
        modes.append(mode)
    for mode in modes:  # warm up allocators and threads
        _train_for(mode.learner, 0.5)
    for _ in range(args.trials):
        for mode in modes:
            before = mode.learner.update_step
            elapsed = _train_for(mode.learner, args.seconds)
            done = mode.learner.update_step - before
            mode.updates += done
            mode.rates.append(done / elapsed)
    for mode in modes:
        if mode.publisher is not None:
            mode.publisher.close(60.0)
    return modes, target


def _train_for(learner: Learner, seconds: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        learner.train_round()
    return time.perf_counter() - start


@dataclass
class WarmStart:
    rows: int
    read_s: list[float]
    convert_s: list[float]
    add_s: list[float]

    def total(self) -> float:
        return statistics.median(r + c + a for r, c, a in
                                 zip(self.read_s, self.convert_s, self.add_s, strict=True))


def bench_warm_start(args: argparse.Namespace) -> WarmStart:
    steps, robots = 100, 20
    batches = max(1, args.rows // (steps * robots))
    result = WarmStart(batches * steps * robots, [], [], [])
    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        root = Path(tmp)
        data = synthetic_batches(robots, batches, steps, "warm")
        parts = [sink_tables.batch_rows(b, sink_tables.Source("transitions", i % 4, i))
                 for i, b in enumerate(data)]
        for start in range(0, len(parts), 200):  # a few commits, as a sink would make
            write_deltalake(tables.table_path(root, tables.TRANSITIONS),
                            pa.concat_tables(parts[start:start + 200],
                                             promote_options="permissive"),
                            mode="append", schema_mode="merge",
                            partition_by=[tables.PARTITION_COLUMN])
        spec = experiment("warm", (32, 32), 32, 1_000_000)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            history = _history.read(root, experiments=("warm",), reward_fn=REWARD,
                                    topic="transitions", partitions=range(4),
                                    sink_name="delta-sink")
            t1 = time.perf_counter()
            chunks = list(history.steps())
            t2 = time.perf_counter()
            learner = Learner(spec, lambda _t: policies.PolicySpec.from_robot_spec(ROBOT),
                              lambda _s: (_Off(), 0))
            learner.open_known()  # networks and buffer: not part of the rows' path
            t2b = time.perf_counter()
            taken = sum(learner.add(c, "history") for c in chunks)
            t3 = time.perf_counter()
            if taken != result.rows or history.rows != result.rows:
                raise RuntimeError(f"warm start took {taken} of {result.rows} rows")
            result.read_s.append(t1 - t0)
            result.convert_s.append(t2 - t1)
            result.add_s.append(t3 - t2b)
    return result


def _kafka() -> KafkaSettings | None:
    from infra.broker import answers_metadata

    settings = KafkaSettings()
    return settings if answers_metadata(settings.bootstrap, timeout_s=3.0) else None


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    logging.getLogger("learners.weights_sync").setLevel(logging.WARNING)
    kafka = None if args.memory_sink else _kafka()
    sizes: list[tuple[tuple[int, ...], list[Mode]]] = []
    target = ""
    for text in args.hidden.split(";"):
        hidden = tuple(int(x) for x in text.split(","))
        print(f"updates/s, hidden {hidden} …", flush=True)
        modes, target = bench_updates(args, kafka, hidden)
        sizes.append((hidden, modes))
    print("warm start …", flush=True)
    warm = bench_warm_start(args)
    body = render(args, sizes, target, warm)
    print(body)
    if not args.no_write:
        report.write_section("learner", body, args.out)
        print(f"wrote the learner section of {args.out}")
    return 0


def render(args: argparse.Namespace, sizes: list[tuple[tuple[int, ...], list[Mode]]],
           target: str, warm: WarmStart) -> str:
    lines = [
        "## Learner: updates/s with weight sync on vs off, warm start from Delta "
        "(`userctl bench learner`)",
        "",
        *report.machine_lines(),
        f"- what: SAC on one robot type (observation {OBS_DIM}, action {ACT_DIM}, batch "
        f"{args.batch_size}, {args.threads} torch thread(s)); {args.trials} alternating trials "
        f"of {args.seconds:g} s per mode, median; weights published to {target} (broker on "
        "the same machine), bandwidth cap off",
        "- lost = median over trials of 1 − on/off (each on trial paired with the off trial "
        "just before it); where it is within the trials' spread it is noise of the shared "
        "machine, not a cost (a negative value is such noise)",
        "",
        "| hidden | policy MB | weight sync | updates/s (median) | trials min–max | lost vs off "
        "| versions published | snapshot on trainer (ms each) | publisher thread busy "
        "(ms/version) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for hidden, modes in sizes:
        blob = modes[0].learner.types[ROBOT.robot_type].algorithm.policy_weights()
        size = sum(a.nbytes for a in blob.values()) / 1e6
        for mode in modes:
            rate = statistics.median(mode.rates)
            p = mode.publisher.stats if mode.publisher is not None else None
            versions = p.published if p is not None else 0
            paired = [1 - on / off for on, off in zip(mode.rates, modes[0].rates, strict=True)]
            lost = "—" if mode is modes[0] else f"{statistics.median(paired) * 100:.1f} %"
            snap = f"{mode.snapshot_s / mode.snapshots * 1e3:.2f}" if mode.snapshots else "—"
            busy = f"{p.busy_s / versions * 1e3:.1f}" if p is not None and versions else "—"
            lines.append(
                f"| {'×'.join(map(str, hidden))} | {size:.2f} | {mode.name} | {rate:,.1f} | "
                f"{min(mode.rates):,.1f}–{max(mode.rates):,.1f} | {lost} | {versions} | "
                f"{snap} | {busy} |")
    total = warm.total()
    lines += [
        "",
        "| warm start from Delta | rows | read (s) | to arrays (s) | into buffer (s) | "
        "rows/s end to end |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {OBS_DIM}-float obs, {ACT_DIM}-float action, local disk | {warm.rows:,} | "
        f"{statistics.median(warm.read_s):.2f} | {statistics.median(warm.convert_s):.2f} | "
        f"{statistics.median(warm.add_s):.2f} | {warm.rows / total:,.0f} |",
    ]
    return "\n".join(lines)

