"""The Delta sink: every produced step lands in Delta exactly once, whatever happens to it.

Each test works in its own topic namespace (catalog names plus a unique suffix) on the
shared broker, and its own Delta root on disk; sinks run as ``userctl sink`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import sink, tables
from schemas import samples, transitions
from topics import admin, catalog, serde
from topics.producer import EventProducer
from topics.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
ROBOTS = ("r1", "r2", "r3", "r4")  # spread over both sites' partitions


class Namespace:
    """The catalog's data topics under a unique suffix, and a Delta root."""

    def __init__(self, kafka: KafkaSettings, unique: str, root: Path) -> None:
        self.kafka = kafka
        self.suffix = f".t{unique}"
        self.root = root
        self.sink_name = f"sink-{unique}"
        specs = [catalog.TRANSITIONS_RAW, catalog.TRANSITIONS, catalog.EPISODES, catalog.DLQ]
        admin.ensure_topics(kafka, [s.model_copy(update={"name": s.name + self.suffix})
                                    for s in specs])
        self.producer = EventProducer(kafka, role="test")

    def topic(self, spec: catalog.TopicSpec) -> str:
        return spec.name + self.suffix

    def send(self, spec: catalog.TopicSpec, payload: serde.Payload) -> None:
        rec = serde.encode(spec, payload, sites=self.kafka.sites)
        self.producer.send_encoded(replace(rec, topic=self.topic(spec)))

    def produce_steps(self, robots: tuple[str, ...] = ROBOTS, batches: int = 40,
                      steps: int = 10, first_batch: int = 0, *,
                      experiment: str = "exp-1",
                      spec: object = None) -> list[transitions.TransitionBatch]:
        """``batches`` consecutive batches of ``steps`` steps per robot, interleaved."""
        robot = spec or samples.robot_spec(obs_dim=6, act_dim=2,
                                           info={"ee_pos": 3, "goal_pos": 3})
        out = []
        for b in range(first_batch, first_batch + batches):
            for i, r in enumerate(robots):
                site = "lab-a" if i % 2 == 0 else "lab-b"
                batch = samples.batch(robot, steps, rng=b * 100 + i, site=site, robot_id=r,  # type: ignore[arg-type]
                                      experiment_id=experiment, first_step=b * steps,
                                      episode_len=25)
                self.send(catalog.TRANSITIONS_RAW, batch)
                out.append(batch)
        self.producer.flush()
        return out

    def end_offsets(self, spec: catalog.TopicSpec) -> dict[int, int]:
        c = Consumer(self.kafka.consumer_config(f"probe-{self.suffix}", role="probe"))
        try:
            name = self.topic(spec)
            parts = c.list_topics(name, timeout=10).topics[name].partitions
            return {p: c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                    for p in parts}
        finally:
            c.close()

    def txn_versions(self, spec: catalog.TopicSpec, table: str) -> dict[int, int | None]:
        dt = sink.open_table(tables.table_path(self.root, table))
        parts = self.end_offsets(spec)
        if dt is None:
            return dict.fromkeys(parts)
        return {p: dt.transaction_version(f"{self.sink_name}-{self.topic(spec)}-{p}")
                for p in parts}

    def caught_up(self, spec: catalog.TopicSpec, table: str) -> bool:
        ends = self.end_offsets(spec)
        versions = self.txn_versions(spec, table)
        return all((versions[p] if versions[p] is not None else -1) >= end - 1
                   for p, end in ends.items())

    def start_sink(self, *extra: str, topics: str = "transitions.raw",
                   flush_rows: int = 40, log: Path | None = None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "infra.cli", "sink", "--root", str(self.root),
               "--name", self.sink_name, "--topics", topics, "--topic-suffix", self.suffix,
               "--flush-rows", str(flush_rows), "--flush-interval", "0.3",
               "--compact-interval", "0", *extra]
        env = {**os.environ, "USER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
               "USER_LOG_LEVEL": "INFO"}
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)

    def table(self, name: str) -> pa.Table:
        dt = sink.open_table(tables.table_path(self.root, name))
        assert dt is not None, f"no {name} table"
        return dt.to_pyarrow_dataset().to_table()


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str,
             proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sink exited with {proc.returncode} while waiting "
                                 f"for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def delta_version(path: str) -> int:
    dt = sink.open_table(path)
    return -1 if dt is None else dt.version()


