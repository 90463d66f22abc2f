"""Kafka -> Delta Lake, exactly once, the way kafka-delta-ingest does it (DESIGN §4).

This is the thin Kafka runner around :class:`pipeline.delta_writer.DeltaWriter` (one per
sunk topic), which holds the exactly-once rules: app transactions per partition, the
fencing of a second writer, dedupe by step identity (read its module doc).  The runner
does assignment, seeking each assigned partition to ``transaction_version + 1`` (the
offset the writer's ``assign`` returns), consuming, decoding and validating, and
dead-lettering what it cannot accept.  Step batches are validated against the spec their
robot announced on ``robots`` (:class:`topics.robots.RobotSpecs`: bounds, shapes; a robot
not announced yet is checked on its own, see that module): a batch outside its robot's
bounds is dead-lettered with reason ``out_of_bounds`` and never reaches Delta.

Delivery: **exactly-once via Delta app transactions**; the sink never reads offsets from
Kafka.  After each Delta commit it also commits the now-durable offsets to its consumer
group, asynchronously, so ``kafka-consumer-groups`` and lag monitors see its lag like any
consumer's; seeking ignores them.
A refused record is dead-lettered before the commit that moves its partition's version
past it, so it is dead-lettered at least once and written never.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import delta_writer, tables
from pipeline.delta_writer import DeltaWriter, FlushPolicy, compact, open_table
from topics import admin, catalog, gaps, robots, serde, validation
from topics import tables as shared_tables
from topics.catalog import TopicSpec
from topics.consumer import record_of
from topics.producer import EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOPICS", "DeltaSink", "SinkSettings", "compact", "open_table"]

#: Topics the sink writes to Delta by default (catalog names).
DEFAULT_TOPICS: tuple[str, ...] = tuple(tables.TABLE_OF_TOPIC)


class SinkSettings(BaseSettings):
    """How the Delta sink runs (environment prefix ``USER_SINK_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_SINK_", frozen=True, extra="ignore")

    name: str = Field(shared_tables.DEFAULT_SINK_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="consumer group and app-id prefix; one per history")
    root: Path = Field(default_factory=shared_tables.default_root,
                       description="directory holding the Delta tables (<USER_HOME>/delta)")
    topics: tuple[str, ...] = Field(DEFAULT_TOPICS, description="catalog topics to sink")
    topic_suffix: str = Field("", description="appended to every topic name (test namespaces)")
    flush_rows: int = Field(100_000, gt=0, description="flush a table at this many rows")
    flush_bytes: int = Field(64 << 20, gt=0, description="…or this many record bytes")
    flush_interval_s: float = Field(2.0, gt=0, description="…or when the oldest buffered "
                                    "record is this old")
    compact_interval_s: float = Field(60.0, ge=0, description="background compaction "
                                      "period; 0 turns it off")
    compact_min_files: int = Field(16, ge=2, description="compact a table once it has "
                                   "this many files")
    vacuum_retention_h: float | None = Field(
        delta_writer.DEFAULT_RETENTION_H, ge=0, description="after each compaction round, "
        "delete files unreferenced for this many hours (keep it above the longest read of "
        "a snapshot); None never vacuums")
    poll_records: int = Field(500, gt=0, description="records fetched per poll")
    static: bool = Field(False, description="assign the partitions itself instead of "
                         "joining the group (one sink per partition set; restarts at once)")
    sites: tuple[str, ...] = Field((), description="with static: only these sites' "
                                   "partitions of site-partitioned topics")
    rejoin_after_s: float = Field(60.0, gt=0, description="a group member that has been "
                                  "out of its group this long while the broker answers is "
                                  "rebuilt (a librdkafka consumer can stay out for good "
                                  "after a broker restart)")


class Membership:
    """Watches that a group consumer is in its group; says when to rebuild it.

    Seen with librdkafka 2.16 when the group coordinator restarts: the session times out,
    the partitions are revoked, and the client's coordinator connection never comes back:
    its JoinGroup requests wait in the "GroupCoordinator" out-queue and time out every
    ``socket.timeout.ms``, forever, while ``consume()`` returns nothing and ``memberid()``
    still reports the old id.  So "in the group" is what the *broker* says (the group's
    member list holds this member id) or, without asking, an assignment in hand.
    :meth:`stuck` turns true once the consumer has been out for ``after_s`` seconds of
    which the broker answered throughout, so a broker outage alone never triggers a
    rebuild. Times are ``time.monotonic()`` seconds.
    """

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._out_since: float | None = None

    def observe(self, in_group: bool, broker_answers: bool, now: float) -> None:
        if in_group or not broker_answers:
            self._out_since = None
        elif self._out_since is None:
            self._out_since = now

    def stuck(self, now: float) -> bool:
        return self._out_since is not None and now - self._out_since >= self.after_s

    def reset(self) -> None:
        self._out_since = None


class _Topic:
    """One sunk topic: its catalog spec, the name it has on the broker, its writer."""

    def __init__(self, spec: TopicSpec, suffix: str, settings: SinkSettings) -> None:
        self.spec = spec
        self.name = spec.name + suffix
        self.table = tables.TABLE_OF_TOPIC[spec.name]
        sink, name = settings.name, self.name
        self.writer = DeltaWriter(
            tables.table_path(settings.root, self.table), self.name,
            lambda p: shared_tables.app_id(sink, name, p),
            dedupe=self.table in shared_tables.STEP_TABLES,
            flush=FlushPolicy(settings.flush_rows, settings.flush_bytes,
                              settings.flush_interval_s))


class DeltaSink:
    """The sink process: one consumer-group member writing its partitions to Delta.

    Usage::

        sink = DeltaSink(KafkaSettings(), SinkSettings(root=Path("history")))
        sink.run()          # until SIGTERM/SIGINT or stop(); flushes on the way out
    """

    def __init__(self, kafka: KafkaSettings, settings: SinkSettings,
                 *, consumer: Consumer | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self._topics = {t.name: t for t in (
            _Topic(catalog.spec(name), settings.topic_suffix, settings)
            for name in settings.topics)}
        self._dlq_topic = catalog.DLQ.name + settings.topic_suffix
        self._rules = validation.Rules()
        # Announced robot specs, to validate step batches by (only if any are sunk).
        self.robots = robots.RobotSpecs(kafka, role=f"{settings.name}-robots",
                                        topic_suffix=settings.topic_suffix) if any(
            t.spec.value is catalog.Value.ARROW for t in self._topics.values()) else None
        # (topic, partition) -> the offset a seek asked for, until its first record comes.
        self._seeked: dict[tuple[str, int], int | None] = {}
        # Partitions re-seeked while a consumed batch was being handled: the rest of that
        # batch's records of them were fetched before the seek and are read again.
        self._stale: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        settings.root.mkdir(parents=True, exist_ok=True)
        self._dlq = EventProducer(kafka, role=f"{settings.name}-dlq")
        self.gaps = gaps.GapReporter(self._dlq, consumer=settings.name,
                                     topic_suffix=settings.topic_suffix)
        self._own_consumer = consumer is None
        self._consumer = consumer or self._new_consumer()
        self.membership = Membership(settings.rejoin_after_s)
        self._admin: AdminClient | None = None  # asks the broker about the group
        self.rebuilds = 0
        self._compactor = delta_writer.Compactor(
            [t.writer.path for t in self._topics.values()],
            settings.compact_interval_s, settings.compact_min_files,
            settings.vacuum_retention_h)

    def _new_consumer(self) -> Consumer:
        return Consumer(self.kafka.consumer_config(
            self.settings.name, role=self.settings.name, from_beginning=True))

    def _subscribe(self) -> None:
        self._consumer.subscribe(list(self._topics), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _listed_in_group(self) -> tuple[bool, bool]:
        """(in the group, broker answered): whether the group coordinator lists this
        consumer's member id among its group's members."""
        if self._admin is None:
            self._admin = admin.admin_client(self.kafka)
        member = self._consumer.memberid()
        try:
            found = self._admin.describe_consumer_groups(
                [self.settings.name], request_timeout=5)[self.settings.name]
            group = found.result(timeout=10)
        except (KafkaException, concurrent.futures.TimeoutError):
            return False, False
        return bool(member) and any(m.member_id == member for m in group.members), True

    def _watch_membership(self) -> None:
        """Rebuild a group consumer that stays out of its group (see :class:`Membership`)."""
        now = time.monotonic()
        # Holding partitions is being in the group (fetches go to partition leaders, so
        # such a consumer makes progress even without its coordinator); only a consumer
        # with nothing assigned asks the broker.
        if self._consumer.assignment():
            in_group, answers = True, True
        else:
            in_group, answers = self._listed_in_group()
        self.membership.observe(in_group, answers, now)
        if not self.membership.stuck(now) or not self._own_consumer:
            return
        log.warning("sink consumer has been out of group %s for %.0f s while the broker "
                    "answers; rebuilding it (Delta decides where each partition resumes)",
                    self.settings.name, self.membership.after_s)
        old = self._consumer
        self._release(old.assignment())
        self._consumer = self._new_consumer()
        self._subscribe()
        self.membership.reset()
        self.rebuilds += 1
        # The stuck client may take its request timeouts to close; it holds no partition
        # and its rebalance callbacks ignore it now (see _on_assign), so it closes aside.
        threading.Thread(target=_close_retired, args=(old,), name="sink-retired-consumer",
                         daemon=True).start()

    @property
    def commits(self) -> int:
        return sum(t.writer.commits for t in self._topics.values())

    @property
    def committed_rows(self) -> int:
        return sum(t.writer.committed_rows for t in self._topics.values())

    # -- assignment: the seek from Delta ------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._consumer:  # a retired consumer, closing aside
            consumer.assign([])
            return
        for tp in partitions:
            start = self._topics[tp.topic].writer.assign([tp.partition])[tp.partition]
            tp.offset = OFFSET_BEGINNING if start is None else start
            self._seeked[(tp.topic, tp.partition)] = start
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}"
                                          for tp in partitions) or "nothing")
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is self._consumer:
            self._release(partitions)
        consumer.unassign()

    def _release(self, partitions: list[TopicPartition]) -> None:
        # Buffered rows of a lost partition are not written: its next owner re-reads them
        # from the Delta transaction version.
        for tp in partitions:
            topic = self._topics.get(tp.topic)
            if topic is not None:
                topic.writer.release([tp.partition])
            self._seeked.pop((tp.topic, tp.partition), None)

    def _reseek(self, topic: _Topic, moved: dict[int, int | None]) -> None:
        """Read ``moved`` partitions again from where the writer says."""
        for p, start in moved.items():
            self._seeked[(topic.name, p)] = start
            self._stale.add((topic.name, p))
            offset = OFFSET_BEGINNING if start is None else start
            try:
                self._consumer.seek(TopicPartition(topic.name, p, offset))
            except Exception as exc:  # no longer assigned: the next assignment seeks
                log.info("seek %s[%d] skipped: %s", topic.name, p, exc)

    def _first_after_seek(self, topic: _Topic, partition: int, asked: int | None,
                          got: int) -> None:
        """The first record of ``partition`` after a seek to ``asked`` (None: its
        beginning) is at offset ``got``.  ``got > asked`` may mean records were gone before
        they were written (retention, deleted records): gap detection reports it here,
        after checking the partition's low watermark (a record fetched before the seek can
        still arrive first)."""
        if asked is None or got <= asked:
            return
        gap = gaps.missing(asked, gaps.low_watermark(self._consumer, topic.name, partition),
                           got)
        if gap is not None:
            self.gaps.report(topic.name, partition, gap)

    def _static_partitions(self) -> list[TopicPartition]:
        out = []
        for topic in self._topics.values():
            meta = self._consumer.list_topics(topic.name, timeout=10).topics.get(topic.name)
            if meta is None or meta.error is not None or not meta.partitions:
                raise LookupError(f"topic {topic.name!r} does not exist on "
                                  f"{self.kafka.bootstrap}; run `userctl topics create`")
            wanted = set(meta.partitions)
            if self.settings.sites and topic.spec.site_partitioned:
                wanted &= {p for site in self.settings.sites
                           for p in self.kafka.sites.partitions_of(site)}
            out += [TopicPartition(topic.name, p) for p in sorted(wanted)]
        return out

    # -- records -> writers --------------------------------------------------------------

    def _accept(self, msg: Message) -> _Topic | None:
        """Hand one record to its topic's writer (dead-lettering it if refused); returns
        its topic, or None when the writer did not take it (a partition this sink no
        longer owns, or a record fetched before a re-seek)."""
        topic = self._topics[msg.topic() or ""]
        partition, offset = msg.partition() or 0, msg.offset() or 0
        key = (topic.name, partition)
        if key in self._seeked:
            asked = self._seeked[key]
            if asked is None or offset >= asked:
                del self._seeked[key]
                self._first_after_seek(topic, partition, asked, offset)
        rec = record_of(msg)
        value = msg.value() or b""
        # Validate as the catalog topic (test namespaces only rename it).
        as_catalog = replace(rec, topic=topic.spec.name)
        result = (self.robots.validate(as_catalog, self._rules) if self.robots is not None
                  else validation.validate(as_catalog, self._rules))
        if isinstance(result, validation.Rejected):
            if not topic.writer.add(partition, offset, None, len(value)):
                return None
            letter = validation.dead_letter(replace(result, record=rec),
                                            consumer=self.settings.name)
            encoded = serde.encode(catalog.DLQ, letter)
            self._dlq.send_encoded(replace(encoded, topic=self._dlq_topic))
            return topic
        return topic if topic.writer.add(partition, offset, result.event, len(value)) else None

    # -- writers -> Delta ----------------------------------------------------------------

    def flush(self, *, force: bool = False) -> None:
        """Commit every table whose buffer is due (all non-empty ones with ``force``)."""
        now = time.monotonic()
        due = [t for t in self._topics.values()
               if (force and t.writer.buffer) or t.writer.due(now)]
        if not due:
            return
        # A refused record's offset moves with the next commit: its dead letter first.
        self._dlq.flush()
        for topic in due:
            written = dict(topic.writer.buffer.last_offset)
            moved = topic.writer.commit()
            if moved:
                self._reseek(topic, moved)
            durable = [TopicPartition(topic.name, p, o + 1) for p, o in written.items()
                       if p not in moved]
            if durable:
                # For lag monitors only (kafka-consumer-groups, `userctl status`): what is
                # now in Delta.  Seeking never reads these; Delta stays the only source.
                self._consumer.commit(offsets=durable, asynchronous=True)

    # -- the loop ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(_sig: int, _frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        """Consume and commit until :meth:`stop`; then flush what is buffered and leave."""
        s = self.settings
        log.info("delta sink %s: %s -> %s (kafka %s)", s.name, ", ".join(self._topics),
                 s.root, self.kafka.redacted())
        log.info("sink settings: %s", s.model_dump(mode="json"))
        if s.static:
            self._on_assign(self._consumer, self._static_partitions())
        else:
            self._subscribe()
        self._compactor.start()
        try:
            # Delivery: exactly-once via Delta app transactions (see the module doc);
            # offsets committed to Kafka after each Delta commit are for monitoring only.
            waited = True
            watched = time.monotonic()
            while not self._stop.is_set():
                if not s.static and time.monotonic() - watched >= 1.0:
                    watched = time.monotonic()
                    self._watch_membership()
                if self.robots is not None:
                    self.robots.poll(0.0)  # announcements since the last round
                # consume() waits its whole timeout unless poll_records are ready: wait only
                # when the last round found nothing, else take what librdkafka has fetched.
                msgs = self._consumer.consume(s.poll_records, 0.2 if waited else 0.0)
                waited = not msgs
                # librdkafka drops what it fetched before a seek, but not what consume()
                # already returned: a commit refused mid-batch re-seeks its partitions, and
                # their later records in this batch must not be taken (taken, one at an
                # offset past the seek would move the writer past the records it re-reads).
                self._stale.clear()
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", err.str())
                        continue
                    if (msg.topic() or "", msg.partition() or 0) in self._stale:
                        continue
                    topic = self._accept(msg)
                    if topic is not None and topic.writer.due():
                        self.flush()
                self.flush()
            self.flush(force=True)
        finally:
            self._compactor.stop()
            self._consumer.close()
            if self.robots is not None:
                self.robots.close()
            self._dlq.flush()


def _close_retired(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.info("closing the retired sink consumer: %s", exc)
