"""Ingest throughput: Kafka -> Delta through the exactly-once sink, and through a reward job,
beside a raw confluent-kafka consume of the same records in the same run.

For each workload (state-only steps: 32-float observation, 4-float action; image steps:
the same plus two 84x84x3 uint8 cameras) the same records are written once to a fresh
namespace of ``transitions.raw`` and then, taking turns within each repeat:

* ``raw consume`` — baseline: a confluent-kafka consumer reads every record to the end
  (bytes only: no decode, no validation);
* ``sink -> Delta`` — ``pipeline.sink.DeltaSink`` (static assignment, fresh Delta root)
  reads, validates, converts and commits every step with its app transactions, until each
  partition's Delta transaction version reaches the end offset;
* ``reward job`` — the faust ``reach_dense@1`` job (already running, so start-up is not
  counted) scores freshly produced copies of the records into ``transitions``, timed from
  the first produce to the last rewarded record.

Cells are medians of ``--repeats``; the ratio column is steps/s over raw consume's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from infra.bench import report
from pipeline import reward_job, sink, tables
from schemas import events, samples
from schemas.spaces import RobotSpec
from topics import admin, catalog, serde
from topics.producer import EventProducer
from topics.settings import KafkaSettings

HELP = "steps/s Kafka -> Delta (sink, reward job) beside a raw confluent-kafka consume"

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS: dict[str, dict[str, object]] = {
    "state (32-float obs)": {"obs_dim": 32, "act_dim": 4},
    "images (2 x 84x84x3)": {"obs_dim": 32, "act_dim": 4, "cameras": ("front", "wrist")},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-steps", type=int, default=100_000, help="state-only steps")
    p.add_argument("--image-steps", type=int, default=2_000, help="image steps")
    p.add_argument("--batch", type=int, default=100, help="steps per record")
    p.add_argument("--repeats", type=int, default=3, help="timings per cell (median)")
    p.add_argument("--no-reward-job", action="store_true", help="skip the faust job")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


class _Space:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.suffix = f".bench{uuid.uuid4().hex[:8]}"
        specs = [catalog.TRANSITIONS_RAW, catalog.TRANSITIONS, catalog.DLQ, catalog.ROBOTS]
        admin.ensure_topics(kafka, [s.model_copy(update={"name": s.name + self.suffix})
                                    for s in specs])

    def name(self, spec: catalog.TopicSpec) -> str:
        return spec.name + self.suffix

    def ends(self, spec: catalog.TopicSpec) -> dict[int, int]:
        c = Consumer(self.kafka.consumer_config(f"bench-probe{self.suffix}", role="bench"))
        try:
            name = self.name(spec)
            parts = c.list_topics(name, timeout=10).topics[name].partitions
            return {p: c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                    for p in parts}
        finally:
            c.close()


ROBOTS = ("r1", "r2", "r3", "r4")


def _spec(workload: dict[str, object]) -> RobotSpec:
    return samples.robot_spec(info={"ee_pos": 3, "goal_pos": 3}, **workload)  # type: ignore[arg-type]


def _announce(space: _Space, workload: dict[str, object]) -> None:
    """The robots announce themselves in the namespace, as agents do before their first
    step: consumers then check every batch against its robot's spec (bounds included)
    without waiting for an announcement that never comes."""
    producer = EventProducer(space.kafka, role="bench")
    for i, robot in enumerate(ROBOTS):
        event = events.RobotAnnouncedV1(site="lab-a" if i % 2 == 0 else "lab-b",
                                        robot_id=robot, spec=_spec(workload))
        producer.send_encoded(replace(serde.encode(catalog.ROBOTS, event),
                                      topic=space.name(catalog.ROBOTS)))
    producer.flush()


def _records(workload: dict[str, object], steps: int, per: int) -> list[serde.Encoded]:
    spec = _spec(workload)
    out = []
    robots = ROBOTS
    for b in range(max(1, steps // per // len(robots))):
        for i, r in enumerate(robots):
            batch = samples.batch(spec, per, rng=b * 10 + i, robot_id=r,
                                  site="lab-a" if i % 2 == 0 else "lab-b",
                                  first_step=b * per, episode_len=100)
            out.append(serde.encode(catalog.TRANSITIONS_RAW, batch, sites=KafkaSettings().sites))
    return out


def _produce(kafka: KafkaSettings, topic: str, records: list[serde.Encoded]) -> None:
    producer = EventProducer(kafka, role="bench", linger_ms=20)
    for rec in records:
        while True:
            try:
                producer.send_encoded(replace(rec, topic=topic))
                break
            except BufferError:
                producer.flush()
    producer.flush()


def _raw_consume(space: _Space, n_records: int) -> float:
    name = space.name(catalog.TRANSITIONS_RAW)
    c = Consumer(space.kafka.consumer_config(f"bench-raw-{uuid.uuid4().hex[:6]}",
                                             role="bench"))
    c.assign([TopicPartition(name, p, 0) for p in space.ends(catalog.TRANSITIONS_RAW)])
    t0 = time.perf_counter()
    got = 0
    while got < n_records:
        got += sum(1 for m in c.consume(500, 0.05) if m.error() is None)
    dt = time.perf_counter() - t0
    c.close()
    return dt


def _sink(space: _Space, root: Path) -> float:
    settings = sink.SinkSettings(
        name=f"bench-{uuid.uuid4().hex[:6]}", root=root, topics=(catalog.TRANSITIONS_RAW.name,),
        topic_suffix=space.suffix, static=True, compact_interval_s=0, flush_interval_s=1.0)
    runner = sink.DeltaSink(space.kafka, settings)
    ends = space.ends(catalog.TRANSITIONS_RAW)
    path = tables.table_path(root, tables.TRANSITIONS_RAW)
    name = space.name(catalog.TRANSITIONS_RAW)
    t0 = time.perf_counter()
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while True:
        dt = sink.open_table(path)
        done = dt is not None
        for p, e in ends.items():
            v = None if dt is None else dt.transaction_version(f"{settings.name}-{name}-{p}")
            if e and (v is None or v < e - 1):
                done = False
        if done:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    runner.stop()
    thread.join()
    return elapsed


def _reward_job(space: _Space, records: list[serde.Encoded], datadir: Path) -> float:
    env = {**os.environ, "USER_KAFKA_BOOTSTRAP": space.kafka.bootstrap,
           "USER_LOG_LEVEL": "WARNING"}
    job = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "rewards", "run", "reach_dense@1",
         "--topic-suffix", space.suffix, "--datadir", str(datadir)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Ready once it has scored everything already on the topic.
        base = sum(space.ends(catalog.TRANSITIONS_RAW).values())
        while sum(space.ends(catalog.TRANSITIONS).values()) < base:
            time.sleep(0.1)
        t0 = time.perf_counter()
        _produce(space.kafka, space.name(catalog.TRANSITIONS_RAW), records)
        while sum(space.ends(catalog.TRANSITIONS).values()) < base + len(records):
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        PEAK_RSS_MB.append(_peak_rss_mb(job.pid))
        return elapsed
    finally:
        job.terminate()
        job.wait(timeout=60)


#: Peak resident memory of each reward job process measured (MB).
PEAK_RSS_MB: list[float] = []


def _peak_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return next((int(line.split()[1]) / 1024 for line in status.splitlines()
                 if line.startswith("VmHWM")), float("nan"))


def run(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    rows: list[list[str]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        for label, workload in WORKLOADS.items():
            steps = args.image_steps if "cameras" in workload else args.state_steps
            per = min(args.batch, 20) if "cameras" in workload else args.batch
            records = _records(workload, steps, per)
            n_steps = len(records) * per
            mb = sum(len(r.value) for r in records) / 1e6
            space = _Space(kafka)
            _announce(space, workload)
            _produce(kafka, space.name(catalog.TRANSITIONS_RAW), records)
            times: dict[str, list[float]] = {"raw consume": [], "sink -> Delta": []}
            for i in range(args.repeats):
                times["raw consume"].append(_raw_consume(space, len(records)))
                times["sink -> Delta"].append(_sink(space, scratch / f"{label[:5]}-{i}"))
                shutil.rmtree(scratch / f"{label[:5]}-{i}", ignore_errors=True)
            if not args.no_reward_job:
                times["reward job"] = [
                    _reward_job(space, records, scratch / "faust")
                    for _ in range(args.repeats)]
            base = n_steps / statistics.median(times["raw consume"])
            for method, ts in times.items():
                rate = n_steps / statistics.median(ts)
                rows.append([label, method, f"{n_steps}", f"{per}", f"{mb:.1f}",
                             f"{rate:,.0f}", f"{rate / base:.3f}"])
                print(" | ".join(rows[-1]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = ["| workload | path | steps | steps/record | MB on the wire | steps/s (median) "
             "| ratio to raw consume |", "|---|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join([
        "## Ingest: Kafka -> Delta (`userctl bench ingest`)", "",
        *report.machine_lines(), f"- repeats: {args.repeats} (median)", "",
        *table, "",
        "Raw consume reads bytes only; the sink also decodes and validates every batch "
        "(against its robot's announced spec), converts it to Delta rows and commits them "
        "with one app transaction per partition (flush every "
        f"{sink.SinkSettings().flush_rows:,} rows or 1 s). The reward job is timed from the "
        "first produce of fresh copies to the last rewarded record on `transitions` (faust, "
        "already running; it takes up to "
        f"{reward_job.TAKE_RECORDS} records at a time)"
        + (f"; its process peaked at {max(PEAK_RSS_MB):,.0f} MB RSS (no torch)."
           if PEAK_RSS_MB else "."),
    ])
    if not args.no_write:
        report.write_section("ingest", text, args.out)
    print(text)
    return 0