def step_keys(batches: list[transitions.TransitionBatch]) -> set[tuple[str, str, int]]:
    return {(b.robot_id, str(e), int(s)) for b in batches
            for e, s in zip(b.episode_id, b.step, strict=True)}


def assert_exactly_once(table: pa.Table, produced: list[transitions.TransitionBatch]) -> None:
    keys = list(zip(table.column("robot_id").to_pylist(), table.column("episode_id").to_pylist(),
                    table.column("step").to_pylist(), strict=True))
    dupes = len(keys) - len(set(keys))
    want = step_keys(produced)
    assert dupes == 0, f"{dupes} steps written twice"
    assert set(keys) == want, (f"{len(want - set(keys))} steps missing, "
                               f"{len(set(keys) - want)} unexpected")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=30)


@pytest.fixture
def ns(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[Namespace]:
    space = Namespace(kafka, unique, tmp_path / "delta")
    yield space
    space.producer.flush()


def test_sink_killed_at_random_moments_writes_every_step_exactly_once(ns: Namespace) -> None:
    rng = np.random.default_rng()
    produced = ns.produce_steps(batches=60)
    path = tables.table_path(ns.root, tables.TRANSITIONS_RAW)
    kills = 0
    for _ in range(6):
        proc = ns.start_sink("--static", log=ns.root.parent / "sink.log")
        try:
            # A random moment: after 0-3 more commits, plus up to 150 ms into the next one.
            target = delta_version(path) + int(rng.integers(0, 4))
            wait_for(lambda t=target: delta_version(path) >= t, 60,
                     f"Delta version {target}", proc)
            time.sleep(float(rng.uniform(0, 0.15)))
            assert proc.poll() is None, "the sink finished before it could be killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        kills += 1
    assert not ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), \
        "ingest ended before the last kill: produce more steps"
    proc = ns.start_sink("--static", log=ns.root.parent / "sink.log")
    try:
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 90,
                 "the sink to catch up", proc)
    finally:
        stop(proc)
    assert kills >= 5
    assert_exactly_once(ns.table(tables.TRANSITIONS_RAW), produced)


def assigned(log: Path) -> list[str]:
    """The partitions a sink's last assignment gave it, read from its log."""
    lines = [ln for ln in log.read_text().splitlines() if "pipeline.sink: assigned" in ln]
    if not lines:
        return []
    last = lines[-1].split("assigned ", 1)[1]
    return [] if last == "nothing" else last.split(", ")


def test_two_sinks_sharing_partitions_write_each_step_once(ns: Namespace) -> None:
    logs = [ns.root.parent / "sink-a.log", ns.root.parent / "sink-b.log"]
    for log in logs:
        log.touch()
    first = ns.start_sink(log=logs[0])
    second = ns.start_sink(log=logs[1])
    try:
        # Both members hold partitions at once (one rebalance after the second joined).
        wait_for(lambda: len(assigned(logs[0])) == 2 and len(assigned(logs[1])) == 2, 60,
                 "the two sinks to split the four partitions", first)
        produced = ns.produce_steps(batches=30)
        path = tables.table_path(ns.root, tables.TRANSITIONS_RAW)
        wait_for(lambda: delta_version(path) >= 6, 60, "commits from both sinks", first)
        # One sink leaves mid-stream: the other takes its partitions over from Delta.
        stop(first)
        wait_for(lambda: len(assigned(logs[1])) == 4, 60, "the takeover", second)
        produced += ns.produce_steps(batches=10, first_batch=30)
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 90,
                 "the remaining sink to catch up", second)
    finally:
        stop(first)
        stop(second)
    assert_exactly_once(ns.table(tables.TRANSITIONS_RAW), produced)
    # Seeking reads Delta only; the group's committed offsets are for lag monitors and
    # say exactly what Delta holds (issue 18): the next offset after each txn version.
    versions = ns.txn_versions(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW)
    c = Consumer(ns.kafka.consumer_config(ns.sink_name, role="probe"))
    try:
        name = ns.topic(catalog.TRANSITIONS_RAW)
        committed = c.committed([TopicPartition(name, p) for p in range(4)], timeout=10)
        assert {tp.partition: tp.offset for tp in committed} == {
            p: (-1001 if v is None else v + 1) for p, v in versions.items()}
    finally:
        c.close()


