"""Kafka adapters of the learner: live rewarded steps, robot specs, the experiment spec,
metrics and weights publishers.  The loop (:mod:`learners.loop`) sees none of this.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import replace

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from learners import weights_sync
from learners.loop import Publisher, Steps
from learners.policies import PolicySpec
from learners.weights_sync_kafka import KafkaWeightsSink
from schemas import events
from schemas.experiment import ExperimentSpec
from schemas.transitions import RewardedTransitionBatch
from topics import catalog, gaps, robots, serde, validation
from topics.consumer import TopicReader, record_of
from topics.producer import EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


class RobotSpecs(robots.RobotSpecs):
    """The newest announced spec of each robot (:class:`topics.robots.RobotSpecs`), and
    the policy spec of each robot type, to size its networks."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
        super().__init__(kafka, role="learner-robots", timeout_s=timeout_s)
        self._bad: set[str] = set()

    def policy_spec(self, robot_type: str) -> PolicySpec | None:
        spec = self.of_type(robot_type)
        if spec is None:
            return None
        try:
            return PolicySpec.from_robot_spec(spec)
        except ValueError as exc:
            if robot_type not in self._bad:
                self._bad.add(robot_type)
                log.error("cannot learn %s: %s", robot_type, exc)
            return None


class LiveSteps:
    """A :class:`~learners.loop.StepSource` over the ``transitions`` topic.

    Assigns every partition at a given offset (no consumer group, nothing committed) and
    decodes records on a background thread into a bounded queue, keeping the steps of
    one experiment and reward function.  When the queue is full the reader waits: the
    learner is never blocked by the reader, only the reader by the learner.

    Delivery: exactly where the caller says — each partition starts at the offset given
    to :meth:`start` (the Delta app-transaction version + 1), so together with the
    history the learner sees every record once; :meth:`positions` says how far it got.
    Records it cannot accept (undecodable, or outside their robot's announced spec) go to
    ``dlq`` with the reason; offsets it expected that no longer exist are reported on
    ``gaps`` (:mod:`topics.gaps`).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        experiments: tuple[str, ...],
        reward_fn: str,
        robots: RobotSpecs | None = None,
        max_queued: int = 256,
        timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self._experiments = set(experiments)
        self._reward_fn = reward_fn
        self._robots = robots
        self._max_queued = max_queued
        group = f"{kafka.client_id}-learner-{uuid.uuid4().hex[:12]}"
        self._client = Consumer(kafka.consumer_config(group, role="learner"))
        meta = self._client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            self._client.close()
            raise LookupError(f"topic {topic!r} does not exist on {kafka.bootstrap}; run "
                              "`userctl topics create`")
        self.partitions = sorted(meta.partitions)
        self._items: deque[tuple[int, int, Steps | None]] = deque()
        self._cond = threading.Condition()
        self._positions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learner-live", daemon=True)
        self.rejected = 0
        self.error: BaseException | None = None
        suffix = topic.removeprefix(catalog.TRANSITIONS.name)
        self.consumer = f"learner-{'+'.join(experiments)}"
        self._dlq_topic = catalog.DLQ.name + suffix
        self._producer = EventProducer(kafka, role="learner-dlq")
        self.gaps = gaps.GapReporter(self._producer, consumer=self.consumer,
                                     experiment_id=experiments[0] if experiments else None,
                                     topic_suffix=suffix)
        self._expected = gaps.Expected()

    def start(self, offsets: Mapping[int, int]) -> None:
        """Read each partition from ``offsets[p]`` (from its beginning where absent)."""
        assignment = [TopicPartition(self.topic, p, offsets.get(p, OFFSET_BEGINNING))
                      for p in self.partitions]
        log.info("live from %s", ", ".join(
            f"{self.topic}[{tp.partition}]@{'beginning' if tp.offset < 0 else tp.offset}"
            for tp in assignment))
        self._client.assign(assignment)
        for p, offset in offsets.items():
            if p not in self.partitions:
                continue
            self._expected.expect(p, offset)
            # Nothing may arrive for a while: say at once if the resume point is gone.
            gap = gaps.missing(offset, gaps.low_watermark(self._client, self.topic, p))
            if gap is not None:
                self._expected.forget(p)  # reported; the first record re-arms it
                self.gaps.report(self.topic, p, gap)
        self._thread.start()

    def _run(self) -> None:
        try:
            # Delivery: exactly-once into the learner's buffer together with the Delta
            # history (start offsets from the app transactions; nothing committed to Kafka).
            while not self._stop.is_set():
                if self._robots is not None:
                    self._robots.poll(0.0)
                with self._cond:
                    self._cond.wait_for(lambda: len(self._items) < self._max_queued
                                        or self._stop.is_set(), 0.5)
                    if len(self._items) >= self._max_queued:
                        continue
                for msg in self._client.consume(200, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", err.str())
                        continue
                    partition, offset = msg.partition() or 0, msg.offset() or 0
                    gap = self._expected.received(partition, offset, functools.partial(
                        gaps.low_watermark, self._client, self.topic, partition))
                    if gap is not None:
                        self.gaps.report(self.topic, partition, gap)
                    item = self._decode(partition, offset, record_of(msg))
                    with self._cond:
                        self._items.append(item)
                        self._cond.notify_all()
        except BaseException as exc:  # surfaced to the learner loop through drain()
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def _decode(self, partition: int, offset: int, rec: validation.Record
                ) -> tuple[int, int, Steps | None]:
        as_catalog = replace(rec, topic=catalog.TRANSITIONS.name)
        result = (self._robots.validate(as_catalog) if self._robots is not None
                  else validation.validate(as_catalog))
        if isinstance(result, validation.Rejected):
            self._dead_letter(replace(result, record=rec))
            return partition, offset, None
        batch = result.event
        if (not isinstance(batch, RewardedTransitionBatch)
                or batch.event.experiment_id not in self._experiments
                or batch.reward_fn != self._reward_fn):
            return partition, offset, None
        return partition, offset, Steps.of_batch(batch)

    def _dead_letter(self, rejected: validation.Rejected) -> None:
        """Send a refused record to ``dlq`` (durable before the reader goes on)."""
        self.rejected += 1
        rec = rejected.record
        log.warning("dead letter: %s[%d]@%d %s: %s", rec.topic, rec.partition, rec.offset,
                    rejected.reason.value, rejected.detail[:200])
        letter = validation.dead_letter(rejected, consumer=self.consumer)
        encoded = serde.encode(catalog.DLQ, letter)
        try:
            self._producer.send_encoded(replace(encoded, topic=self._dlq_topic))
            self._producer.flush(10.0)
        except (BufferError, RuntimeError, TimeoutError) as exc:  # DeliveryError included
            log.error("dead letter of %s[%d]@%d not delivered to %s: %s", rec.topic,
                      rec.partition, rec.offset, self._dlq_topic, exc)

    def metrics(self) -> dict[str, float]:
        """The reader's counts, for ``learner.metrics``."""
        return {"replay/dead_letters": float(self.rejected), **self.gaps.metrics()}

    def drain(self, max_items: int) -> list[Steps]:
        if self.error is not None:
            raise RuntimeError(f"reading {self.topic} failed: {self.error}") from self.error
        taken: list[tuple[int, Steps]] = []
        with self._cond:
            while self._items and len(taken) < max_items:
                partition, offset, steps = self._items.popleft()
                self._positions[f"{self.topic}:{partition}"] = offset + 1
                if steps is not None:
                    taken.append((partition, steps))
            self._cond.notify_all()
        # Partition by partition (a stable sort keeps each partition's order): what was
        # taken is then named by each partition's end offset alone (learners.lineage).
        taken.sort(key=lambda item: item[0])
        return [steps for _, steps in taken]

    def wait(self, timeout_s: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self.error is not None, timeout_s)

    def positions(self) -> dict[str, int]:
        with self._cond:
            return dict(self._positions)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._client.close()
        try:
            self._producer.flush(10.0)
        except (RuntimeError, TimeoutError) as exc:
            log.warning("dead letters or gap events not all delivered: %s", exc)


