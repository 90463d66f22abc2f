"""Gaps: records a consumer expected to read that no longer exist.

A consumer that resumes at a position it keeps itself (the sink's Delta app transactions,
the learner's history offsets) expects its next record at that offset.  Retention,
``AdminClient.delete_records`` or a truncated partition can remove it first, and Kafka
then moves the consumer on to the first record still stored without a word.  This module
makes that loud:

* :func:`missing` (pure) — given the offset expected next, the partition's low watermark
  and the offset actually received, the offsets that are gone, or ``None``;
* :class:`Expected` (pure) — a consumer's expected next offset per partition, checked
  against every record it receives (the watermark is asked for only on a jump);
* :class:`GapReporter` — says it: a :class:`~schemas.events.GapDetectedV1` on ``gaps``,
  a WARNING, and counts for the consumer's metrics;
* :func:`read` — the gaps reported so far (``userctl history gaps``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas import events
from schemas.events import SchemaError
from topics import catalog, serde
from topics.consumer import record_of
from topics.producer import DeliveryError, EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: ``(first_missing, last_missing)``, both inclusive.
Missing = tuple[int, int]


def missing(expected: int, low_watermark: int, received: int | None = None) -> Missing | None:
    """The offsets a consumer expected and can no longer read, or ``None``.

    ``expected`` is the offset it should read next, ``low_watermark`` the partition's
    first offset still stored, ``received`` the offset of the record it got instead
    (``None`` before it got any).  Offsets from ``expected`` up to the lower of the other
    two are gone.  A jump over offsets that still exist (transaction markers, aborted
    records) is not a gap, nor is a record at or before ``expected``.
    """
    end = low_watermark if received is None else min(low_watermark, received)
    if expected < 0 or end <= expected:
        return None
    return expected, end - 1


class Expected:
    """A consumer's expected next offset of each partition of one topic.

    Partitions it has no expectation for (read from their beginning) are never gaps
    until their first record sets one.
    """

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def expect(self, partition: int, offset: int) -> None:
        """The next record of ``partition`` should be at ``offset`` (a seek, a resume)."""
        self._next[partition] = offset

    def forget(self, partition: int) -> None:
        """Drop ``partition`` (revoked from this consumer)."""
        self._next.pop(partition, None)

    def received(self, partition: int, offset: int,
                 low_watermark: Callable[[], int]) -> Missing | None:
        """Note the record at ``offset``; the gap before it, if any.

        ``low_watermark()`` is called only when ``offset`` jumps past the expected one.
        """
        expected = self._next.get(partition)
        self._next[partition] = offset + 1
        if expected is None or offset <= expected:
            return None
        return missing(expected, low_watermark(), offset)


def low_watermark(client: Consumer, topic: str, partition: int, timeout_s: float = 10.0
                  ) -> int:
    """The first offset ``topic[partition]`` still stores, asked of the broker."""
    low, _high = client.get_watermark_offsets(TopicPartition(topic, partition),
                                              timeout=timeout_s, cached=False)
    return int(low)


class GapReporter:
    """Reports gaps of one consumer: event on ``gaps`` (+ ``topic_suffix``), WARNING, counts.

    ``experiment_id`` names the experiment a consumer serves (a learner), ``None`` for a
    shared consumer (the sink).  Thread-safe as :class:`EventProducer` is.
    """

    def __init__(self, producer: EventProducer, *, consumer: str,
                 experiment_id: str | None = None, topic_suffix: str = "") -> None:
        self._producer = producer
        self.consumer = consumer
        self.experiment_id = experiment_id
        self.topic = catalog.GAPS.name + topic_suffix
        self.gaps = 0
        """gaps reported so far (the ``gaps/detected`` metric)."""
        self.missing = 0
        """offsets found gone so far (the ``gaps/missing_records`` metric)."""

    def report(self, topic: str, partition: int, gap: Missing) -> events.GapDetectedV1:
        """Say that offsets ``gap`` of ``topic[partition]`` are gone; never raises for a
        delivery problem (it is logged: the WARNING still tells)."""
        first, last = gap
        event = events.GapDetectedV1(consumer=self.consumer[:256], topic=topic,
                                     partition=partition, first_missing=first,
                                     last_missing=last, experiment_id=self.experiment_id)
        self.gaps += 1
        self.missing += event.missing
        log.warning("gap: %s[%d] offsets %d..%d (%d records) no longer exist; %s never "
                    "read them", topic, partition, first, last, event.missing, self.consumer)
        try:
            encoded = serde.encode(catalog.GAPS, event)
            self._producer.send_encoded(replace(encoded, topic=self.topic))
            self._producer.flush(10.0)
        except (BufferError, DeliveryError, TimeoutError) as exc:
            log.error("gap event for %s[%d] not delivered to %s: %s", topic, partition,
                      self.topic, exc)
        return event

    def metrics(self) -> dict[str, float]:
        return {"gaps/detected": float(self.gaps), "gaps/missing_records": float(self.missing)}


def read(settings: KafkaSettings, *, experiment_id: str | None = None, topic_suffix: str = "",
         timeout_s: float = 10.0) -> list[events.GapDetectedV1]:
    """Every gap on ``gaps`` (+ ``topic_suffix``) up to its end, oldest first.

    With ``experiment_id``: the gaps of that experiment's consumers and of the shared
    ones (the sink's, which may hold any experiment's steps).  Records that do not
    decode are skipped with a WARNING (this is a read-only view).  Raises
    ``LookupError`` if the topic does not exist.
    """
    name = catalog.GAPS.name + topic_suffix
    client = Consumer(settings.consumer_config(f"{settings.client_id}-gaps-{uuid.uuid4().hex[:12]}",
                                               role="reader"))
    try:
        meta = client.list_topics(name, timeout=timeout_s).topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            raise LookupError(f"topic {name!r} does not exist on {settings.bootstrap}; run "
                              "`userctl topics create`")
        ends: dict[int, int] = {}
        assignment = []
        for p in sorted(meta.partitions):
            low, high = client.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(name, p, low))
        found: list[events.GapDetectedV1] = []
        if not assignment:
            return found
        client.assign(assignment)
        position = {tp.partition: tp.offset for tp in assignment}
        deadline = time.monotonic() + timeout_s
        # Delivery: none to keep — a read-only view from each partition's first record.
        while any(position[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {name} took longer than {timeout_s:g} s")
            for msg in client.consume(200, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", name, err.str())
                    continue
                rec = record_of(msg)
                position[rec.partition] = rec.offset + 1
                try:
                    event = serde.decode(catalog.GAPS, rec.value, rec.headers)
                except SchemaError as exc:
                    log.warning("%s[%d]@%d is not a gap event: %s", name, rec.partition,
                                rec.offset, exc)
                    continue
                if not isinstance(event, events.GapDetectedV1):
                    continue
                if experiment_id is None or event.experiment_id in (None, experiment_id):
                    found.append(event)
        found.sort(key=lambda e: e.detected_at)
        return found
    finally:
        client.close()
