"""Follow several topics from chosen starts, without a consumer group.

Services that rebuild their state from the log (the controller from the compacted
``robots``/``experiments``/``assignments`` topics; an agent from ``assignments``) read
each topic from the beginning and keep following it.  :meth:`Follower.caught_up` says
when everything that existed at start has been read, so a service knows when its
rebuilt state is complete and it may start deciding.

Delivery: none to keep — nothing is committed; every start re-reads from the given
starts, which is what rebuilding state from the log means.  Refused records are
returned as :class:`~topics.validation.Rejected` for the caller to report; a read-only
follower writes nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

from confluent_kafka import Consumer, KafkaException, TopicPartition

from topics.catalog import TopicSpec
from topics.consumer import record_of
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rejected, Rules, validate

log = logging.getLogger(__name__)

From = Literal["beginning", "end"]


class Follower:
    """Reads every partition of the given topics from ``beginning`` or ``end``.

    ``end`` is the end *when the follower is made*: every record written after the
    constructor returns is read.  (The logical ``OFFSET_END`` would be resolved by
    librdkafka's fetcher some time after ``assign`` — under load after records written in
    between, which were then never read.)

    ``topic_suffix`` follows a test namespace's copies of the topics (records are validated
    as the catalog's).  Raises ``LookupError`` naming the missing topic when one does not
    exist, and ``TimeoutError`` when the broker does not answer within ``timeout_s``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        starts: Mapping[TopicSpec, From],
        *,
        rules: Rules | None = None,
        timeout_s: float = 30.0,
        role: str = "follower",
        topic_suffix: str = "",
    ) -> None:
        self._rules = rules or Rules()
        group = f"{settings.client_id}-{role}-{uuid.uuid4().hex[:12]}"
        self._client = Consumer(settings.consumer_config(group, role=role))
        self._end: dict[tuple[str, int], int] = {}
        self._assigned: list[TopicPartition] = []
        # Name on the broker -> catalog name (a test namespace only renames a topic).
        self._catalog_name = {spec.name + topic_suffix: spec.name for spec in starts}
        assignment: list[TopicPartition] = []
        try:
            for spec, start in starts.items():
                name = spec.name + topic_suffix
                meta = self._client.list_topics(name, timeout=timeout_s)
                topic = meta.topics.get(name)
                if topic is None or topic.error is not None or not topic.partitions:
                    raise LookupError(f"topic {name!r} does not exist on "
                                      f"{settings.bootstrap}; run `userctl topics create`")
                for p in sorted(topic.partitions):
                    self._assigned.append(TopicPartition(name, p))
                    low, high = self._watermarks(TopicPartition(name, p), timeout_s)
                    if start == "beginning":
                        assignment.append(TopicPartition(name, p, low))
                        if high > low:
                            self._end[(name, p)] = high
                    else:  # the end now, not when the fetcher gets to it
                        assignment.append(TopicPartition(name, p, high))
        except KafkaException as exc:
            self._client.close()
            raise TimeoutError(f"Kafka at {settings.bootstrap} did not answer: "
                               f"{exc.args[0]}") from None
        except LookupError:
            self._client.close()
            raise
        self._client.assign(assignment)
        self._caught_up = not self._end

    def _watermarks(self, tp: TopicPartition, timeout_s: float) -> tuple[int, int]:
        """Low and high offsets; retries while the cluster settles (e.g. just after a
        broker restart, before partition leaders are elected)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                low, high = self._client.get_watermark_offsets(
                    tp, timeout=max(0.5, deadline - time.monotonic()))
                return int(low), int(high)
            except KafkaException as exc:
                # NOT_LEADER_FOR_PARTITION and LEADER_NOT_AVAILABLE come back as not
                # retriable from this call, yet they pass once leaders are elected.
                if exc.args[0].fatal() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def poll(self, timeout_s: float = 0.2, max_records: int = 500) -> list[Accepted | Rejected]:
        """The next records (validated) from any followed partition, in partition order."""
        out: list[Accepted | Rejected] = []
        for msg in self._client.consume(max_records, timeout_s):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue
            rec = record_of(msg)
            key = (rec.topic, rec.partition)
            if key in self._end and rec.offset + 1 >= self._end[key]:
                del self._end[key]
            name = self._catalog_name.get(rec.topic, rec.topic)
            result = validate(rec if name == rec.topic else replace(rec, topic=name),
                              self._rules)
            out.append(replace(result, record=rec))
        return out

    def caught_up(self) -> bool:
        """True once every record that existed when following began has been returned."""
        if self._caught_up:
            return True
        if self._end:
            # Transaction markers or compaction can leave the last offsets without a
            # record: ask the client where it stands instead.
            positions = self._client.position(
                [TopicPartition(t, p) for (t, p) in self._end])
            for tp in positions:
                if tp.offset >= 0 and tp.offset >= self._end.get((tp.topic, tp.partition), 0):
                    self._end.pop((tp.topic, tp.partition), None)
        self._caught_up = not self._end
        return self._caught_up

    def wait_caught_up(self, timeout_s: float, sink: list[Accepted | Rejected]) -> bool:
        """Poll into ``sink`` until caught up; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up():
            if time.monotonic() > deadline:
                return False
            sink.extend(self.poll(0.2))
        return True

    def read_to_end(self, timeout_s: float) -> tuple[list[Accepted | Rejected], bool]:
        """Everything written to the followed partitions up to now: polls until each
        partition's position reaches the high watermark it has at the call.  Returns the
        records read and whether it got there within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        ends: dict[tuple[str, int], int] = {}
        out: list[Accepted | Rejected] = []
        try:
            for tp in self._assigned:
                low, high = self._watermarks(tp, max(0.1, deadline - time.monotonic()))
                if high > low:
                    ends[(tp.topic, tp.partition)] = high
        except KafkaException as exc:
            log.info("watermarks unknown (%s): not caught up", exc)
            return out, False
        while ends:
            for tp in self._client.position([TopicPartition(t, p) for (t, p) in ends]):
                if tp.offset >= ends.get((tp.topic, tp.partition), 0):
                    ends.pop((tp.topic, tp.partition), None)
            if not ends:
                break
            if time.monotonic() > deadline:
                return out, False
            out.extend(self.poll(0.05))
        return out, True

    def close(self) -> None:
        self._client.close()
