"""`userctl learn` against a real broker, a real Delta history and a real sink process.

Each test has its own ``transitions`` topic (the catalog name plus a unique suffix), its
own Delta root, sink name, robot type and experiment; robot specs and the experiment go
to the shared ``robots``/``experiments`` topics under those unique names.  The learner
reports what its buffer took in its metrics (steps by origin, repeats dropped, and a
fingerprint of the step keys), which the tests compare with what they produced.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from learners import loop, policies
from schemas import events, samples
from schemas.experiment import ExperimentSpec
from schemas.transitions import RewardedTransitionBatch
from tests.conftest import Processes
from topics import admin, catalog, serde, tables
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted

REWARD = "reach_dense@1"
ROBOTS = (("r1", "lab-a"), ("r2", "lab-b"))
STEPS = 10  # per batch


class Setup:
    """One test's namespace: topic, Delta root, sink, robot type, experiment."""

    def __init__(self, kafka: KafkaSettings, unique: str, tmp: Path) -> None:
        self.kafka = kafka
        self.suffix = f".t{unique}"
        self.topic = catalog.TRANSITIONS.name + self.suffix
        self.root = tmp / "delta"
        self.home = tmp / "home"
        self.sink_name = f"sink-{unique}"
        self.robot_type = f"rt{unique}"
        self.experiment = f"learn-{unique}"
        self.stream = policies.weights_stream(self.experiment, self.robot_type)
        self.spec = samples.robot_spec(obs_dim=6, act_dim=2, robot_type=self.robot_type)
        self.robot_ids = {r: f"{r}-{unique}" for r, _ in ROBOTS}
        admin.ensure_topics(kafka, [catalog.TRANSITIONS.model_copy(update={"name": self.topic}),
                                    catalog.DLQ])
        self.producer = EventProducer(kafka, role="test")
        self.produced: list[RewardedTransitionBatch] = []
        self.watch = Follower(kafka, {catalog.LEARNER_METRICS: "end"}, role="test-watch")
        self.metrics: list[events.LearnerMetricsV1] = []

    def announce_and_submit(self) -> None:
        for robot, site in ROBOTS:
            self.producer.send(catalog.ROBOTS, events.RobotAnnouncedV1(
                site=site, robot_id=self.robot_ids[robot], spec=self.spec))
        spec = ExperimentSpec.model_validate({
            "name": self.experiment, "reward": REWARD,
            "robots": [{"robot_type": self.robot_type, "count": 2}],
            "algorithm": {"utd_ratio": 1.0, "batch_size": 16, "warmup_steps": 20},
            "policy": {"hidden": [16, 16]},
            "buffer": {"memory_budget_mb": 8},
            "weight_sync": {"every_updates": 100, "every_s": 2.0},
            "stop": {"target_success": 1.0, "success_window": 1000},
        })
        self.producer.send(catalog.EXPERIMENTS, events.ExperimentSubmittedV1(
            experiment_id=self.experiment, spec=spec.model_dump(mode="json")))
        self.producer.flush()

    def batch(self, number: int, robot: str) -> RewardedTransitionBatch:
        site = dict(ROBOTS)[robot]
        raw = samples.batch(self.spec, STEPS, rng=number, site=site,
                            robot_id=self.robot_ids[robot], experiment_id=self.experiment,
                            first_step=number * STEPS, episode_len=25)
        return RewardedTransitionBatch.from_raw(
            raw, reward_fn=REWARD, reward=-np.abs(raw.observation[:, 0]),
            success=np.zeros(STEPS, bool), terminated=np.zeros(STEPS, bool))

    def send(self, batch: RewardedTransitionBatch, *, repeat: bool = False) -> None:
        """Produce ``batch``; ``repeat`` marks a reward job's retry (not a new step)."""
        rec = serde.encode(catalog.TRANSITIONS, batch, sites=self.kafka.sites)
        self.producer.send_encoded(replace(rec, topic=self.topic))
        if not repeat:
            self.produced.append(batch)

    def produce(self, numbers: range) -> None:
        for n in numbers:
            for robot, _ in ROBOTS:
                self.send(self.batch(n, robot))
        self.producer.flush()

    def fingerprint(self) -> int:
        b = self.produced
        return loop.fingerprint(np.concatenate([np.full(len(x), x.robot_id) for x in b]),
                                np.concatenate([x.episode_id for x in b]),
                                np.concatenate([x.step for x in b]))

    def env(self) -> dict[str, str]:
        return {**os.environ, "USER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
                "USER_HOME": str(self.home), "USER_LOG_LEVEL": "INFO",
                "USER_LEARN_TORCH_THREADS": "1"}

    def start_sink(self, processes: Processes) -> subprocess.Popen[bytes]:
        return processes.userctl(
            "sink", "sink", "--static", "--root", str(self.root), "--name", self.sink_name,
            "--topics", catalog.TRANSITIONS.name, "--topic-suffix", self.suffix,
            "--flush-rows", "40", "--flush-interval", "0.3", "--compact-interval", "0",
            env=self.env())

    def start_learner(self, processes: Processes, *extra: str) -> subprocess.Popen[bytes]:
        return processes.userctl(
            "learn", "learn", self.experiment, "--delta-root", str(self.root), "--sink-name",
            self.sink_name, "--topic-suffix", self.suffix, "--metrics-s", "0.3", *extra,
            env=self.env())

    def sink_caught_up(self) -> bool:
        c = Consumer(self.kafka.consumer_config(f"probe-{self.suffix}", role="probe"))
        try:
            parts = c.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            ends = {p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                    for p in parts}
        finally:
            c.close()
        try:
            dt = DeltaTable(tables.table_path(self.root, tables.TRANSITIONS))
        except TableNotFoundError:
            return False
        for p, end in ends.items():
            version = dt.transaction_version(tables.app_id(self.sink_name, self.topic, p))
            if end > 0 and (version is None or version < end - 1):
                return False
        return True

    def latest(self) -> events.LearnerMetricsV1 | None:
        for item in self.watch.poll(0.2):
            if isinstance(item, Accepted) and isinstance(item.event, events.LearnerMetricsV1) \
                    and item.event.experiment_id == self.stream:
                self.metrics.append(item.event)
        return self.metrics[-1] if self.metrics else None

    def wait_metrics(self, what: str, check: Callable[[dict[str, float | None]], bool],
                     proc: subprocess.Popen[bytes], processes: Processes,
                     timeout_s: float = 60.0) -> events.LearnerMetricsV1:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            event = self.latest()
            if event is not None and check(event.metrics):
                return event
            if proc.poll() is not None:
                raise AssertionError(f"the learner exited ({proc.returncode}) waiting for "
                                     f"{what}:\n{processes.log('learn')[-3000:]}")
        last = self.metrics[-1].metrics if self.metrics else None
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last "
                             f"metrics {last}\n{processes.log('learn')[-3000:]}")

    def close(self) -> None:
        self.watch.close()


