"""Where an agent puts the events it produces: an outbox that never blocks the robot.

:class:`Outbox` is the agent's only way out.  ``send`` encodes an event for its topic
and appends it to the on-disk :class:`~agents.spool.Spool` — no network on the control
loop.  A forwarder thread drains the spool to Kafka in order and acknowledges records
only after the broker confirmed them, so a broker outage delays data but loses none;
when the broker returns, the backlog flows out in the order it was recorded.

:class:`MemoryOutbox` is the fake for unit tests: it keeps the decoded events in a list.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Protocol

from agents.spool import Spool, SpooledRecord
from topics import serde
from topics.catalog import TopicSpec
from topics.producer import DeliveryError, EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Something an agent can hand events to (the real outbox or a fake)."""

    def send(self, spec: TopicSpec, payload: serde.Payload) -> None:
        """Accept one event for ``spec``; never blocks on the network."""


class MemoryOutbox:
    """In-memory fake: records ``(spec, payload)`` after encoding them (schema-checked)."""

    def __init__(self, settings: KafkaSettings | None = None) -> None:
        self._sites = (settings or KafkaSettings()).sites
        self.sent: list[tuple[TopicSpec, serde.Payload]] = []

    def send(self, spec: TopicSpec, payload: serde.Payload) -> None:
        serde.encode(spec, payload, sites=self._sites)  # the same checks as the real one
        self.sent.append((spec, payload))


class Outbox:
    """Spool-backed, ordered, at-least-once delivery of an agent's events to Kafka.

    Delivery: at-least-once.  A spooled record is acknowledged (forgotten) only after
    the idempotent producer's flush confirmed it; a crash between the two re-sends it
    on restart, and consumers drop the duplicate by its natural key.
    """

    def __init__(self, settings: KafkaSettings, spool_dir: Path, *,
                 max_bytes: int = 1 << 30, role: str = "agent") -> None:
        self._sites = settings.sites
        self.spool = Spool(spool_dir, max_bytes=max_bytes)
        self._producer = EventProducer(settings, role=role, linger_ms=20)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.connected = True
        self.delivered = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._forward, name="outbox", daemon=True)
        self._thread.start()

    def send(self, spec: TopicSpec, payload: serde.Payload) -> None:
        """Encode and spool; raises ``SpoolFull`` only after a very long outage."""
        rec = serde.encode(spec, payload, sites=self._sites)
        self.spool.append(SpooledRecord(rec.topic, rec.key, rec.value,
                                        tuple(rec.headers), rec.partition))
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Records recorded but not yet confirmed by the broker."""
        return len(self.spool)

    def _forward(self) -> None:
        while not self._stop.is_set():
            batch = self.spool.peek(500)
            if not batch:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            for rec in batch:
                self._produce(rec)
            self._confirm(len(batch))

    def _produce(self, rec: SpooledRecord) -> None:
        encoded = serde.Encoded(rec.topic, rec.key, rec.value, list(rec.headers),
                                rec.partition)
        while True:
            try:
                self._producer.send_encoded(encoded)
                return
            except BufferError:  # librdkafka's local queue is full: let it drain
                self._flush_quietly(1.0)

    def _flush_quietly(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError, DeliveryError):
            self._producer.flush(timeout_s)

    def _confirm(self, count: int) -> None:
        """Wait until the broker has every produced record, then forget them."""
        started = time.monotonic()
        while True:
            try:
                self._producer.flush(2.0)
                break
            except TimeoutError:
                # Broker unreachable: librdkafka keeps the records queued and retries
                # forever (message.timeout.ms=0); we keep them spooled meanwhile.
                if self.connected:
                    log.warning("broker unreachable; spooling locally (%d records waiting)",
                                self.backlog)
                self.connected = False
                self.last_error = f"broker unreachable for {time.monotonic() - started:.0f} s"
                if self._stop.is_set():
                    return
            except DeliveryError as exc:
                # Refused for good (e.g. too large): keep the robot running and say so.
                log.error("%s", exc)
                self.last_error = str(exc)
                break
        if not self.connected:
            log.warning("broker reachable again; %d spooled records flowing out", self.backlog)
        self.connected = True
        self.spool.ack(count)
        self.delivered += count

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything sent so far is confirmed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.spool) > 0 and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return len(self.spool) == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout_s``; the rest stays spooled."""
        self.drain(timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        self.spool.close()
