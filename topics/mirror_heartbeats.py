"""MirrorMaker 2's own heartbeats as a broker receives them: evidence that a site's link works.

Each edge's MirrorMaker 2 (``infra/mirror.py``) emits a heartbeat about once a second into
the heartbeats topic of the cluster it copies *into*; on the cloud broker that is
:data:`TOPIC` (the replication policy ``SitesReplicationPolicy`` renames MM2's reserved
``heartbeats`` so that the robots' ``heartbeats`` keep their name).  A record's key is MM2's
``Heartbeat`` key struct — two Kafka-protocol STRINGs (int16 length + UTF-8): the source
cluster alias, which is the site's name, then the target alias; its value is a version
(int16) and the emit time in ms (int64).  When one site's heartbeats stop while the cloud
still hears the others, the *link* to that site (or its MM2) is down, not necessarily its
robots: the controller then holds the site's leases for a while (:mod:`pipeline.fleet`).

A single-broker topology has no MM2 and no such topic: :class:`MirrorHeartbeats` then
returns nothing and looks for the topic again now and then (MM2 creates it on first start).

Delivery: read-only, no group, nothing committed — only liveness matters, so the reader
starts a little in the past (to learn which sites are mirrored) and follows.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: MirrorMaker 2's heartbeats topic under USER's replication policy (see
#: ``infra/kafka/mirror/SitesReplicationPolicy.java``, which must name the same topic).
TOPIC = "mm2-heartbeats"


@dataclass(frozen=True)
class MirrorHeartbeat:
    """One MM2 heartbeat: the flow ``source -> target`` was alive at ``emitted_ms``
    (the edge's wall clock: data, not something to time liveness by)."""

    source: str
    target: str
    emitted_ms: int


def _string(buf: bytes, at: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">h", buf, at)
    at += 2
    if n < 0 or at + n > len(buf):
        raise ValueError("string runs past the key")
    return buf[at:at + n].decode(), at + n


def parse(key: bytes | None, value: bytes | None) -> MirrorHeartbeat | None:
    """The heartbeat in an MM2 heartbeats record, or None when the record is not one."""
    if not key or not value or len(value) < 10:
        return None
    try:
        source, at = _string(key, 0)
        target, _ = _string(key, at)
        (emitted_ms,) = struct.unpack_from(">q", value, 2)
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
    return MirrorHeartbeat(source, target, int(emitted_ms))


class MirrorHeartbeats:
    """Follows :data:`TOPIC` on one broker without blocking.

    :meth:`poll` returns the heartbeats that arrived since the last call (none while the
    topic does not exist; the reader looks for it again every ``recheck_s``).  At the
    start it reads back ``lookback_s`` of the topic, so a restarted controller knows which
    sites are mirrored.
    """

    def __init__(self, settings: KafkaSettings, *, topic: str = TOPIC,
                 lookback_s: float = 300.0, recheck_s: float = 10.0,
                 role: str = "mirror-heartbeats") -> None:
        self.topic = topic
        self._lookback_s = lookback_s
        self._recheck_s = recheck_s
        conf = settings.consumer_config(f"{settings.client_id}-{role}-{uuid.uuid4().hex[:12]}",
                                        role=role, read_committed=False)
        self._client = Consumer(conf)
        self._attached = False
        self._next_look = 0.0

    def _attach(self) -> None:
        self._next_look = time.monotonic() + self._recheck_s
        try:
            meta = self._client.list_topics(self.topic, timeout=2.0).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                return
            since = int((time.time() - self._lookback_s) * 1000)
            found = self._client.offsets_for_times(
                [TopicPartition(self.topic, p, since) for p in sorted(meta.partitions)],
                timeout=5.0)
        except KafkaException as exc:
            log.info("MirrorMaker heartbeats topic %s not readable yet: %s", self.topic, exc)
            return
        self._client.assign([TopicPartition(self.topic, tp.partition,
                                            tp.offset if tp.offset >= 0 else OFFSET_END)
                             for tp in found])
        self._attached = True
        log.info("following MirrorMaker heartbeats on %s", self.topic)

    def poll(self, max_records: int = 500) -> list[MirrorHeartbeat]:
        """Heartbeats received since the last call; never waits for new ones."""
        if not self._attached:
            if time.monotonic() < self._next_look:
                return []
            self._attach()
            if not self._attached:
                return []
        out: list[MirrorHeartbeat] = []
        for msg in self._client.consume(max_records, 0):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue
            beat = parse(msg.key(), msg.value())
            if beat is not None:
                out.append(beat)
        return out

    def close(self) -> None:
        self._client.close()


def last_heard(settings: KafkaSettings, *, topic: str = TOPIC, lookback_s: float = 300.0,
               timeout_s: float = 5.0) -> dict[str, float]:
    """When each site's MirrorMaker 2 heartbeat last reached this broker within the past
    ``lookback_s`` (site -> its emit time, the edge's wall-clock seconds); {} when the
    topic does not exist (no mirror) or the broker does not answer in time.  For views
    (``userctl robots``, ``userctl status``), which read the log once and exit."""
    conf = settings.consumer_config(f"{settings.client_id}-link-view-{uuid.uuid4().hex[:12]}",
                                    role="link-view", read_committed=False)
    conf["log_level"] = 0  # an absent topic or broker is an answer here
    client = Consumer(conf)
    heard: dict[str, float] = {}
    try:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return {}
        since = int((time.time() - lookback_s) * 1000)
        starts = client.offsets_for_times(
            [TopicPartition(topic, p, since) for p in sorted(meta.partitions)],
            timeout=timeout_s)
        ends = {tp.partition: client.get_watermark_offsets(tp, timeout=timeout_s)[1]
                for tp in starts if tp.offset >= 0}
        todo = {p: end for p, end in ends.items()
                if end > next(tp.offset for tp in starts if tp.partition == p)}
        if not todo:
            return {}
        client.assign([tp for tp in starts if tp.partition in todo])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in client.consume(500, 0.2):
                if msg.error() is not None:
                    continue
                beat = parse(msg.key(), msg.value())
                if beat is not None:
                    heard[beat.source] = max(heard.get(beat.source, 0.0),
                                             beat.emitted_ms / 1000)
                part, offset = msg.partition(), msg.offset()
                if part is not None and offset is not None and offset + 1 >= todo.get(part, 0):
                    todo.pop(part, None)
    except KafkaException:
        return heard
    finally:
        client.close()
    return heard
