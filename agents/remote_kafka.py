"""The Kafka adapter of :mod:`agents.remote`: requests out, this site's replies in.

Requests go to ``inference.requests`` on the robot's site partitions (no linger: every
millisecond is control time).  Replies are read from ``inference.replies``, only the
partitions of this agent's site, from the end (an old reply is worth nothing), by a
consumer with no group and no commits, and handed to each robot's
:class:`~agents.remote.RemotePolicy`.  Delivery: none to keep; a lost request or reply is
asked again by the robot after its retry time.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from agents.remote import RemotePolicy
from schemas import events as ev
from topics import catalog
from topics.consumer import record_of
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, validate

log = logging.getLogger(__name__)


class RemoteLink:
    """One agent process's link to the inference service (all its robots share it)."""

    def __init__(self, kafka: KafkaSettings, site: str) -> None:
        self.kafka, self.site = kafka, site
        self.policies: dict[str, RemotePolicy] = {}
        self._producer = EventProducer(kafka, role="agent-inference", linger_ms=0)
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True,
                                        name=f"inference-replies-{site}")

    def send(self, request: ev.InferenceRequestV1) -> None:
        self._producer.send(catalog.INFERENCE_REQUESTS, request)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._producer.close(timeout_s=0.5)

    def _listen(self) -> None:
        config = self.kafka.consumer_config(f"{self.kafka.client_id}-replies-"
                                            f"{uuid.uuid4().hex[:12]}", role="agent-inference",
                                            from_beginning=False, read_committed=False)
        config["fetch.wait.max.ms"] = 5
        consumer = Consumer(config)
        try:
            # From the end as it is now (resolved here, not at the first fetch, so no
            # reply to a request sent after ``ready`` can slip past).
            parts = []
            for p in self.kafka.sites.partitions_of(self.site):
                tp = TopicPartition(catalog.INFERENCE_REPLIES.name, p)
                _, high = consumer.get_watermark_offsets(tp, timeout=10.0)
                parts.append(TopicPartition(tp.topic, p, high if high >= 0 else OFFSET_END))
            consumer.assign(parts)
            self.ready.set()
            while not self._stop.is_set():
                # Hand each reply on as soon as it is here: consume(n, t) would sit out
                # all of t unless n replies came.
                first = consumer.poll(0.05)
                if first is None:
                    continue
                for msg in (first, *consumer.consume(500, 0)):
                    if msg.error() is not None:
                        continue
                    item = validate(record_of(msg))
                    if isinstance(item, Accepted) and isinstance(item.event, ev.ActionChunkV1):
                        policy = self.policies.get(item.event.robot_id)
                        if policy is not None:
                            policy.deliver(item.event)
        finally:
            consumer.close()
