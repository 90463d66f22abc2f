"""Consume events: thin Kafka shells around :func:`topics.validation.validate`.

* :class:`EventConsumer` — a consumer-group member for services.  Records it cannot
  accept go to ``dlq`` (:class:`KafkaDeadLetters`) and it carries on; offsets move only
  when the caller says its effect is durable (:meth:`EventConsumer.commit`).
* :class:`TopicReader` — reads chosen partitions from chosen positions without a group,
  for tools (``userctl tail``) and for rebuilding state (:func:`read_robot_specs`); it
  commits nothing and writes nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from schemas import events
from schemas.spaces import RobotSpec
from topics import catalog, validation
from topics.catalog import TopicSpec
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Record, Rejected, Rules

log = logging.getLogger(__name__)


def record_of(msg: Message) -> Record:
    """The library-independent view of a confluent-kafka message."""
    _, ts = msg.timestamp()
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
    return Record(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        value=msg.value(),
        key=msg.key(),
        headers=tuple(headers),
        timestamp_ms=ts if ts > 0 else None,
    )


class DeadLetterSink(Protocol):
    """Where a consumer puts records it refused."""

    def send(self, rejected: Rejected) -> None: ...

    def flush(self) -> None:
        """Return once every sent dead letter is durable; raise if one is not."""


class KafkaDeadLetters:
    """Writes each refused record to ``dlq`` as a :class:`~schemas.events.DeadLetterV1`."""

    def __init__(self, producer: EventProducer, *, consumer: str) -> None:
        self._producer = producer
        self._consumer = consumer
        self.sent = 0

    def send(self, rejected: Rejected) -> None:
        rec = rejected.record
        log.warning("dead letter: %s[%d]@%d %s: %s", rec.topic, rec.partition, rec.offset,
                    rejected.reason.value, validation.excerpt(rejected.detail))
        self._producer.send(catalog.DLQ, validation.dead_letter(rejected, consumer=self._consumer))
        self.sent += 1

    def flush(self) -> None:
        self._producer.flush()


class _Client(Protocol):
    """The part of ``confluent_kafka.Consumer`` the shells use (fakes implement it)."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
               ) -> list[TopicPartition]: ...

    def close(self) -> None: ...


