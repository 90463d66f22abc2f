"""Kafka -> Delta Lake, exactly once, the way kafka-delta-ingest does it (DESIGN §4).

Delivery: **exactly-once via Delta app transactions**.  The sink keeps no offsets in
Kafka.  Every Delta commit carries the buffered rows of one table *and*, for each Kafka
partition they came from, an app transaction ``app_id = "<sink>-<topic>-<partition>"``
whose ``version`` is the last offset written.  On start and on every rebalance each
assigned partition is seeked to ``transaction_version + 1``.  A crash at any instant
either lost the commit (rows and offsets together: they are read again) or kept it (the
seek skips them): no row is lost, none is doubled.

Two writers of one partition (a rebalance in flight, a zombie) are fenced by the same
transaction: before committing, the sink checks that each partition's transaction in the
latest table snapshot is still the version it last wrote or found; a concurrent commit
that touches the same app id between that check and ours fails ours (Delta's conflict
check), and the sink drops its buffer for those partitions and re-reads them from Delta.

``transitions`` and ``transitions_raw`` rows carry one more guard: a reward job is
at-least-once, so a retry can publish a rewarded batch twice (as two Kafka records), and an
agent re-sends what its spool had not seen acknowledged when it died.  Per ``(partition, experiment,
robot, reward_fn)`` the sink keeps the newest ``observed_ns`` already in Delta (recomputed from
Delta on every assignment) and drops rows that are not newer: a robot's steps are
strictly ordered in time, so a repeat is always older than the watermark.

Small files from frequent flushes are compacted by a background thread (its own Delta
commits; appends never conflict with it), so ingest never waits for compaction.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import tables
from schemas.transitions import RewardedTransitionBatch, TransitionBatch
from topics import catalog, serde, validation
from topics import tables as shared_tables
from topics.catalog import TopicSpec
from topics.consumer import record_of
from topics.producer import EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Tables whose rows are dropped when not newer than the robot's newest step already
#: written: reward-job retries (``transitions``) and agents' re-sent spools
#: (``transitions.raw``, at-least-once) repeat steps, and a robot's steps are strictly
#: ordered in time.
WATERMARKED = (tables.TRANSITIONS, tables.TRANSITIONS_RAW)

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
    flush_rows: int = Field(20_000, gt=0, description="flush a table at this many rows")
    flush_bytes: int = Field(64 << 20, gt=0, description="…or this many record bytes")
    flush_interval_s: float = Field(2.0, gt=0, description="…or when the oldest buffered "
                                    "record is this old")
    compact_interval_s: float = Field(60.0, ge=0, description="background compaction "
                                      "period; 0 turns it off")
    compact_min_files: int = Field(16, ge=2, description="compact a table once it has "
                                   "this many files")
    poll_records: int = Field(500, gt=0, description="records fetched per poll")
    static: bool = Field(False, description="assign the partitions itself instead of "
                         "joining the group (one sink per partition set; restarts at once)")
    sites: tuple[str, ...] = Field((), description="with static: only these sites' "
                                   "partitions of site-partitioned topics")


@dataclass
class _Buffer:
    """Rows of one table waiting for the next commit, and the offsets they cover."""

    parts: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0
    last_offset: dict[int, int] = field(default_factory=dict)  # partition -> last offset

    def add(self, partition: int, offset: int, table: pa.Table | None, size: int) -> None:
        if not self.last_offset and not self.parts:
            self.since = time.monotonic()
        if table is not None and table.num_rows:
            self.parts.append(table)
            self.rows += table.num_rows
        self.nbytes += size
        self.last_offset[partition] = offset

    def drop(self, partition: int) -> None:
        """Forget everything of ``partition`` (it is re-read from its Delta version)."""
        if partition not in self.last_offset:
            return
        del self.last_offset[partition]
        self.parts = [t.filter(pc.not_equal(t.column("kafka_partition"), partition))
                      for t in self.parts]
        self.parts = [t for t in self.parts if t.num_rows]
        self.rows = sum(t.num_rows for t in self.parts)
        if not self.last_offset:
            self.parts, self.rows, self.nbytes = [], 0, 0

    def __bool__(self) -> bool:
        return bool(self.last_offset)


class _Topic:
    """One sunk topic: its catalog spec, the name it has on the broker, its table."""

    def __init__(self, spec: TopicSpec, suffix: str, root: Path, sink: str) -> None:
        self.spec = spec
        self.name = spec.name + suffix
        self.table = tables.TABLE_OF_TOPIC[spec.name]
        self.path = tables.table_path(root, self.table)
        self.sink = sink
        self.buffer = _Buffer()

    def app_id(self, partition: int) -> str:
        return shared_tables.app_id(self.sink, self.name, partition)


def open_table(path: str) -> DeltaTable | None:
    """The Delta table at ``path``, or None before its first commit."""
    try:
        return DeltaTable(path)
    except TableNotFoundError:
        return None


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
            _Topic(catalog.spec(name), settings.topic_suffix, settings.root, settings.name)
            for name in settings.topics)}
        self._dlq_topic = catalog.DLQ.name + settings.topic_suffix
        self._rules = validation.Rules()
        self._expected: dict[tuple[str, int], int | None] = {}
        self._watermarks: dict[tuple[int, str, str, str], int] = {}
        # Next offset to accept per partition: records before it are stale fetches.
        self._position: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self.committed_rows = 0
        self.commits = 0
        settings.root.mkdir(parents=True, exist_ok=True)
        self._dlq = EventProducer(kafka, role=f"{settings.name}-dlq")
        self._consumer = consumer or Consumer(kafka.consumer_config(
            settings.name, role=settings.name, from_beginning=True))
        self._compactor = _Compactor([t.path for t in self._topics.values()],
                                     settings.compact_interval_s, settings.compact_min_files)

    # -- assignment: the seek from Delta ------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            topic = self._topics[tp.topic]
            version = self._txn_version(topic, tp.partition)
            self._expected[(tp.topic, tp.partition)] = version
            self._position[(tp.topic, tp.partition)] = 0 if version is None else version + 1
            tp.offset = OFFSET_BEGINNING if version is None else version + 1
            topic.buffer.drop(tp.partition)
            if topic.table in WATERMARKED:
                self._load_watermarks(topic, tp.partition)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}"
                                          for tp in partitions) or "nothing")
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Buffered rows of a lost partition are not written: its next owner re-reads them
        # from the Delta transaction version.
        for tp in partitions:
            topic = self._topics.get(tp.topic)
            if topic is not None:
                topic.buffer.drop(tp.partition)
            self._expected.pop((tp.topic, tp.partition), None)
            self._position.pop((tp.topic, tp.partition), None)
        consumer.unassign()

    def _txn_version(self, topic: _Topic, partition: int) -> int | None:
        dt = open_table(topic.path)
        return None if dt is None else dt.transaction_version(topic.app_id(partition))

    def _load_watermarks(self, topic: _Topic, partition: int) -> None:
        for key in [k for k in self._watermarks if k[0] == partition]:
            del self._watermarks[key]
        dt = open_table(topic.path)
        if dt is None:
            return
        rewarded = topic.table == tables.TRANSITIONS
        keys = ["experiment_id", "robot_id", *(["reward_fn"] if rewarded else [])]
        seen = dt.to_pyarrow_dataset().to_table(
            columns=[*keys, "observed_ns"], filter=pc.field("kafka_partition") == partition)
        if seen.num_rows == 0:
            return
        top = seen.group_by(keys).aggregate([("observed_ns", "max")])
        fns = top.column("reward_fn").to_pylist() if rewarded else [""] * top.num_rows
        for exp, robot, fn, ns in zip(top.column("experiment_id").to_pylist(),
                                      top.column("robot_id").to_pylist(), fns,
                                      top.column("observed_ns_max").to_pylist(), strict=True):
            self._watermarks[(partition, exp, robot, fn)] = int(ns)

    def _reseek(self, topic: _Topic, partitions: Sequence[int]) -> None:
        """Drop ``partitions``' buffers and read them again from their Delta version."""
        for p in partitions:
            version = self._txn_version(topic, p)
            self._expected[(topic.name, p)] = version
            self._position[(topic.name, p)] = 0 if version is None else version + 1
            topic.buffer.drop(p)
            if topic.table in WATERMARKED:
                self._load_watermarks(topic, p)
            offset = OFFSET_BEGINNING if version is None else version + 1
            log.warning("%s[%d]: another writer moved its Delta version to %s; re-reading "
                        "from %s", topic.name, p, version, offset)
            try:
                self._consumer.seek(TopicPartition(topic.name, p, offset))
            except Exception as exc:  # no longer assigned: the next assignment seeks
                log.info("seek %s[%d] skipped: %s", topic.name, p, exc)

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

    # -- records -> buffers --------------------------------------------------------------

    def _accept(self, msg: Message) -> _Topic | None:
        """Buffer one record's rows (or dead-letter it); returns its topic, or None when
        the record belongs to a partition this sink no longer owns."""
        topic = self._topics[msg.topic() or ""]
        partition, offset = msg.partition() or 0, msg.offset() or 0
        position = self._position.get((topic.name, partition))
        if position is None or offset < position:
            # Fetched before a revoke or a re-seek: not ours, or already in Delta.
            return None
        self._position[(topic.name, partition)] = offset + 1
        rec = record_of(msg)
        value = msg.value() or b""
        # Validate as the catalog topic (test namespaces only rename it).
        result = validation.validate(replace(rec, topic=topic.spec.name), self._rules)
        table: pa.Table | None = None
        if isinstance(result, validation.Rejected):
            letter = validation.dead_letter(replace(result, record=rec),
                                            consumer=self.settings.name)
            encoded = serde.encode(catalog.DLQ, letter)
            self._dlq.send_encoded(replace(encoded, topic=self._dlq_topic))
        else:
            payload = result.event
            table = tables.rows(payload, tables.Source(topic.name, partition, offset))
            if isinstance(payload, RewardedTransitionBatch | TransitionBatch):
                table = self._fresh(partition, payload, table)
        topic.buffer.add(partition, offset, table, len(value))
        return topic

    def _fresh(self, partition: int, batch: RewardedTransitionBatch | TransitionBatch,
               table: pa.Table) -> pa.Table:
        """Rows newer than the watermark of (partition, experiment, robot, reward_fn);
        raw steps have no reward function ("")."""
        fn = batch.reward_fn if isinstance(batch, RewardedTransitionBatch) else ""
        key = (partition, batch.event.experiment_id, batch.robot_id, fn)
        mark = self._watermarks.get(key)
        if mark is not None:
            keep = batch.observed_ns > mark
            if not keep.all():
                log.info("dropping %d repeated %s steps of %s", int((~keep).sum()),
                         fn or "raw", batch.robot_id)
                table = table.filter(pa.array(keep))
        if len(batch):
            self._watermarks[key] = max(mark or -1, int(np.max(batch.observed_ns)))
        return table

    # -- buffers -> Delta ----------------------------------------------------------------

    def _due(self, topic: _Topic, now: float) -> bool:
        b = topic.buffer
        s = self.settings
        return bool(b) and (b.rows >= s.flush_rows or b.nbytes >= s.flush_bytes
                            or now - b.since >= s.flush_interval_s)

    def flush(self, *, force: bool = False) -> None:
        """Commit every table whose buffer is due (all non-empty ones with ``force``)."""
        now = time.monotonic()
        due = [t for t in self._topics.values()
               if (force and t.buffer) or self._due(t, now)]
        if not due:
            return
        # A refused record's offset moves with the next commit: its dead letter first.
        self._dlq.flush()
        for topic in due:
            self._commit(topic)

    def _commit(self, topic: _Topic) -> None:
        buf = topic.buffer
        dt = open_table(topic.path)
        if dt is not None:
            moved = [p for p in buf.last_offset
                     if dt.transaction_version(topic.app_id(p))
                     != self._expected.get((topic.name, p))]
            if moved:
                self._reseek(topic, moved)
                if not buf:
                    return
        data = (pa.concat_tables(buf.parts, promote_options="permissive")
                if buf.parts else None)
        txns = [Transaction(topic.app_id(p), o) for p, o in sorted(buf.last_offset.items())]
        if data is None:
            # Only refused records: commit no rows, but move the partitions' versions.
            data = (pa.table({"experiment_id": pa.array([], pa.string())}) if dt is None
                    else dt.to_pyarrow_dataset().schema.empty_table())
        try:
            write_deltalake(
                dt if dt is not None else topic.path, data, mode="append",
                schema_mode="merge", partition_by=list(tables.PARTITION_BY),
                commit_properties=CommitProperties(app_transactions=txns))
        except (CommitFailedError, DeltaError) as exc:
            log.warning("%s: commit refused (%s); re-reading its partitions", topic.table, exc)
            self._reseek(topic, list(buf.last_offset))
            return
        for p, o in buf.last_offset.items():
            self._expected[(topic.name, p)] = o
        self.commits += 1
        self.committed_rows += buf.rows
        log.debug("%s: committed %d rows up to %s", topic.table, buf.rows, buf.last_offset)
        topic.buffer = _Buffer()

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
            self._consumer.subscribe(list(self._topics), on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self._compactor.start()
        try:
            # Delivery: exactly-once via Delta app transactions (see the module doc);
            # nothing is ever committed to Kafka.
            while not self._stop.is_set():
                for msg in self._consumer.consume(s.poll_records, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", err.str())
                        continue
                    topic = self._accept(msg)
                    if topic is not None and self._due(topic, time.monotonic()):
                        self.flush()
                self.flush()
            self.flush(force=True)
        finally:
            self._compactor.stop()
            self._consumer.close()
            self._dlq.flush()


class _Compactor:
    """Compacts small files of each table in a background thread."""

    def __init__(self, paths: Sequence[str], interval_s: float, min_files: int) -> None:
        self._paths = list(paths)
        self._interval = interval_s
        self._min_files = min_files
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="delta-compactor",
                                        daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            for path in self._paths:
                compact(path, self._min_files)


def compact(path: str, min_files: int = 2) -> dict[str, object] | None:
    """Bin-pack ``path``'s small files if it has at least ``min_files``; returns the
    optimize metrics, or None when there was nothing to do or a writer won the race."""
    dt = open_table(path)
    if dt is None or len(dt.file_uris()) < min_files:
        return None
    try:
        metrics: dict[str, object] = dt.optimize.compact()
    except CommitFailedError as exc:  # lost a race with another compactor: next round
        log.info("compaction of %s skipped: %s", path, exc)
        return None
    log.info("compacted %s: %s files -> %s", path, metrics.get("numFilesRemoved"),
             metrics.get("numFilesAdded"))
    return metrics
