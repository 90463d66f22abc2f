"""Reward jobs as faust apps: raw batches scored onto the same partition of `transitions`,
two functions side by side, and the sink writing each (step, function) once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import reward_job, rewards, tables
from schemas import samples
from schemas.transitions import TransitionBatch
from tests.integration.test_sink import ROOT, Namespace, stop, wait_for
from topics import admin, catalog, serde
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


def group_assignment(ns: Namespace, group: str) -> list[set[int]]:
    """The partitions of ``transitions.raw`` each member of ``group`` holds now."""
    client = admin.admin_client(ns.kafka)
    [future] = client.describe_consumer_groups([group], request_timeout=10).values()
    description = future.result(timeout=10)
    topic = ns.topic(catalog.TRANSITIONS_RAW)
    return [{tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
            for m in description.members]


def one_batch_per_partition(ns: Namespace, first_step: int) -> dict[int, TransitionBatch]:
    spec = samples.robot_spec(obs_dim=6, act_dim=2, info={"ee_pos": 3, "goal_pos": 3})
    out: dict[int, TransitionBatch] = {}
    for i in range(200):
        site, robot = ("lab-a", "lab-b")[i % 2], f"rb{i}"
        partition = ns.kafka.sites.partition_for(site, robot)
        if partition in out:
            continue
        batch = samples.batch(spec, 5, rng=i, site=site, robot_id=robot,  # type: ignore[arg-type]
                              experiment_id="exp-1", first_step=first_step)
        ns.send(catalog.TRANSITIONS_RAW, batch)
        out[partition] = batch
    ns.producer.flush()
    assert sorted(out) == list(range(ns.kafka.sites.partition_count))
    return out


def test_a_killed_reward_job_s_partitions_are_scored_again_within_15_s(ns: Namespace) -> None:
    fn = rewards.lookup("reach_dense@1")
    group = reward_job.app_id(fn, ns.suffix)
    log = ns.root.parent / "jobs.log"
    ns.root.parent.mkdir(parents=True, exist_ok=True)
    jobs = [start_job(ns, fn.id, log), start_job(ns, fn.id, log)]
    try:
        warm = one_batch_per_partition(ns, first_step=0)
        wait_for(lambda: sum(ns.end_offsets(catalog.TRANSITIONS).values()) >= len(warm), 120,
                 "both jobs to score the first batches", jobs[0])
        held: list[set[int]] = []

        def both_hold_partitions() -> bool:
            held[:] = group_assignment(ns, group)
            return len(held) == 2 and all(held)

        wait_for(both_hold_partitions, 120, "two members holding partitions each")
        before = ns.end_offsets(catalog.TRANSITIONS)
        jobs[0].kill()  # SIGKILL: no leave-group, the broker must notice by the session timeout
        killed_at = time.monotonic()
        one_batch_per_partition(ns, first_step=5)
        scored_after: dict[int, float] = {}

        def every_partition_scored() -> bool:
            now = time.monotonic()
            for p, end in ns.end_offsets(catalog.TRANSITIONS).items():
                if end > before[p] and p not in scored_after:
                    scored_after[p] = now - killed_at
            return len(scored_after) == len(before)

        wait_for(every_partition_scored, 60, "the survivor to score every partition", jobs[1])
    finally:
        for p in jobs:
            stop(p)
    slowest = max(scored_after.values())
    print(f"partitions held by the members: {held}; seconds from SIGKILL to first scored "
          f"record per partition: { {p: round(t, 1) for p, t in sorted(scored_after.items())} }")
    assert slowest <= 15.0, f"a killed member's partition waited {slowest:.1f} s"
