"""Consumer lag in records and seconds (``topics.lag``), and the sink's monitoring commits."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline import sink
from schemas import events as ev
from tests.conftest import REPO, create_topic
from topics import admin, catalog, lag, serde
from topics.producer import EventProducer
from topics.settings import KafkaSettings


def test_a_stopped_groups_lag_is_the_age_of_its_oldest_unconsumed_record_and_keeps_growing(
    kafka: KafkaSettings, unique: str,
) -> None:
    topic = create_topic(kafka, f"lag-{unique}").name
    base_ms = int(time.time() * 1000) - 600_000
    producer = Producer(kafka.producer_config(role="test"))
    for i in range(10):
        producer.produce(topic, value=b"x", partition=0, timestamp=base_ms + 1000 * i)
    assert producer.flush(30) == 0
    group = f"lag-group-{unique}"
    consumer = Consumer(kafka.consumer_config(group, role="test"))
    consumer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    consumer.close()  # the group has stopped: it has offsets and no member

    now = time.time()
    (found,) = lag.group_lags(kafka, [group], now=now)
    assert found.group == group and found.members == 0
    assert found.records == 6
    assert found.seconds is not None
    assert abs(found.seconds - (now - (base_ms + 4000) / 1000)) < 0.01
    (later,) = lag.group_lags(kafka, [group], now=now + 100)
    assert later.seconds is not None and abs(later.seconds - found.seconds - 100) < 0.01
    assert group in {g.group for g in lag.group_lags(kafka)}


def test_the_sink_commits_what_is_durable_in_delta_to_its_group_for_lag_monitors(
    kafka: KafkaSettings, unique: str, tmp_path: Path,
) -> None:
    suffix = f".lag{unique}"
    spec = catalog.EPISODES.model_copy(update={"name": catalog.EPISODES.name + suffix})
    dlq = catalog.DLQ.model_copy(update={"name": catalog.DLQ.name + suffix})
    admin.ensure_topics(kafka, [spec, dlq])
    producer = EventProducer(kafka, role="test")
    for i in range(5):
        event = ev.EpisodeEndedV1(
            site="lab-a", robot_id="r1", experiment_id=f"lag-{unique}",
            episode_id=uuid.uuid4().hex[:12], steps=50, reason=ev.EpisodeEndReason.TIME_LIMIT,
            duration_s=2.5, first_policy_version=0, last_policy_version=i)
        rec = serde.encode(catalog.EPISODES, event, sites=kafka.sites)
        producer.send_encoded(dataclasses.replace(rec, topic=spec.name))
    producer.flush(30)
    name = f"sink-{unique}"
    runner = sink.DeltaSink(kafka, sink.SinkSettings(
        name=name, root=tmp_path / "delta", topic_suffix=suffix, static=True,
        topics=(catalog.EPISODES.name,), flush_interval_s=0.2, compact_interval_s=0))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            found = lag.group_lags(kafka, [name])
            if found and found[0].partitions and sum(
                    p.committed for p in found[0].partitions) >= 5:
                break
            assert thread.is_alive(), "the sink stopped"
            assert time.monotonic() < deadline, f"no monitoring commit in 60 s: {found}"
    finally:
        runner.stop()
        thread.join(30)
    (group,) = lag.group_lags(kafka, [name])
    assert group.records == 0 and group.seconds == 0.0
    assert runner.committed_rows == 5

    described = subprocess.run(
        [str(REPO / "infra" / "bin" / "kafka-consumer-groups"), "--bootstrap-server",
         kafka.bootstrap, "--describe", "--group", name],
        capture_output=True, text=True, timeout=120)
    lines = [line.split() for line in described.stdout.splitlines() if spec.name in line]
    assert lines, described.stdout + described.stderr
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG …: no "-" any more.
    assert sum(int(cols[3]) for cols in lines if cols[3] != "-") == 5
    assert all(cols[5] in ("0", "-") for cols in lines)
