"""A Delta commit refused mid-batch loses no record: the sink reads the batch again.

What a user relies on: when another sink changes the table under this one (Delta refuses
the commit, "metadata changed"), the refused rows are read again from Kafka and every
record still lands in Delta exactly once.  The writer drops the refused rows and the sink
re-seeks their partition; librdkafka drops what it had fetched before the seek, but not
the records ``consume()`` already returned in the current batch.  Those later records of
the re-seeked partition must be skipped: taking one (offset 4, say) would move the writer
past offsets 0-3, which would then be refused as already read when they come again, and
their rows would be silently missing from Delta.

Deterministic, without a broker: a scripted consumer stands in for librdkafka (a seek
changes only what later ``consume()`` calls return), the Delta table is real, and the
conflict is real too: a second sink commits a new schema to the same table between this
sink's reading the table and its commit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from deltalake import DeltaTable, write_deltalake

from pipeline import delta_writer, tables
from pipeline.delta_writer import DeltaWriter
from pipeline.sink import DeltaSink, SinkSettings
from schemas import events
from topics import catalog, serde
from topics import tables as contract
from topics.settings import KafkaSettings

TOPIC = catalog.EPISODES.name  # JSON values: no robot specs to announce
RECORDS = 8  # one consumed batch ...
FLUSH_ROWS = 4  # ... whose first commit comes half-way through it


def started(n: int) -> events.EpisodeStartedV1:
    return events.EpisodeStartedV1(site="lab-a", robot_id="r1", experiment_id="exp-1",
                                   episode_id=f"ep-{n}", policy_version=0)


def message(offset: int) -> Message:
    """The record at ``offset`` of partition 0, encoded as a producer would."""
    enc = serde.encode(catalog.EPISODES, started(offset))
    return Message(topic=TOPIC, partition=0, offset=offset, key=enc.key, value=enc.value,
                   headers=list(enc.headers))


class ScriptedConsumer:
    """One partition's log, consumed like librdkafka: a seek moves the fetch position for
    later ``consume()`` calls, never the batch already returned.  Once the log is read to
    its end it stops the sink (``on_drained``), so the test needs no sleeps."""

    def __init__(self, log: list[Message]) -> None:
        self.log = log
        self.position = 0
        self.batches: list[list[int | None]] = []  # offsets each consume() returned
        self.seeks: list[int] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.on_drained: Callable[[], None] = lambda: None
        self.closed = False

    def list_topics(self, topic: str, timeout: float = -1) -> SimpleNamespace:
        meta = SimpleNamespace(error=None, partitions={0: SimpleNamespace(id=0)})
        return SimpleNamespace(topics={topic: meta} if topic == TOPIC else {})

    def _start(self, offset: int) -> int:
        return 0 if offset == OFFSET_BEGINNING else offset

    def assign(self, partitions: list[TopicPartition]) -> None:
        (tp,) = partitions
        self.position = self._start(tp.offset)

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append(tp.offset)
        self.position = self._start(tp.offset)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        assert len(self.batches) < 10, f"the sink keeps reading: {self.batches}"
        out = self.log[self.position:self.position + num_messages]
        self.position += len(out)
        self.batches.append([m.offset() for m in out])
        if not out:
            self.on_drained()
        return out

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        return 0, len(self.log)

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.closed = True


def test_a_commit_refused_mid_batch_loses_no_record_of_that_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tables.table_path(tmp_path, tables.EPISODES)
    # Another sink (its own partition, its own app transactions) already writes the table.
    other = DeltaWriter(path, TOPIC, lambda p: contract.app_id("other-sink", TOPIC, p),
                        dedupe=False)
    other.assign([1])
    other.add(1, 0, started(100))
    assert other.commit() == {}

    # Between this sink's reading the table and its first commit, the other sink commits
    # an episode end: new columns, so Delta refuses this sink's commit (metadata changed).
    raced: list[bool] = []

    def write_after_a_schema_change(*args: Any, **kwargs: Any) -> None:
        if not raced:
            raced.append(True)
            other.add(1, 1, events.EpisodeEndedV1(
                site="lab-a", robot_id="r1", experiment_id="exp-1", episode_id="ep-100",
                steps=3, reason=events.EpisodeEndReason.TIME_LIMIT, duration_s=1.0,
                first_policy_version=0, last_policy_version=0))
            assert other.commit() == {}
        write_deltalake(*args, **kwargs)

    monkeypatch.setattr(delta_writer, "write_deltalake", write_after_a_schema_change)

    fake = ScriptedConsumer([message(o) for o in range(RECORDS)])
    settings = SinkSettings(name="sink-a", root=tmp_path, topics=(TOPIC,), static=True,
                            flush_rows=FLUSH_ROWS, flush_bytes=1 << 30,
                            flush_interval_s=3600.0, compact_interval_s=0.0,
                            poll_records=RECORDS)
    # Nothing listens there: the dead-letter producer is made but never sends.
    sink = DeltaSink(KafkaSettings(bootstrap="127.0.0.1:1"), settings,
                     consumer=cast(Consumer, fake))
    fake.on_drained = sink.stop
    sink.run()

    assert raced, "the sink never committed"
    assert fake.seeks == [OFFSET_BEGINNING]  # the refused commit re-read partition 0 ...
    assert fake.batches[:2] == [list(range(RECORDS))] * 2  # ... whole batch delivered again
    assert fake.closed

    dt = DeltaTable(path)
    assert dt.transaction_version(contract.app_id("sink-a", TOPIC, 0)) == RECORDS - 1
    mine = dt.to_pyarrow_table(filters=[("kafka_partition", "=", 0)])
    offsets = sorted(mine.column("kafka_offset").to_pylist())
    assert offsets == list(range(RECORDS)), "each record in Delta exactly once"
    assert sorted(mine.column("episode_id").to_pylist()) == sorted(
        f"ep-{o}" for o in range(RECORDS))
    # The other sink's rows are untouched; lag monitors see partition 0 fully read.
    assert dt.to_pyarrow_table(filters=[("kafka_partition", "=", 1)]).num_rows == 2
    assert fake.commits[-1] == [(TOPIC, 0, RECORDS)]
