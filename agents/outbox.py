"""Where an agent puts the events it produces: an outbox that never blocks the robot.

:class:`Outbox` is the agent's only way out.  ``send`` encodes an event for its topic
and appends it to the on-disk :class:`~agents.spool.Spool` — no network on the control
loop.  A forwarder thread drains the spool to Kafka in order and acknowledges records
only after the broker confirmed them, so a broker outage delays data but loses none;
when the broker returns, the backlog flows out in the order it was recorded.

Nothing refused is dropped silently.  The forwarder learns each topic's size limit from
the broker (:class:`~topics.limits.TopicLimits`) and cuts a transition batch too large for
it into row ranges that fit; a record the broker still refuses (too large even as one
step, or any other permanent delivery error) goes to ``dlq`` with its bytes and the
reason — or, when the broker refuses the dead letter too, to ``dead-letters.jsonl`` in
the spool directory — and is counted (:attr:`Outbox.dead_letters`, shown by
``userctl robots``).  The records produced together with a refused one are sent again,
each alone, so they are delivered (a refusal fails the whole produce request).

A full spool is back-pressure, not a crash: ``send`` raises
:class:`~agents.spool.SpoolFull` and the caller (the robot worker) holds its robot and
keeps the record until the spool has room again.

:class:`MemoryOutbox` is the fake for unit tests: it keeps the decoded events in a list.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from agents.spool import Spool, SpooledRecord, SpoolFull
from schemas import events
from topics import catalog, limits, serde, validation
from topics.catalog import TopicSpec
from topics.producer import DeliveryError, EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Something an agent can hand events to (the real outbox or a fake)."""

    def send(self, spec: TopicSpec, payload: serde.Payload, *,
             over_budget: bool = False) -> None:
        """Accept one event for ``spec``; never blocks on the network.

        Raises :class:`~agents.spool.SpoolFull` when the local budget is spent (unless
        ``over_budget``: a last record at shutdown, kept rather than lost)."""


class MemoryOutbox:
    """In-memory fake: records ``(spec, payload)`` after encoding them (schema-checked)."""

    def __init__(self, settings: KafkaSettings | None = None) -> None:
        self._sites = (settings or KafkaSettings()).sites
        self.sent: list[tuple[TopicSpec, serde.Payload]] = []

    def send(self, spec: TopicSpec, payload: serde.Payload, *,
             over_budget: bool = False) -> None:
        with contextlib.suppress(serde.RecordTooLarge):  # the real one splits those
            serde.encode(spec, payload, sites=self._sites)  # the same checks as the real one
        self.sent.append((spec, payload))


class OutboxDeadLetters:
    """A :class:`~topics.consumer.DeadLetterSink` for an agent's readers (commands,
    weights): each refused record goes to ``dlq`` through the outbox, spooled like any
    event, so a broker outage delays it but loses none."""

    def __init__(self, sink: EventSink, *, consumer: str) -> None:
        self._sink = sink
        self._consumer = consumer
        self.sent = 0

    def send(self, rejected: validation.Rejected) -> None:
        rec = rejected.record
        log.warning("dead letter: %s[%d]@%d %s: %s", rec.topic, rec.partition, rec.offset,
                    rejected.reason.value, validation.excerpt(rejected.detail))
        try:
            self._sink.send(catalog.DLQ, validation.dead_letter(rejected,
                                                                consumer=self._consumer))
        except SpoolFull as exc:
            log.error("dead letter of %s[%d]@%d not kept: %s", rec.topic, rec.partition,
                      rec.offset, exc)
            return
        self.sent += 1

    def flush(self) -> None:
        """Spooled is durable enough: the outbox delivers it."""


class _Stopped(Exception):
    """The outbox closed while records were still on their way (they stay spooled)."""


