"""The Delta sink reports a gap (issue 10, deliverable 4): records deleted on the broker
past its Delta app-transaction version are named on ``gaps`` when it resumes, with the
first and last offset that were lost, and a WARNING; the records after them are sunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline import sink
from schemas import samples
from topics import admin, catalog, gaps, serde
from topics.producer import EventProducer
from topics.settings import KafkaSettings

SPEC = samples.robot_spec(obs_dim=6, act_dim=2, info={"ee_pos": 3, "goal_pos": 3})


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Running:
    """A DeltaSink on its own thread (static assignment: it starts reading at once)."""

    def __init__(self, kafka: KafkaSettings, settings: sink.SinkSettings) -> None:
        self.sink = sink.DeltaSink(kafka, settings)
        self.thread = threading.Thread(target=self.sink.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.sink.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_records_deleted_past_the_delta_version_are_reported_when_the_sink_resumes(
        kafka: KafkaSettings, unique: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    suffix = f".t{unique}"
    topic = catalog.TRANSITIONS_RAW.name + suffix
    admin.ensure_topics(kafka, [s.model_copy(update={"name": s.name + suffix})
                                for s in (catalog.TRANSITIONS_RAW, catalog.DLQ, catalog.GAPS)])
    producer = EventProducer(kafka, role="test")
    robot = f"r1-{unique}"

    def produce(numbers: range) -> int:
        for n in numbers:
            batch = samples.batch(SPEC, 10, rng=n, robot_id=robot, first_step=n * 10,
                                  episode_len=25)
            rec = serde.encode(catalog.TRANSITIONS_RAW, batch, sites=kafka.sites)
            producer.send_encoded(replace(rec, topic=topic))
            assert rec.partition is not None
            partition = rec.partition
        producer.flush()
        return partition

    settings = sink.SinkSettings(name=f"sink-{unique}", root=tmp_path / "delta",
                                 topics=(catalog.TRANSITIONS_RAW.name,), topic_suffix=suffix,
                                 static=True, flush_interval_s=0.2, compact_interval_s=0)
    partition = produce(range(4))  # offsets 0..3, written to Delta (version 3)
    first = Running(kafka, settings)
    try:
        wait_for("the first 40 rows in Delta", lambda: first.sink.committed_rows == 40)
    finally:
        first.stop()
    assert first.sink.gaps.gaps == 0

    produce(range(4, 9))  # offsets 4..8, while the sink is down
    client = AdminClient(kafka.admin_config())  # kept: its futures die with it
    futures = client.delete_records([TopicPartition(topic, partition, 7)],
                                    operation_timeout=30)
    for future in futures.values():
        assert future.result(30).low_watermark == 7

    second = Running(kafka, settings)
    try:
        wait_for("offsets 7 and 8 in Delta", lambda: second.sink.committed_rows == 20)
    finally:
        second.stop()
    assert (second.sink.gaps.gaps, second.sink.gaps.missing) == (1, 3)
    (gap,) = gaps.read(kafka, topic_suffix=suffix)
    assert (gap.topic, gap.partition, gap.first_missing, gap.last_missing) == (
        topic, partition, 4, 6)
    assert gap.consumer == settings.name and gap.experiment_id is None
    # A sink's gap concerns every experiment, so each experiment's listing shows it.
    assert gaps.read(kafka, experiment_id="any-experiment", topic_suffix=suffix) == [gap]
    assert any(f"{topic}[{partition}] offsets 4..6 (3 records) no longer exist"
               in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
