"""Record size limits: what the broker takes per topic, and batches cut to fit it.

The catalog states each topic's ``max.message.bytes``, but the broker's topic config is
what refuses a record — and a refusal fails the whole produce request, so records batched
with an oversized one are refused with it.  Producers therefore ask the broker for each
topic's limit (:class:`TopicLimits`: ``describe_configs``, cached; the catalog's limit
when the broker does not answer) and cut a transition batch that is too large into
row ranges that fit (:func:`split_to_fit`).  A single step that still does not fit
cannot be sent at all: the caller dead-letters it.

Usage::

    limits = TopicLimits(settings)
    fits, unsendable = split_to_fit(record, limits.limit(record.topic))
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from dataclasses import replace

import pyarrow as pa
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from schemas import transitions
from topics import catalog, serde
from topics.settings import TOPIC_MAX_MESSAGE_BYTES, KafkaSettings

log = logging.getLogger(__name__)

#: Bytes a record takes on the wire beyond its key, value and headers: the record-batch
#: header (61 bytes) and the record's own framing, rounded up.
RECORD_OVERHEAD = 128


def record_bytes(rec: serde.Encoded) -> int:
    """What ``rec`` weighs against a topic's ``max.message.bytes`` when sent alone."""
    headers = sum(len(k) + len(v) for k, v in rec.headers)
    return len(rec.value) + len(rec.key) + headers + RECORD_OVERHEAD


def catalog_limit(topic: str, suffix: str = "") -> int | None:
    """The catalog's limit for ``topic`` (``suffix`` stripped), or None if not a catalog
    topic."""
    name = topic[: len(topic) - len(suffix)] if suffix and topic.endswith(suffix) else topic
    spec = catalog.BY_NAME.get(name)
    return None if spec is None else spec.max_message_bytes


class TopicLimits:
    """Each topic's ``max.message.bytes`` as the broker has it, cached for ``ttl_s``.

    Thread-safe.  When the broker does not answer (or the topic is missing), the limit is
    the fallback given (else the catalog's, else the client's ``message_max_bytes``) and
    the broker is asked again after ``retry_s``.
    """

    def __init__(self, settings: KafkaSettings, *, ttl_s: float = 300.0,
                 retry_s: float = 10.0, timeout_s: float = 5.0, topic_suffix: str = "",
                 admin: AdminClient | None = None) -> None:
        self._settings = settings
        self._admin = admin
        self._ttl_s = ttl_s
        self._retry_s = retry_s
        self._timeout_s = timeout_s
        self._suffix = topic_suffix
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int | None, float]] = {}  # topic -> (limit, asked at)

    def limit(self, topic: str, fallback: int | None = None) -> int:
        """The largest record ``topic`` takes, in bytes."""
        default = fallback or catalog_limit(topic, self._suffix) or \
            self._settings.message_max_bytes
        with self._lock:
            known = self._known.get(topic)
        now = time.monotonic()
        if known is not None:
            value, at = known
            if now - at < (self._ttl_s if value is not None else self._retry_s):
                return default if value is None else value
        value = self._ask(topic)
        with self._lock:
            self._known[topic] = (value, now)
        return default if value is None else value

    def forget(self, topic: str) -> None:
        """Ask the broker again next time (after it refused a record as too large)."""
        with self._lock:
            self._known.pop(topic, None)

    def _ask(self, topic: str) -> int | None:
        if self._admin is None:
            self._admin = AdminClient(self._settings.admin_config())
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        try:
            futures = self._admin.describe_configs([resource],
                                                   request_timeout=self._timeout_s)
            entries = futures[resource].result(timeout=self._timeout_s)
            return int(entries[TOPIC_MAX_MESSAGE_BYTES].value)
        except (KafkaException, KeyError, ValueError, TimeoutError) as exc:
            log.info("limit of %s unknown (%s); using the catalog's", topic, exc)
            return None
        except Exception as exc:  # concurrent.futures' own timeout, on older Pythons
            log.info("limit of %s unknown (%s: %s); using the catalog's", topic,
                     type(exc).__name__, exc)
            return None


def _is_arrow(rec: serde.Encoded) -> bool:
    headers = serde.header_map(rec.headers)
    return headers.get(serde.HEADER_CONTENT_TYPE) == serde.ContentType.ARROW.value.encode()


def _read_batch(value: bytes) -> pa.RecordBatch | None:
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowInvalid, OSError):
        return None
    batches = table.combine_chunks().to_batches()
    if len(batches) != 1 or transitions.META_EVENT not in (table.schema.metadata or {}):
        return None
    batch: pa.RecordBatch = batches[0]
    return batch


def _part(rec: serde.Encoded, batch: pa.RecordBatch, start: int, stop: int) -> serde.Encoded:
    """Rows ``start:stop`` of ``batch`` as a record of their own: the header's step count
    follows, and its event id is derived from the whole batch's id and the row range (a
    batch re-split after a restart yields the same parts)."""
    meta = dict(batch.schema.metadata or {})
    header = json.loads(meta[transitions.META_EVENT])
    parent = str(header.get("event_id", ""))
    header["n_steps"] = stop - start
    header["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{parent}/{start}:{stop}"))
    meta[transitions.META_EVENT] = json.dumps(header, separators=(",", ":")).encode()
    part = batch.slice(start, stop - start)
    part = part.replace_schema_metadata(meta)
    return replace(rec, value=serde.arrow_ipc(part))


def split_to_fit(rec: serde.Encoded, limit: int
                 ) -> tuple[list[serde.Encoded], list[serde.Encoded]]:
    """``rec`` as records of at most ``limit`` bytes each (:func:`record_bytes`).

    Returns ``(parts, unsendable)``: a record that fits is returned as is; an Arrow
    transition batch is cut into contiguous row ranges, in order; a single step still too
    large, or a record that is not a transition batch, comes back in ``unsendable``.
    """
    if record_bytes(rec) <= limit:
        return [rec], []
    batch = _read_batch(rec.value) if _is_arrow(rec) else None
    if batch is None or batch.num_rows <= 1:
        return [], [rec]
    fits: list[serde.Encoded] = []
    unsendable: list[serde.Encoded] = []
    # Cut into as many equal ranges as the size suggests, then halve any still too large.
    pieces = max(2, -(-record_bytes(rec) // max(1, limit - RECORD_OVERHEAD)))
    pieces = min(pieces, batch.num_rows)
    edges = [round(i * batch.num_rows / pieces) for i in range(pieces + 1)]
    todo = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    while todo:
        start, stop = todo.pop(0)
        part = _part(rec, batch, start, stop)
        if record_bytes(part) <= limit:
            fits.append(part)
        elif stop - start == 1:
            unsendable.append(part)
        else:
            mid = (start + stop) // 2
            todo[:0] = [(start, mid), (mid, stop)]
    return fits, unsendable
