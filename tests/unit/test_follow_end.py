"""``Follower(..., "end")`` reads everything written after it was made.

The logical ``OFFSET_END`` is resolved by librdkafka's fetcher some time after ``assign``;
a record written in between (a dead letter the code under watch produced at once) was then
never read — ``test_bad_records_land_on_dlq_and_the_consumer_carries_on`` saw one of its four
dead letters under load.  The follower must start at the end as it stood when made.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from confluent_kafka import TopicPartition

from topics import catalog, follow
from topics.settings import KafkaSettings


class _Consumer:
    """The calls Follower makes while it is made, on a topic of 2 partitions."""

    assigned: ClassVar[list[TopicPartition]] = []

    def __init__(self, _config: dict[str, Any]) -> None:
        pass

    def list_topics(self, name: str, timeout: float) -> Any:
        return SimpleNamespace(
            topics={name: SimpleNamespace(error=None, partitions={0: 0, 1: 1})})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return (3, 40) if tp.partition == 0 else (0, 7)

    def assign(self, partitions: list[TopicPartition]) -> None:
        type(self).assigned = partitions


def test_end_is_the_end_when_the_follower_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "Consumer", _Consumer)
    follow.Follower(KafkaSettings(bootstrap="127.0.0.1:1"), {catalog.DLQ: "end"})
    assert [(tp.partition, tp.offset) for tp in _Consumer.assigned] == [(0, 40), (1, 7)]
    follow.Follower(KafkaSettings(bootstrap="127.0.0.1:1"), {catalog.DLQ: "beginning"})
    assert [(tp.partition, tp.offset) for tp in _Consumer.assigned] == [(0, 3), (1, 0)]
