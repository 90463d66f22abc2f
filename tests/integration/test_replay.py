"""Replay and back-fill from the Delta history, driven through `userctl`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import rewards, tables
from schemas import transitions
from tests.integration.test_sink import ROOT, Namespace, stop, wait_for
from topics import admin, catalog, serde
from topics.settings import KafkaSettings


def userctl(ns: Namespace, *args: str) -> str:
    env = {**os.environ, "USER_KAFKA_BOOTSTRAP": ns.kafka.bootstrap}
    done = subprocess.run([sys.executable, "-m", "infra.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def history(kafka: KafkaSettings, unique: str, tmp_path: Path
            ) -> Iterator[tuple[Namespace, list[transitions.TransitionBatch]]]:
    """Raw steps of four robots, and their reach_dense@1 rewards, sunk into Delta."""
    ns = Namespace(kafka, unique, tmp_path / "delta")
    raw = ns.produce_steps(batches=6)
    raw += ns.produce_steps(robots=("r1", "r2"), batches=2, experiment="exp-other")
    dense = rewards.lookup("reach_dense@1")
    for b in raw:
        ns.send(catalog.TRANSITIONS, rewards.apply(dense, b))
    ns.producer.flush()
    proc = ns.start_sink("--static", topics="transitions.raw,transitions")
    try:
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW)
                 and ns.caught_up(catalog.TRANSITIONS, tables.TRANSITIONS), 60,
                 "the sink to catch up", proc)
    finally:
        stop(proc)
    yield ns, raw


def test_replay_republishes_an_experiment_in_per_robot_order(
        history: tuple[Namespace, list[transitions.TransitionBatch]]) -> None:
    ns, raw = history
    target = f"replay.{ns.suffix.lstrip('.')}"
    admin.ensure_topics(ns.kafka, [catalog.TRANSITIONS_RAW.model_copy(update={"name": target})])
    out = userctl(ns, "replay", "exp-1", "--to-topic", target, "--root", str(ns.root))
    assert "replayed 24 batches, 240 steps of 4 robots" in out

    c = Consumer(ns.kafka.consumer_config(f"read-{ns.suffix}", role="test"))
    c.assign([TopicPartition(target, p, 0) for p in range(4)])
    got: dict[str, list[tuple[int, str, int]]] = {}
    n = 0
    try:
        while n < 24:
            for msg in c.consume(50, 1.0):
                if msg.error():
                    continue
                n += 1
                batch = serde.decode(catalog.TRANSITIONS_RAW, msg.value(), msg.headers())
                assert isinstance(batch, transitions.TransitionBatch)
                site_partition = ns.kafka.sites.partition_for(batch.event.site, batch.robot_id)
                assert msg.partition() == site_partition
                got.setdefault(batch.robot_id, []).extend(
                    (int(t), str(e), int(s)) for t, e, s in
                    zip(batch.observed_ns, batch.episode_id, batch.step, strict=True))
    finally:
        c.close()
    want: dict[str, list[tuple[int, str, int]]] = {}
    for b in raw:
        if b.event.experiment_id == "exp-1":
            want.setdefault(b.robot_id, []).extend(
                (int(t), str(e), int(s))
                for t, e, s in zip(b.observed_ns, b.episode_id, b.step, strict=True))
    assert got == want


def test_a_backfilled_second_reward_version_leaves_the_first_intact(
        history: tuple[Namespace, list[transitions.TransitionBatch]]) -> None:
    ns, raw = history
    before = ns.table(tables.TRANSITIONS)
    out = userctl(ns, "replay", "exp-1", "--reward", "reach_sparse@1", "--root", str(ns.root))
    assert "back-filled 240 steps with reach_sparse@1" in out
    after = ns.table(tables.TRANSITIONS)
    dense = after.filter(pc.equal(after.column("reward_fn"), "reach_dense@1"))
    key = ["robot_id", "episode_id", "step", "experiment_id"]
    assert dense.select([*key, "reward"]).sort_by([(k, "ascending") for k in key]).equals(
        before.select([*key, "reward"]).sort_by([(k, "ascending") for k in key]))
    other = dense.filter(pc.equal(dense.column("experiment_id"), "exp-other"))
    assert other.num_rows == 40
    sparse = after.filter(pc.equal(after.column("reward_fn"), "reach_sparse@1"))
    assert sparse.num_rows == 240
    assert set(sparse.column("experiment_id").to_pylist()) == {"exp-1"}
    fn = rewards.lookup("reach_sparse@1")
    want = {(b.robot_id, str(e), int(s)): float(r) for b in raw
            if b.event.experiment_id == "exp-1"
            for e, s, r in zip(b.episode_id, b.step, fn(b).reward, strict=True)}
    got = {(r, e, s): v for r, e, s, v in zip(*(sparse.column(c).to_pylist() for c in
                                                 ("robot_id", "episode_id", "step", "reward")),
                                               strict=True)}
    assert got == want
    # Rerunning finds nothing left to do.
    again = userctl(ns, "replay", "exp-1", "--reward", "reach_sparse@1", "--root", str(ns.root))
    assert "back-filled 0 steps" in again
    # And the history answers per robot and policy version, for either function.
    rows = [json.loads(line) for line in userctl(
        ns, "history", "--root", str(ns.root), "--json", "success", "exp-1", "--reward",
        "reach_sparse@1").splitlines()]
    assert {r["robot_id"] for r in rows} == {"r1", "r2", "r3", "r4"}
    assert sum(r["steps"] for r in rows) == 240
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in rows)
