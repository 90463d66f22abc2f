"""Replication lag reads MirrorMaker 2's flushed offsets wherever Connect put them.

Connect spreads a flow's offset records over its offsets topic's 25 partitions by key
hash.  The probe behind `userctl status` / `userctl mirror lag` used to look at partition 0
only: for a source whose keys hash elsewhere (lab-a's, in the process topology) it found
nothing and reported every record ever written as "behind", mid-run with the mirror
fully caught up.
"""

from __future__ import annotations

import json

from confluent_kafka import Producer

from infra import mirror
from tests.conftest import create_topic
from topics.settings import KafkaSettings

CONNECT_PARTITIONS = 25


def test_lag_counts_offsets_flushed_to_any_partition_of_the_offsets_topic(
        kafka: KafkaSettings, unique: str) -> None:
    source = f"site-{unique}"
    data = create_topic(kafka, f"lagged-{unique}", partitions=2)
    create_topic(kafka, mirror.offsets_topic(source), partitions=CONNECT_PARTITIONS)
    producer = Producer(kafka.producer_config())
    for p, n in ((0, 10), (1, 4)):
        for _ in range(n):
            producer.produce(data.name, value=b"x", partition=p)
    # MM2 copied partition 0 up to offset 6 (its last flush recorded offset 6, i.e. 7
    # records) and partition 1 up to 3; the records sit in partitions 8 and 17, never 0,
    # and an older flush of partition 0 comes first in partition 8.
    for partition, topic_partition, offset in ((8, 0, 2), (8, 0, 6), (17, 1, 3)):
        key = ["MirrorSourceConnector",
               {"cluster": source, "partition": topic_partition, "topic": data.name}]
        producer.produce(mirror.offsets_topic(source), key=json.dumps(key).encode(),
                         value=json.dumps({"offset": offset}).encode(), partition=partition)
    # Another flow's records in the same topic do not count.
    producer.produce(mirror.offsets_topic(source), partition=3, key=json.dumps(
        ["MirrorSourceConnector", {"cluster": "other", "partition": 0,
                                   "topic": data.name}]).encode(), value=b'{"offset": 9}')
    assert producer.flush(30) == 0

    lag = mirror.flow_lag(kafka.bootstrap, kafka.bootstrap, source, "lab-a", "up", (data,))

    assert lag.records == {data.name: (10 - 7) + 0}
    assert lag.total == 3