class Outbox:
    """Spool-backed, ordered, at-least-once delivery of an agent's events to Kafka.

    Delivery: at-least-once.  A spooled record is acknowledged (forgotten) only after
    the broker confirmed it — or after it was refused for good and dead-lettered; a
    crash between the two re-sends it on restart, and consumers drop the duplicate by
    its step identity.  ``topic_suffix`` namespaces every topic (tests).
    """

    def __init__(self, settings: KafkaSettings, spool_dir: Path, *,
                 max_bytes: int = 1 << 30, role: str = "agent", topic_suffix: str = "",
                 topic_limits: limits.TopicLimits | None = None) -> None:
        self._sites = settings.sites
        self._suffix = topic_suffix
        self._role = role
        self.spool = Spool(spool_dir, max_bytes=max_bytes)
        self.dead_letter_file = spool_dir / "dead-letters.jsonl"
        self._producer = EventProducer(settings, role=role, linger_ms=20)
        self._limits = topic_limits or limits.TopicLimits(settings, topic_suffix=topic_suffix)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.connected = True
        self.delivered = 0
        self.dead_letters = 0
        """records refused by the broker and dead-lettered (to ``dlq`` or the file)."""
        self.last_error = ""
        self._thread = threading.Thread(target=self._forward, name="outbox", daemon=True)
        self._thread.start()

    def send(self, spec: TopicSpec, payload: serde.Payload, *,
             over_budget: bool = False) -> None:
        """Encode and spool; raises ``SpoolFull`` when the spool's budget is spent.

        A record over the catalog's limit is spooled all the same: the forwarder cuts it
        to fit the broker's limit or dead-letters it."""
        try:
            rec = serde.encode(spec, payload, sites=self._sites)
        except serde.RecordTooLarge as exc:
            rec = exc.record
        self.send_record(rec, over_budget=over_budget)

    def send_record(self, rec: serde.Encoded, *, over_budget: bool = False) -> None:
        """Spool an already encoded record (its topic gets the outbox's suffix)."""
        self.spool.append(SpooledRecord(rec.topic + self._suffix, rec.key, rec.value,
                                        tuple(rec.headers), rec.partition),
                          over_budget=over_budget)
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Records recorded but not yet confirmed by the broker."""
        return len(self.spool)

    @property
    def spool_bytes(self) -> int:
        """Bytes recorded but not yet confirmed by the broker."""
        return self.spool.pending_bytes

    # -- the forwarder thread ------------------------------------------------------------

    def _forward(self) -> None:
        while not self._stop.is_set():
            batch = self.spool.peek(500)
            if not batch:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                self._deliver([serde.Encoded(r.topic, r.key, r.value, list(r.headers),
                                             r.partition) for r in batch])
            except _Stopped:
                self.spool.rewind()
                return
            except Exception:  # never lose the thread: the records stay spooled
                log.exception("outbox: delivery failed; retrying")
                self.spool.rewind()
                self._stop.wait(1.0)
                continue
            self.spool.ack(len(batch))
            self.delivered += len(batch)

    def _deliver(self, batch: list[serde.Encoded]) -> None:
        """Return once every record of ``batch`` is confirmed or dead-lettered."""
        outgoing: list[serde.Encoded] = []
        for rec in batch:
            outgoing.extend(self._fit(rec, self._limit(rec.topic)))
        refused = self._send_all(outgoing)
        if not refused:
            return
        # A refusal fails the whole produce request, so some of these were refused only
        # for their neighbours: send each again on its own.
        for topic in {rec.topic for rec, _ in refused}:
            self._limits.forget(topic)
        for rec, _ in refused:
            self._send_alone(rec)

    def _send_alone(self, rec: serde.Encoded) -> None:
        failed = self._send_all([rec])
        if not failed:
            return
        _, err = failed[0]
        if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            # Refused alone: the broker's limit is below what we knew; cut smaller.
            size = limits.record_bytes(rec)
            for part in self._fit(rec, min(self._limit(rec.topic), size - 1), refused=err):
                self._send_alone(part)
        else:
            self._dead_letter(rec, events.RejectReason.REFUSED,
                              f"the broker refused it: {err.str()}")

    def _fit(self, rec: serde.Encoded, limit: int,
             refused: KafkaError | None = None) -> list[serde.Encoded]:
        """``rec`` cut to ``limit``; the steps that cannot fit are dead-lettered."""
        fits, unsendable = limits.split_to_fit(rec, limit)
        if len(fits) > 1:
            log.info("a %d-byte record for %s was split into %d to fit its limit of %d "
                     "bytes", len(rec.value), rec.topic, len(fits), limit)
        for part in unsendable:
            why = f"the broker refused it ({refused.str()})" if refused else "it"
            self._dead_letter(part, events.RejectReason.OVERSIZE,
                              f"{limits.record_bytes(part)} bytes: {why} exceeds "
                              f"{rec.topic}'s limit of {limit} bytes even as one record")
        return fits

    def _limit(self, topic: str) -> int:
        broker = self._limits.limit(topic)
        known = limits.catalog_limit(topic, self._suffix)
        return broker if known is None else min(broker, known)

    def _send_all(self, records: list[serde.Encoded]
                  ) -> list[tuple[serde.Encoded, KafkaError]]:
        """Produce ``records`` and wait for every outcome (as long as the broker is
        away); returns the refused ones with their errors.  Raises :class:`_Stopped`."""
        outcome: dict[int, KafkaError | None] = {}
        refused: list[tuple[serde.Encoded, KafkaError]] = []

        def report(i: int) -> Callable[[KafkaError | None, Message], None]:
            def done(err: KafkaError | None, _msg: Message) -> None:
                outcome[i] = err
            return done

        for i, rec in enumerate(records):
            while True:
                try:
                    self._producer.send_encoded(rec, on_delivery=report(i))
                    break
                except BufferError:  # librdkafka's local queue is full: let it drain
                    self._flush_quietly(1.0)
                except KafkaException as exc:  # refused by the client itself
                    outcome[i] = exc.args[0]
                    break
        started = time.monotonic()
        while len(outcome) < len(records):
            try:
                self._producer.flush(2.0)
            except TimeoutError:
                # Broker unreachable: librdkafka keeps the records queued and retries
                # forever (message.timeout.ms=0); we keep them spooled meanwhile.
                if self.connected:
                    log.warning("broker unreachable; spooling locally (%d records waiting)",
                                self.backlog)
                self.connected = False
                self.last_error = f"broker unreachable for {time.monotonic() - started:.0f} s"
                if self._stop.is_set():
                    raise _Stopped from None
            except DeliveryError:  # not ours: every record here reports to `outcome`
                pass
        if not self.connected:
            log.warning("broker reachable again; %d spooled records flowing out", self.backlog)
        self.connected = True
        for i, rec in enumerate(records):
            err = outcome[i]
            if err is not None:
                refused.append((rec, err))
        return refused

    def _dead_letter(self, rec: serde.Encoded, reason: events.RejectReason,
                     detail: str) -> None:
        """Put a record the broker will not take on ``dlq``, or in the local file when
        ``dlq`` refuses it too.  Raises :class:`_Stopped`."""
        record = validation.Record(topic=rec.topic, partition=-1 if rec.partition is None
                                   else rec.partition, offset=-1, value=rec.value,
                                   key=rec.key, headers=tuple(rec.headers))
        rejected = validation.Rejected(record, reason, detail)
        dlq = catalog.DLQ.name + self._suffix
        letter = validation.dead_letter(rejected, consumer=self._role,
                                        dlq_limit=self._limit(dlq))
        log.error("dead letter: a %d-byte record for %s: %s: %s", len(rec.value), rec.topic,
                  reason.value, validation.excerpt(detail))
        self.last_error = f"{reason.value}: {validation.excerpt(detail)}"
        self.dead_letters += 1
        failed: list[tuple[serde.Encoded, KafkaError]] = []
        try:
            encoded = replace(serde.encode(catalog.DLQ, letter), topic=dlq)
        except serde.RecordTooLarge:
            pass
        else:
            failed = self._send_all([encoded])
            if not failed and not letter.truncated:
                return
        # dlq refused it (or kept only part of it): the whole record goes to the file.
        whole = validation.dead_letter(rejected, consumer=self._role,
                                       dlq_limit=len(rec.value) * 2 + (1 << 20))
        self._write_local(whole, failed[0][1].str() if failed else "kept in part on dlq")

    def _write_local(self, letter: events.DeadLetterV1, why: str) -> None:
        log.error("dead letter kept in %s (%s)", self.dead_letter_file, validation.excerpt(why))
        with self.dead_letter_file.open("ab") as f:
            f.write(letter.model_dump_json().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _flush_quietly(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError, DeliveryError):
            self._producer.flush(timeout_s)

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