def _usable(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return True
    if err.code() == KafkaError._PARTITION_EOF:
        return False
    if err.fatal():
        raise KafkaException(err)
    log.warning("consumer error (retried by the client): %s", err.str())
    return False


class EventConsumer:
    """A consumer-group member that yields accepted events and dead-letters the rest.

    Usage (the at-least-once loop)::

        with EventConsumer(settings, [catalog.HEARTBEATS], group_id="controller") as c:
            while running:
                for accepted in c.poll(1.0):
                    apply(accepted.event)
                make_effects_durable()
                c.commit()

    Robot announcements it reads (on any subscribed topic) are remembered, and later
    transition batches are checked against them.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        specs: Sequence[TopicSpec],
        *,
        group_id: str,
        rules: Rules | None = None,
        dead_letters: DeadLetterSink | None = None,
        from_beginning: bool = True,
        client: _Client | None = None,
        role: str = "consumer",
    ) -> None:
        base = rules or Rules()
        self._robots: dict[str, RobotSpec] = dict(base.robots)
        self._rules = Rules(robots=self._robots, require_announced=base.require_announced,
                            check_keys=base.check_keys, registry=base.registry,
                            serde=base.serde)
        self._next: dict[tuple[str, int], int] = {}
        self.group_id = group_id
        self.accepted = 0
        self.rejected = 0
        self._own_producer: EventProducer | None = None
        if dead_letters is None:
            self._own_producer = EventProducer(settings, role=f"{role}-dlq")
            dead_letters = KafkaDeadLetters(self._own_producer, consumer=group_id)
        self._dead_letters = dead_letters
        if client is None:
            real = Consumer(settings.consumer_config(group_id, role=role,
                                                     from_beginning=from_beginning))
            real.subscribe([s.name for s in specs], on_revoke=self._revoked)
            self._client: _Client = real
        else:
            self._client = client

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Offsets of partitions we lost are not committed: their new owner re-reads
        # from the last commit (at-least-once).
        for tp in partitions:
            self._next.pop((tp.topic, tp.partition), None)

    @property
    def robots(self) -> dict[str, RobotSpec]:
        """Robot specs known so far (given, or read from announcements)."""
        return self._robots

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Accepted]:
        """Accepted events of up to ``max_records`` records; refused ones go to the
        dead-letter sink.  Never raises for bad input; raises ``KafkaException`` only
        for a fatal client error."""
        out: list[Accepted] = []
        # Delivery: at-least-once.  Offsets move only in commit(), after the caller's
        # effects and the dead letters are durable; a crash before it re-reads the records.
        for msg in self._client.consume(max_records, timeout_s):
            if not _usable(msg):
                continue
            result = self.accept(record_of(msg))
            if result is not None:
                out.append(result)
        return out

    def accept(self, record: Record) -> Accepted | None:
        """Validate one record: return it accepted, or dead-letter it and return None."""
        result = validation.validate(record, self._rules)
        self._next[(record.topic, record.partition)] = record.offset + 1
        if isinstance(result, Rejected):
            self.rejected += 1
            if record.topic == catalog.DLQ.name:
                # Never dead-letter a dead letter: that could loop forever.
                log.error("unreadable dead letter at dlq[%d]@%d: %s", record.partition,
                          record.offset, validation.excerpt(result.detail))
            else:
                self._dead_letters.send(result)
            return None
        self.accepted += 1
        event = result.event
        if isinstance(event, events.RobotAnnouncedV1):
            self._robots[event.robot_id] = event.spec
        return result

    def commit(self) -> None:
        """Commit the offsets of every record polled so far.

        Call it only once the effect of the accepted events is durable.  Dead letters
        are flushed first, so a refused record is on ``dlq`` before its offset moves.
        """
        if not self._next:
            return
        self._dead_letters.flush()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._next.items()]
        self._client.commit(offsets=offsets, asynchronous=False)
        self._next.clear()

    def close(self) -> None:
        """Leave the group without committing (uncommitted records are read again)."""
        self._client.close()
        if self._own_producer is not None:
            self._own_producer.flush()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Where a :class:`TopicReader` starts: first offset, the end, or the last N per partition.
Start = Literal["beginning", "end"] | int


class TopicReader:
    """Reads one topic's partitions from a start position, without a consumer group.

    ``sites`` restricts a site-partitioned topic to those sites' partitions.  Commits
    nothing and writes nothing (refused records are returned, not dead-lettered).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        spec: TopicSpec,
        *,
        start: Start = "beginning",
        sites: Sequence[str] = (),
        rules: Rules | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.spec = spec
        self._rules = rules or Rules()
        group = f"{settings.client_id}-reader-{uuid.uuid4().hex[:12]}"
        self._client = Consumer(settings.consumer_config(group, role="reader"))
        meta = self._client.list_topics(spec.name, timeout=timeout_s).topics.get(spec.name)
        if meta is None or meta.error is not None or not meta.partitions:
            self._client.close()
            raise LookupError(f"topic {spec.name!r} does not exist on {settings.bootstrap}; "
                              "run `userctl topics create`")
        partitions = sorted(meta.partitions)
        if sites and spec.site_partitioned:
            wanted = {p for s in sites for p in settings.sites.partitions_of(s)}
            partitions = [p for p in partitions if p in wanted]
        self.end: dict[int, int] = {}
        assignment = []
        for p in partitions:
            low, high = self._client.get_watermark_offsets(
                TopicPartition(spec.name, p), timeout=timeout_s)
            if start == "beginning":
                offset = low
            elif start == "end":
                offset = high
            else:
                offset = max(low, high - int(start))
            self.end[p] = high
            assignment.append(TopicPartition(spec.name, p, offset))
        self._position = {tp.partition: tp.offset for tp in assignment}
        self._client.assign(assignment)

    def _at_end(self) -> bool:
        return all(self._position[p] >= end for p, end in self.end.items())

    def read(self, *, follow: bool = False, idle_s: float = 2.0
             ) -> Iterator[Accepted | Rejected]:
        """Records in partition order, validated.

        Without ``follow``, stops at the end offsets seen at start (or after ``idle_s``
        without a record, which covers transaction markers at the end of a partition).
        """
        last = time.monotonic()
        # Delivery: none to keep — a read-only view that commits nothing, so every read
        # starts from the positions given to the constructor.
        while follow or not self._at_end():
            msgs = self._client.consume(200, 0.2)
            if not msgs and not follow and time.monotonic() - last > idle_s:
                return
            for msg in msgs:
                if not _usable(msg):
                    continue
                last = time.monotonic()
                rec = record_of(msg)
                self._position[rec.partition] = rec.offset + 1
                yield validation.validate(rec, self._rules)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_robot_specs(settings: KafkaSettings, timeout_s: float = 10.0) -> dict[str, RobotSpec]:
    """The latest announced spec of every robot, read from ``robots`` up to its end."""
    specs: dict[str, RobotSpec] = {}
    with TopicReader(settings, catalog.ROBOTS, start="beginning", timeout_s=timeout_s) as r:
        for result in r.read():
            if isinstance(result, Accepted) and isinstance(result.event,
                                                           events.RobotAnnouncedV1):
                specs[result.event.robot_id] = result.event.spec
    return specs