def read_experiment(kafka: KafkaSettings, experiment_id: str, timeout_s: float = 30.0
                    ) -> ExperimentSpec:
    """The spec of ``experiment_id``'s newest submission on ``experiments``.

    Raises ``LookupError`` if it was never submitted, ``ValueError`` if its spec is invalid.
    """
    found: events.ExperimentSubmittedV1 | None = None
    with TopicReader(kafka, catalog.EXPERIMENTS, start="beginning", timeout_s=timeout_s) as r:
        for item in r.read():
            if (isinstance(item, validation.Accepted)
                    and isinstance(item.event, events.ExperimentSubmittedV1)
                    and item.event.experiment_id == experiment_id):
                found = item.event
    if found is None:
        raise LookupError(f"experiment {experiment_id!r} was never submitted on "
                          f"{kafka.bootstrap}; submit it with `userctl experiments submit "
                          "FILE.yaml`, or pass --spec FILE.yaml")
    return ExperimentSpec.model_validate(found.spec)


class KafkaMetrics:
    """A :class:`~learners.loop.MetricsSink` producing to ``learner.metrics``."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._producer = EventProducer(kafka, role="learner-metrics")

    def send(self, event: events.LearnerMetricsV1) -> None:
        try:
            self._producer.send(catalog.LEARNER_METRICS, event)
        except BufferError:  # metrics are best effort: never stall learning for them
            log.warning("learner.metrics: local queue full, metrics of step %d dropped",
                        event.learner_step)

    def close(self) -> None:
        try:
            self._producer.flush(10.0)
        except (TimeoutError, RuntimeError) as exc:
            log.warning("learner metrics not all delivered: %s", exc)


class KafkaPublishers:
    """Opens one :class:`~learners.weights_sync.WeightsPublisher` per weights stream."""

    def __init__(self, kafka: KafkaSettings, spec: ExperimentSpec) -> None:
        self._kafka = kafka
        sync = spec.weight_sync
        self._settings = weights_sync.WeightSyncSettings(
            every_updates=sync.every_updates, every_s=sync.every_s,
            max_bytes_per_s=sync.bandwidth_mb_s * 1e6, chunk_bytes=sync.chunk_bytes)
        self.opened: list[weights_sync.WeightsPublisher] = []

    def __call__(self, stream: str) -> tuple[Publisher, int]:
        sink = KafkaWeightsSink(self._kafka, role=f"learner-weights-{stream}")
        latest = sink.latest_version(stream) or 0
        publisher = weights_sync.WeightsPublisher(sink, stream, self._settings)
        publisher.start(first_version=latest + 1)
        log.info("weights %s: publishing from version %d (%s)", stream, latest + 1,
                 self._settings.model_dump(mode="json"))
        self.opened.append(publisher)
        return publisher, latest

    def close(self, timeout_s: float = 30.0) -> None:
        for publisher in self.opened:
            publisher.close(timeout_s)
