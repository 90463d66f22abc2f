"""The Kafka adapter of :mod:`learners.weights_sync`: chunks to ``weights``, manifests to
``weights.manifests``.

Guarantee: a manifest is produced only after every chunk it names is acknowledged by the
broker (idempotent producer, ``acks=all``), and the offsets it carries are the ones the
broker assigned.  All chunks go to :data:`CHUNK_PARTITION`; ``weights`` has exactly one
partition, so a manifest's offsets need no partition beside them.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, Message, Producer

from schemas import events
from topics import catalog, serde
from topics.consumer import TopicReader
from topics.settings import KafkaSettings
from topics.validation import Accepted, excerpt

log = logging.getLogger(__name__)

#: The ``weights`` partition every chunk is written to (and agents read from).
CHUNK_PARTITION = 0
if catalog.WEIGHTS.partitions != 1:  # pragma: no cover - a catalog change must revisit this
    raise RuntimeError("weights manifests name chunk offsets of one partition; "
                       "a multi-partition weights topic needs a manifest with partitions")


class KafkaWeightsSink:
    """A :class:`~learners.weights_sync.WeightsSink` on the real topics."""

    def __init__(self, settings: KafkaSettings, *, role: str = "learner-weights",
                 read_timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._read_timeout_s = read_timeout_s
        # linger 0: a chunk is a full record already; batching would only add latency.
        self._producer = Producer(settings.producer_config(role=role, linger_ms=0))
        self._lock = threading.Lock()
        self._offsets: list[int | None] = []
        self._errors: list[str] = []

    def latest_version(self, experiment_id: str) -> int | None:
        """Read ``weights.manifests`` to its end (it is compacted: one record per
        experiment, plus any not yet compacted away) for the newest version."""
        latest: int | None = None
        with TopicReader(self._settings, catalog.WEIGHTS_MANIFESTS, start="beginning",
                         timeout_s=self._read_timeout_s) as reader:
            for item in reader.read():
                if not isinstance(item, Accepted):
                    log.warning("unreadable weights manifest at offset %d: %s",
                                item.record.offset, excerpt(item.detail))
                    continue
                event = item.event
                if (isinstance(event, events.WeightsManifestV1)
                        and event.experiment_id == experiment_id):
                    latest = max(latest or 0, event.version)
        return latest

    def send_chunk(self, chunk: events.WeightsChunkV1) -> None:
        rec = serde.encode(catalog.WEIGHTS, chunk)
        with self._lock:
            slot = len(self._offsets)
            self._offsets.append(None)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                if err is not None:
                    self._errors.append(f"chunk {chunk.index}: {err.str()}")
                else:
                    self._offsets[slot] = msg.offset()

        headers: list[tuple[str, str | bytes | None]] = list(rec.headers)
        while True:
            try:
                self._producer.produce(rec.topic, rec.value, rec.key, partition=CHUNK_PARTITION,
                                       headers=headers, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.1)
        self._producer.poll(0)

    def acknowledged_offsets(self, timeout_s: float) -> list[int]:
        left = self._producer.flush(timeout_s)
        with self._lock:
            offsets, self._offsets = self._offsets, []
            errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(f"{len(errors)} weight chunks were refused: {'; '.join(errors[:3])}")
        if left or any(o is None for o in offsets):
            raise TimeoutError(f"weight chunks not acknowledged after {timeout_s:g}s; "
                               "is the broker reachable?")
        return [o for o in offsets if o is not None]

    def send_manifest(self, manifest: events.WeightsManifestV1, timeout_s: float) -> None:
        rec = serde.encode(catalog.WEIGHTS_MANIFESTS, manifest)
        failure: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failure.append(err.str())

        headers: list[tuple[str, str | bytes | None]] = list(rec.headers)
        self._producer.produce(rec.topic, rec.value, rec.key, headers=headers,
                               on_delivery=delivered)
        left = self._producer.flush(timeout_s)
        if failure:
            raise RuntimeError(f"manifest v{manifest.version} refused: {failure[0]}")
        if left:
            raise TimeoutError(f"manifest v{manifest.version} not acknowledged after "
                               f"{timeout_s:g}s; is the broker reachable?")

    def close(self) -> None:
        self._producer.flush(5.0)