def test_a_new_optional_field_merges_into_the_table_schema(ns: Namespace) -> None:
    plain = samples.robot_spec(obs_dim=6, act_dim=2, info={"ee_pos": 3, "goal_pos": 3})
    richer = samples.robot_spec(obs_dim=6, act_dim=2, cameras=("wrist",), image_hw=(8, 8),
                                info={"ee_pos": 3, "goal_pos": 3, "force": 6})
    produced = ns.produce_steps(robots=("r1",), batches=2, spec=plain)
    produced += ns.produce_steps(robots=("r2",), batches=2, spec=richer)
    proc = ns.start_sink("--static")
    try:
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 60,
                 "the sink to catch up", proc)
    finally:
        stop(proc)
    table = ns.table(tables.TRANSITIONS_RAW)
    assert_exactly_once(table, produced)
    info = table.schema.field("info").type
    assert {f.name for f in info} == {"ee_pos", "goal_pos", "force"}
    images = table.filter(pa.compute.equal(table.column("robot_id"), "r2")).column("images")
    assert images.null_count == 0
    # Rows round-trip to the batches that were produced.
    back = {b.event.event_id: b for b in tables.batches_from_rows(table)}
    for b in produced:
        np.testing.assert_array_equal(back[b.event.event_id].observation, b.observation)
        for cam, img in b.images.items():
            np.testing.assert_array_equal(back[b.event.event_id].images[cam], img)


def test_a_bad_record_goes_to_the_dlq_and_ingest_moves_past_it(ns: Namespace) -> None:
    produced = ns.produce_steps(robots=("r1",), batches=1)
    ns.producer.send_encoded(serde.Encoded(ns.topic(catalog.TRANSITIONS_RAW), b"lab-a/r1",
                                           b"not arrow", [], 0))
    produced += ns.produce_steps(robots=("r1",), batches=1, first_batch=1)
    ns.producer.flush()
    proc = ns.start_sink("--static")
    try:
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 60,
                 "the sink to catch up", proc)
    finally:
        stop(proc)
    assert_exactly_once(ns.table(tables.TRANSITIONS_RAW), produced)
    ends = ns.end_offsets(catalog.DLQ)
    assert sum(ends.values()) == 1


def test_raw_steps_an_agent_sends_again_land_once(ns: Namespace) -> None:
    # An agent killed before its spool saw the broker's acknowledgement sends the same
    # records again when it restarts (at-least-once); Delta must still hold each step once.
    produced = ns.produce_steps(robots=("r1", "r2"), batches=3)
    for batch in produced[2:4]:
        ns.send(catalog.TRANSITIONS_RAW, batch)
    later = ns.produce_steps(robots=("r1", "r2"), batches=2, first_batch=3)
    ns.producer.flush()
    proc = ns.start_sink("--static")
    try:
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 60,
                 "the sink to catch up", proc)
    finally:
        stop(proc)
    assert_exactly_once(ns.table(tables.TRANSITIONS_RAW), produced + later)
