"""Produce events to their topics: the thin Kafka shell around :func:`topics.serde.encode`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer

from topics import serde
from topics.catalog import TopicSpec
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """Records the broker did not accept; the message lists the first few."""


class EventProducer:
    """Encodes events by topic spec, picks the site partition and produces them.

    Idempotent (``acks=all``); a record is durable once :meth:`flush` returned without
    raising.  Thread-safe as ``confluent_kafka.Producer`` is.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        role: str = "producer",
        serde_settings: serde.SerdeSettings = serde.DEFAULT_SETTINGS,
        linger_ms: int = 5,
    ) -> None:
        self._sites = settings.sites
        self._serde = serde_settings
        self._producer = Producer(settings.producer_config(role=role, linger_ms=linger_ms))
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self.sent = 0

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._lock:
                self._failures.append(f"{msg.topic()}: {err.str()}")

    def send(self, spec: TopicSpec, payload: serde.Payload) -> None:
        """Queue ``payload`` for ``spec``; raises ``SchemaError``/``ValueError`` from
        encoding and ``BufferError`` when the local queue is full (call :meth:`flush`)."""
        rec = serde.encode(spec, payload, sites=self._sites, settings=self._serde)
        self.send_encoded(rec)

    def send_encoded(self, rec: serde.Encoded,
                     on_delivery: Callable[[KafkaError | None, Message], None] | None = None
                     ) -> None:
        """Queue an encoded record.  With ``on_delivery`` the caller hears this record's
        outcome itself, and :meth:`flush` does not report its refusal.  Raises
        ``BufferError`` when the local queue is full and ``KafkaException`` when the
        client refuses the record outright (e.g. larger than ``message.max.bytes``)."""
        headers: list[tuple[str, str | bytes | None]] = list(rec.headers)
        report = on_delivery or self._delivered
        if rec.partition is None:
            self._producer.produce(rec.topic, rec.value, rec.key, headers=headers,
                                   on_delivery=report)
        else:
            self._producer.produce(rec.topic, rec.value, rec.key, partition=rec.partition,
                                   headers=headers, on_delivery=report)
        self.sent += 1
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is acknowledged.

        Raises ``DeliveryError`` if the broker refused any, ``TimeoutError`` if some are
        still in flight after ``timeout_s``.
        """
        left = self._producer.flush(timeout_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise DeliveryError(f"{len(failures)} records were not delivered: "
                                + "; ".join(failures[:3]))
        if left:
            raise TimeoutError(f"{left} records still undelivered after {timeout_s:g}s; "
                               "is the broker reachable?")

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what the broker takes within ``timeout_s``, then drop what is left.

        For records that lose their worth with time (heartbeats): without it, a client
        whose broker is gone keeps retrying them (``message.timeout.ms=0``) until the
        process exits.
        """
        self._producer.flush(timeout_s)
        self._producer.purge()
        self._producer.flush(0)
