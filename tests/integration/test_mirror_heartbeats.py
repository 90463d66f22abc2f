"""MirrorMaker 2's heartbeats read back from a real broker (``topics.mirror_heartbeats``).

The records are written in MM2's own format (the key/value layout checked against a
record MM2 4.1.1 wrote, in tests/unit/test_fleet_sites.py) into a topic of this test's own.
"""

from __future__ import annotations

import struct
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from topics import mirror_heartbeats
from topics.settings import KafkaSettings


def mm2_record(source: str, target: str, ms: int) -> tuple[bytes, bytes]:
    key = b"".join(struct.pack(">h", len(s)) + s for s in (source.encode(), target.encode()))
    return key, struct.pack(">hq", 0, ms)


def test_heartbeats_are_followed_and_the_last_of_each_site_is_found(
        kafka: KafkaSettings, unique: str) -> None:
    topic = f"mm2-heartbeats-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    now_ms = int(time.time() * 1000)
    for source, ms in [("lab-a", now_ms - 20_000), ("lab-a", now_ms - 10_000),
                       ("lab-b", now_ms - 1_000)]:
        key, value = mm2_record(source, "cloud", ms)
        producer.produce(topic, key=key, value=value, timestamp=ms)
    producer.produce(topic, key=b"not mm2", value=b"{}")
    assert producer.flush(10.0) == 0

    assert mirror_heartbeats.last_heard(kafka, topic=topic) == {
        "lab-a": (now_ms - 10_000) / 1000, "lab-b": (now_ms - 1_000) / 1000}
    # A look-back shorter than lab-a's silence no longer sees it (its hold is over).
    assert set(mirror_heartbeats.last_heard(kafka, topic=topic, lookback_s=5.0)) == {"lab-b"}

    reader = mirror_heartbeats.MirrorHeartbeats(kafka, topic=topic, lookback_s=60.0)
    try:
        heard: list[str] = []
        deadline = time.monotonic() + 30
        while len(heard) < 3 and time.monotonic() < deadline:
            heard += [b.source for b in reader.poll()]
            time.sleep(0.05)  # poll() never waits: pace the loop
        assert heard == ["lab-a", "lab-a", "lab-b"]
    finally:
        reader.close()


def test_without_a_mirror_there_is_nothing_to_hear(kafka: KafkaSettings, unique: str) -> None:
    topic = f"mm2-heartbeats-absent-{unique}"
    assert mirror_heartbeats.last_heard(kafka, topic=topic) == {}
    reader = mirror_heartbeats.MirrorHeartbeats(kafka, topic=topic)
    try:
        assert reader.poll() == []
    finally:
        reader.close()