def wait_until(what: str, cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=60)


@pytest.fixture
def setup(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[Setup]:
    s = Setup(kafka, unique, tmp_path)
    s.announce_and_submit()
    try:
        yield s
    finally:
        s.close()


def test_warm_start_from_delta_continues_from_kafka_where_the_history_ends(
        setup: Setup, processes: Processes) -> None:
    # History: batches 0-11 of both robots, plus a reward job's retry the sink drops.
    setup.produce(range(12))
    setup.send(setup.batch(5, "r1"), repeat=True)
    setup.producer.flush()
    sink = setup.start_sink(processes)
    wait_until("the sink to write the history", setup.sink_caught_up)
    assert stop(sink) == 0
    # Only in Kafka: batches 12-17, and retries of a batch in Delta and of one that is not.
    setup.produce(range(12, 15))
    setup.send(setup.batch(10, "r2"), repeat=True)
    setup.send(setup.batch(14, "r1"), repeat=True)
    setup.produce(range(15, 18))

    learner = setup.start_learner(processes)
    m = setup.wait_metrics("every produced step in the buffer",
                           lambda m: m["charts/env_steps"] == 2 * 18 * STEPS, learner, processes)
    assert m.metrics["replay/history_steps"] == 2 * 12 * STEPS
    assert m.metrics["replay/live_steps"] == 2 * 6 * STEPS
    assert m.metrics["replay/duplicates_dropped"] == 2 * STEPS
    assert m.metrics["replay/steps_fingerprint"] == setup.fingerprint()

    # Live steps keep coming in while it learns.
    setup.produce(range(18, 20))
    m = setup.wait_metrics("the live steps", lambda m: m["charts/env_steps"] == 2 * 20 * STEPS
                           and m["charts/update_step"] == 2 * 20 * STEPS - 20,
                           learner, processes)
    assert m.metrics["replay/steps_fingerprint"] == setup.fingerprint()
    assert m.metrics["replay/version_lag_mean"] is not None
    assert stop(learner) == 0
    log = processes.log("learn")
    assert re.search(r"warm start: Delta version \d+, 240 rows", log), log[-3000:]
    checkpoints = setup.home / "learners" / setup.experiment / "checkpoints"
    assert any(checkpoints.glob("checkpoint-*.safetensors")), "no checkpoint on SIGTERM"


def test_a_learner_killed_mid_run_resumes_with_every_step_once(
        setup: Setup, processes: Processes) -> None:
    sink = setup.start_sink(processes)
    learner = setup.start_learner(processes, "--checkpoint-s", "0.5")
    setup.produce(range(10))
    setup.wait_metrics("the first steps learned from",
                       lambda m: m["charts/env_steps"] == 200 and m["charts/update_step"] == 180,
                       learner, processes)
    checkpoints = setup.home / "learners" / setup.experiment / "checkpoints"
    wait_until("a checkpoint at update step 180",
               lambda: (checkpoints / "checkpoint-000000000180.safetensors").exists())
    setup.produce(range(10, 12))
    stop(learner, signal.SIGKILL)
    setup.produce(range(12, 15))  # while the learner is down
    wait_until("the sink to write what it got", setup.sink_caught_up)
    assert stop(sink) == 0
    setup.produce(range(15, 17))  # only in Kafka when the learner comes back

    learner = setup.start_learner(processes)
    m = setup.wait_metrics("every step once after the restart",
                           lambda m: m["charts/env_steps"] == 2 * 17 * STEPS
                           and m["charts/update_step"] == 2 * 17 * STEPS - 20,
                           learner, processes)
    assert m.metrics["replay/steps_fingerprint"] == setup.fingerprint()
    assert m.metrics["replay/history_steps"] == 2 * 15 * STEPS
    assert m.metrics["replay/live_steps"] == 2 * 2 * STEPS
    assert (m.metrics["charts/resumed_update_step"] or 0) >= 180
    assert "resumed from" in processes.log("learn")
    assert stop(learner) == 0
