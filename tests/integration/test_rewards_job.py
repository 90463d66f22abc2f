"""Reward jobs as faust apps: raw batches scored onto the same partition of `transitions`,
two functions side by side, and the sink writing each (step, function) once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import rewards, tables
from schemas import samples
from tests.integration.test_sink import ROOT, Namespace, stop, wait_for
from topics import catalog, serde
from topics.settings import KafkaSettings


@pytest.fixture
def ns(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[Namespace]:
    yield Namespace(kafka, unique, tmp_path / "delta")


def start_job(ns: Namespace, reward: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "infra.cli", "rewards", "run", reward,
           "--topic-suffix", ns.suffix, "--datadir", str(ns.root.parent / "faust")]
    env = {**os.environ, "USER_KAFKA_BOOTSTRAP": ns.kafka.bootstrap}
    out = open(log, "ab")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)


def read_all(ns: Namespace, spec: catalog.TopicSpec) -> list[tuple[int, serde.Payload]]:
    c = Consumer(ns.kafka.consumer_config(f"read-{ns.suffix}", role="test"))
    name = ns.topic(spec)
    ends = ns.end_offsets(spec)
    c.assign([TopicPartition(name, p, 0) for p in ends])
    out: list[tuple[int, serde.Payload]] = []
    left = sum(ends.values())
    try:
        while left > 0:
            for msg in c.consume(100, 1.0):
                if msg.error():
                    continue
                left -= 1
                out.append((msg.partition() or 0,
                            serde.decode(catalog.spec(spec.name), msg.value(), msg.headers())))
    finally:
        c.close()
    return out


def test_two_reward_jobs_score_every_raw_batch_onto_its_partition(ns: Namespace) -> None:
    raw = ns.produce_steps(robots=("r1", "r2", "r3"), batches=4)
    no_info = samples.batch(samples.robot_spec(obs_dim=6, act_dim=2), 5, robot_id="r9",
                            experiment_id="exp-1")
    ns.send(catalog.TRANSITIONS_RAW, no_info)
    ns.producer.flush()
    log = ns.root.parent / "jobs.log"
    ns.root.parent.mkdir(parents=True, exist_ok=True)
    jobs = [start_job(ns, "reach_dense@1", log), start_job(ns, "reach_sparse@1", log)]
    sinker = ns.start_sink("--static", topics="transitions", log=ns.root.parent / "sink.log")
    try:
        want = 2 * len(raw)
        wait_for(lambda: sum(ns.end_offsets(catalog.TRANSITIONS).values()) >= want, 90,
                 "rewarded batches from both jobs", jobs[0])
        wait_for(lambda: sum(ns.end_offsets(catalog.DLQ).values()) >= 2, 30,
                 "both jobs to dead-letter the batch without info")
        # A retried send: the same rewarded batch published again reaches Delta once.
        again = rewards.apply(rewards.lookup("reach_dense@1"), raw[0])
        ns.send(catalog.TRANSITIONS, again)
        ns.producer.flush()
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS, tables.TRANSITIONS), 60,
                 "the sink to catch up", sinker)
    finally:
        for p in [*jobs, sinker]:
            stop(p)
    partition_of = {b.robot_id: ns.kafka.sites.partition_for(b.event.site, b.robot_id)
                    for b in raw}
    by_raw = {b.event.event_id: b for b in raw}
    seen: dict[str, int] = {}
    for partition, payload in read_all(ns, catalog.TRANSITIONS):
        assert partition == partition_of[payload.robot_id]  # type: ignore[union-attr]
        fn = payload.reward_fn  # type: ignore[union-attr]
        source = by_raw[payload.event.raw_event_id]  # type: ignore[union-attr,index]
        np.testing.assert_array_equal(payload.reward,  # type: ignore[union-attr]
                                      rewards.lookup(fn)(source).reward)
        seen[fn] = seen.get(fn, 0) + 1
    assert seen == {"reach_dense@1": len(raw) + 1, "reach_sparse@1": len(raw)}
    table = ns.table(tables.TRANSITIONS)
    keys = list(zip(table.column("robot_id").to_pylist(), table.column("episode_id").to_pylist(),
                    table.column("step").to_pylist(), table.column("reward_fn").to_pylist(),
                    strict=True))
    assert len(keys) == len(set(keys)) == 2 * sum(len(b) for b in raw)
