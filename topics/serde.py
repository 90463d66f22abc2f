"""Encode and decode events by topic spec (DESIGN §3).

Wire forms, chosen by the topic's :class:`~topics.catalog.Value`:

* ``json`` — the event's JSON text (``kafka-console-consumer`` shows it as is);
* ``arrow-ipc`` — one Arrow IPC *stream* per record, many steps per record, the batch
  header in the Arrow schema metadata, buffers compressed as :class:`SerdeSettings` says;
* ``binary`` — the raw bytes (weight chunks), with the event's other fields as JSON in
  the ``user-event`` header.

Every record carries the headers ``user-schema``, ``user-schema-version`` and
``content-type``, so any tool can tell what a record is without decoding it.  Old
versions are upcast on read (:mod:`schemas.registry`).  Decoding raises
:class:`~schemas.events.SchemaError` whose ``reason`` says what is wrong; it never
raises anything else for bad bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import pyarrow as pa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import events, transitions
from schemas.events import Envelope, RejectReason, SchemaError
from schemas.registry import REGISTRY, Registry
from topics import catalog
from topics.catalog import Key, TopicSpec, Value
from topics.settings import SiteMap

HEADER_SCHEMA = "user-schema"
HEADER_VERSION = "user-schema-version"
HEADER_CONTENT_TYPE = "content-type"
HEADER_EVENT = "user-event"

#: What a topic record decodes to.
Payload = Envelope | transitions.TransitionBatch | transitions.RewardedTransitionBatch

#: Kafka record headers as confluent-kafka hands them over.
Headers = Sequence[tuple[str, bytes | None]]


class ContentType(StrEnum):
    JSON = "application/json"
    ARROW = "application/vnd.apache.arrow.stream"
    BINARY = "application/octet-stream"


CONTENT_TYPES: dict[Value, ContentType] = {
    Value.JSON: ContentType.JSON,
    Value.ARROW: ContentType.ARROW,
    Value.BINARY: ContentType.BINARY,
}


def _names(*models: type[Envelope]) -> frozenset[str]:
    return frozenset(events.schema_id(m)[0] for m in models)


#: Which event schemas each topic carries.
TOPIC_SCHEMAS: dict[str, frozenset[str]] = {
    catalog.ROBOTS.name: _names(events.RobotAnnouncedV1, events.RobotStateChangedV1),
    catalog.HEARTBEATS.name: _names(events.HeartbeatV1),
    catalog.EXPERIMENTS.name: _names(events.ExperimentSubmittedV1, events.ExperimentStatusV1),
    catalog.ASSIGNMENTS.name: _names(events.LeaseGrantedV1, events.LeaseReleasedV1),
    catalog.TRANSITIONS_RAW.name: _names(events.TransitionBatchV1),
    catalog.TRANSITIONS.name: _names(events.RewardedTransitionBatchV1),
    catalog.EPISODES.name: _names(events.EpisodeStartedV1, events.EpisodeEndedV1),
    catalog.WEIGHTS.name: _names(events.WeightsChunkV1),
    catalog.WEIGHTS_MANIFESTS.name: _names(events.WeightsManifestV1),
    catalog.COMMANDS.name: _names(events.CommandV1),
    catalog.LEARNER_METRICS.name: _names(events.LearnerMetricsV1),
    catalog.DLQ.name: _names(events.DeadLetterV1),
    catalog.GAPS.name: _names(events.GapDetectedV1),
    catalog.HOSTS.name: _names(events.HostAnnouncedV1),
    catalog.HOST_HEARTBEATS.name: _names(events.HostHeartbeatV1),
    catalog.PLACEMENTS.name: _names(events.PlacementGrantedV1, events.PlacementReleasedV1),
    catalog.INFERENCE_REQUESTS.name: _names(events.InferenceRequestV1),
    catalog.INFERENCE_REPLIES.name: _names(events.ActionChunkV1),
    catalog.LABELS.name: _names(events.EpisodeLabeledV1),
}


class SerdeSettings(BaseSettings):
    """How records are encoded and how much a decoder will take (``USER_SERDE_*``)."""

    model_config = SettingsConfigDict(env_prefix="USER_SERDE_", frozen=True, extra="ignore")

    # Off by default: compressing buffers in the producing (Python) thread cost 3-10x the
    # rest of the codec on sensor noise (`userctl bench codec`), while the WAN hop is
    # compressed anyway by MirrorMaker's producer (zstd, infra/mirror.py) and a Kafka
    # producer can compress whole record batches in librdkafka's own thread.
    arrow_compression: Literal["zstd", "lz4", "none"] = Field(
        "none", description="Arrow IPC buffer compression of transition batches"
    )
    arrow_compression_level: int | None = Field(
        None, description="codec level; None is the codec's default (zstd: 1)"
    )
    arrow_compress_min_bytes: int = Field(
        64 * 1024, ge=0,
        description="batches smaller than this (uncompressed) are sent uncompressed: "
        "per-buffer codec overhead outweighs the saving",
    )
    max_steps: int = Field(100_000, gt=0, description="most steps a decoded batch may hold")
    max_decoded_bytes: int = Field(
        1 << 30, gt=0, description="most bytes a decoded batch may expand to"
    )


DEFAULT_SETTINGS = SerdeSettings()


@dataclass(frozen=True)
class Encoded:
    """A record ready for ``Producer.produce``; ``partition`` None: partition by key."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None


# -- keys ---------------------------------------------------------------------------------


def _event_of(payload: Payload) -> Envelope:
    return payload if isinstance(payload, Envelope) else payload.event


def key_for(spec: TopicSpec, payload: Payload) -> str:
    """The record key ``payload`` must have on ``spec``; raises ``SchemaError``."""
    event = _event_of(payload)

    def need(value: str | None, what: str) -> str:
        if value is None:
            raise SchemaError(RejectReason.MISSING_FIELD,
                              f"{event.schema_name} has no {what} for the {spec.name} key")
        return value

    # On the compacted topics an entity's latest *state* must not replace its
    # *description* (a robot's announcement, an experiment's spec): compaction keeps one
    # record per key, so state changes get a key of their own.
    if isinstance(event, events.RobotStateChangedV1):
        return f"{need(event.robot_id, 'robot_id')}/state"
    if isinstance(event, events.ExperimentStatusV1):
        return f"{need(event.experiment_id, 'experiment_id')}/status"
    if spec.key == Key.ROBOT_ID:
        return need(event.robot_id, "robot_id")
    if spec.key == Key.SITE_ROBOT:
        return f"{need(event.site, 'site')}/{need(event.robot_id, 'robot_id')}"
    if spec.key == Key.EXPERIMENT_ID:
        return need(event.experiment_id, "experiment_id")
    if spec.key == Key.EXPERIMENT_VERSION:
        version = getattr(event, "version", None)
        if not isinstance(version, int):
            raise SchemaError(RejectReason.MISSING_FIELD,
                              f"{event.schema_name} has no version for the {spec.name} key")
        return f"{need(event.experiment_id, 'experiment_id')}/{version}"
    if spec.key == Key.HOST_ID and isinstance(
            event, events.HostAnnouncedV1 | events.HostHeartbeatV1):
        return event.host_id
    if spec.key == Key.PLACEMENT_ID and isinstance(
            event, events.PlacementGrantedV1 | events.PlacementReleasedV1):
        return event.placement_id
    if spec.key == Key.EPISODE and isinstance(event, events.EpisodeLabeledV1):
        return f"{event.experiment_id}/{event.robot_id}/{event.episode_id}"
    if isinstance(event, events.DeadLetterV1):
        return event.source_topic
    if isinstance(event, events.GapDetectedV1):
        return f"{event.topic}/{event.partition}"
    raise SchemaError(RejectReason.WRONG_TOPIC,
                      f"{event.schema_name} cannot be keyed by {spec.key.value}")


# -- encode -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _ipc_options(compression: str, level: int | None) -> pa.ipc.IpcWriteOptions:
    if compression == "none":
        return pa.ipc.IpcWriteOptions(compression=None)
    return pa.ipc.IpcWriteOptions(compression=pa.Codec(compression, level))


def arrow_ipc(batch: pa.RecordBatch, settings: SerdeSettings = DEFAULT_SETTINGS) -> bytes:
    """One Arrow IPC stream holding ``batch``, compressed as ``settings`` say (readers
    need not know: Arrow marks compressed buffers itself)."""
    compression = settings.arrow_compression
    # get_total_buffer_size, not nbytes: nbytes walks every buffer to skip shared ones
    # (tens of µs per record) and a size threshold needs no such precision.
    if batch.get_total_buffer_size() < settings.arrow_compress_min_bytes:
        compression = "none"
    options = _ipc_options(compression, settings.arrow_compression_level)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def encode(
    spec: TopicSpec,
    payload: Payload,
    *,
    sites: SiteMap | None = None,
    settings: SerdeSettings = DEFAULT_SETTINGS,
) -> Encoded:
    """The record for ``payload`` on ``spec``.

    With ``sites``, a site-partitioned topic's partition is chosen from the event's site
    (raises ``UnknownSiteError``).  Raises ``SchemaError`` if the event does not belong on
    the topic, and :class:`RecordTooLarge` (a ``ValueError``) if the record exceeds the
    topic's size limit.
    """
    event = _event_of(payload)
    allowed = TOPIC_SCHEMAS.get(spec.name, frozenset())
    if event.schema_name not in allowed:
        raise SchemaError(RejectReason.WRONG_TOPIC,
                          f"{event.schema_name} does not go on {spec.name} "
                          f"(it carries {', '.join(sorted(allowed))})")
    headers = [
        (HEADER_SCHEMA, event.schema_name.encode()),
        (HEADER_VERSION, str(event.schema_version).encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPES[spec.value].value.encode()),
    ]
    if spec.value == Value.ARROW:
        if isinstance(payload, Envelope):
            raise SchemaError(RejectReason.WRONG_TOPIC, f"{spec.name} carries batches")
        value = arrow_ipc(transitions.to_arrow(payload), settings)
    elif spec.value == Value.BINARY:
        if not isinstance(event, events.WeightsChunkV1):
            raise SchemaError(RejectReason.WRONG_TOPIC, f"{spec.name} carries weight chunks")
        value = event.data
        headers.append((HEADER_EVENT, event.model_dump_json().encode()))
    else:
        value = event.model_dump_json().encode()
    partition = None
    if sites is not None and spec.site_partitioned:
        partition = spec.partition_for(sites, event.site or "", event.robot_id or "")
    encoded = Encoded(spec.name, key_for(spec, payload).encode(), value, headers, partition)
    if len(value) > spec.max_message_bytes:
        raise RecordTooLarge(
            f"a {event.schema_name} record of {len(value)} bytes exceeds {spec.name}'s "
            f"limit of {spec.max_message_bytes}; send fewer steps per batch", encoded)
    return encoded


class RecordTooLarge(ValueError):
    """A record over its topic's size limit; ``record`` is the encoded record, for a
    producer that splits it (:func:`topics.limits.split_to_fit`) or dead-letters it."""

    def __init__(self, message: str, record: Encoded) -> None:
        super().__init__(message)
        self.record = record


# -- decode -------------------------------------------------------------------------------


def header_map(headers: Headers | None) -> dict[str, bytes]:
    """Headers as a dict (the last of repeated keys wins; empty values kept as b'')."""
    return {k: (v or b"") for k, v in (headers or ())}


def _schema_from_headers(h: Mapping[str, bytes]) -> tuple[str, int] | None:
    if HEADER_SCHEMA not in h and HEADER_VERSION not in h:
        return None
    try:
        name = h[HEADER_SCHEMA].decode()
        version = int(h[HEADER_VERSION].decode())
    except (KeyError, UnicodeDecodeError, ValueError):
        raise SchemaError(RejectReason.BAD_HEADERS,
                          f"headers {HEADER_SCHEMA}/{HEADER_VERSION} are missing or unreadable"
                          ) from None
    return name, version


def _json_object(data: bytes, what: str) -> dict[str, object]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(RejectReason.NOT_UTF8, f"{what} is not UTF-8 ({exc.reason})") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise SchemaError(RejectReason.NOT_JSON, f"{what} is not JSON ({exc})") from None
    except RecursionError:
        raise SchemaError(RejectReason.NOT_JSON, f"{what} nests too deeply") from None
    if not isinstance(obj, dict):
        raise SchemaError(RejectReason.NOT_OBJECT,
                          f"{what} is a JSON {type(obj).__name__}, not an object")
    return obj


def _schema_of(body: Mapping[str, object], from_headers: tuple[str, int] | None
               ) -> tuple[str, int]:
    name, version = body.get("schema_name"), body.get("schema_version")
    in_body: tuple[str, int] | None = None
    if isinstance(name, str) and isinstance(version, int) and not isinstance(version, bool):
        in_body = (name, version)
    elif name is not None or version is not None:
        raise SchemaError(RejectReason.INVALID_FIELD,
                          f"schema_name/schema_version are {name!r}/{version!r}")
    if in_body and from_headers and in_body != from_headers:
        raise SchemaError(RejectReason.HEADER_MISMATCH,
                          f"headers say {from_headers[0]} v{from_headers[1]}, "
                          f"the body {in_body[0]} v{in_body[1]}")
    found = in_body or from_headers
    if found is None:
        raise SchemaError(RejectReason.NO_SCHEMA,
                          "neither headers nor body name the schema and version")
    return found


def _check_topic(spec: TopicSpec, name: str, registry: Registry) -> None:
    registry.latest(name)  # an unknown schema is reported as such, not as misplaced
    if name not in TOPIC_SCHEMAS.get(spec.name, frozenset()):
        raise SchemaError(RejectReason.WRONG_TOPIC, f"{name} records do not go on {spec.name}")


def _row_bytes(schema: pa.Schema) -> int:
    """Bytes one row of ``schema`` takes decoded (fixed-size parts; strings count 16)."""
    return sum(_type_bytes(f.type) for f in schema)


@functools.lru_cache(maxsize=512)
def _type_bytes(t: pa.DataType) -> int:
    """Bytes one value of ``t`` takes decoded; cached: a layout's few types recur in
    every record."""
    if pa.types.is_fixed_size_list(t):
        return int(t.list_size) * _type_bytes(t.value_type)
    if pa.types.is_struct(t):
        return sum(_type_bytes(f.type) for f in t)
    if pa.types.is_boolean(t):
        return 1
    try:
        return max(1, int(t.bit_width) // 8)
    except ValueError:
        return 16


def _decode_arrow(spec: TopicSpec, value: bytes, from_headers: tuple[str, int] | None,
                  registry: Registry, settings: SerdeSettings) -> Payload:
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(value))
        schema = reader.schema
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise SchemaError(RejectReason.NOT_ARROW, f"not an Arrow IPC stream ({exc})") from None
    meta = schema.metadata or {}
    try:
        name = meta[transitions.META_SCHEMA].decode()
        version = int(meta[transitions.META_VERSION])
        n_steps = _json_object(meta[transitions.META_EVENT], "batch header").get("n_steps")
    except KeyError:
        raise SchemaError(RejectReason.NO_SCHEMA, "Arrow metadata carries no event header"
                          ) from None
    except (UnicodeDecodeError, ValueError):
        raise SchemaError(RejectReason.NO_SCHEMA, "Arrow schema metadata is unreadable"
                          ) from None
    if from_headers and from_headers != (name, version):
        raise SchemaError(RejectReason.HEADER_MISMATCH,
                          f"headers say {from_headers[0]} v{from_headers[1]}, "
                          f"the Arrow metadata {name} v{version}")
    _check_topic(spec, name, registry)
    if isinstance(n_steps, int) and n_steps > settings.max_steps:
        raise SchemaError(RejectReason.OVERSIZE,
                          f"{n_steps} steps in one batch; the limit is {settings.max_steps}")
    if isinstance(n_steps, int) and n_steps * _row_bytes(schema) > settings.max_decoded_bytes:
        raise SchemaError(RejectReason.OVERSIZE,
                          f"{n_steps} steps would decode to more than "
                          f"{settings.max_decoded_bytes} bytes")
    try:
        batches = list(reader)
    except (pa.ArrowException, ValueError, OSError, MemoryError) as exc:
        raise SchemaError(RejectReason.NOT_ARROW, f"unreadable Arrow batch ({exc})") from None
    if not batches:
        raise SchemaError(RejectReason.EMPTY_BATCH, "the Arrow stream holds no batch")
    if sum(b.num_rows for b in batches) > settings.max_steps:
        raise SchemaError(RejectReason.OVERSIZE, f"more than {settings.max_steps} rows")
    rb = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    try:
        rb.validate(full=True)
    except pa.ArrowException as exc:
        raise SchemaError(RejectReason.NOT_ARROW, f"corrupt Arrow data ({exc})") from None
    return transitions.from_arrow(rb, registry=registry)


def _decode_binary(spec: TopicSpec, value: bytes, h: Mapping[str, bytes],
                   from_headers: tuple[str, int] | None, registry: Registry) -> Payload:
    if HEADER_EVENT not in h:
        raise SchemaError(RejectReason.NO_SCHEMA, f"no {HEADER_EVENT} header on a binary record")
    body = _json_object(h[HEADER_EVENT], f"the {HEADER_EVENT} header")
    name, version = _schema_of(body, from_headers)
    _check_topic(spec, name, registry)
    digest = body.get("sha256")
    if isinstance(digest, str) and hashlib.sha256(value).hexdigest() != digest:
        raise SchemaError(RejectReason.HASH_MISMATCH, "the chunk's bytes do not match its sha256")
    return registry.load(name, version, {**body, "data": value})


def decode(
    spec: TopicSpec,
    value: bytes | None,
    headers: Headers | None = None,
    *,
    registry: Registry = REGISTRY,
    settings: SerdeSettings = DEFAULT_SETTINGS,
) -> Payload:
    """Decode one record of ``spec`` into its newest event model.

    Raises ``SchemaError`` for anything that is not an acceptable record of the topic.
    """
    if not value:
        raise SchemaError(RejectReason.EMPTY, "the record has no value")
    if len(value) > spec.max_message_bytes:
        raise SchemaError(RejectReason.OVERSIZE,
                          f"{len(value)} bytes exceed {spec.name}'s limit of "
                          f"{spec.max_message_bytes}")
    h = header_map(headers)
    want = CONTENT_TYPES[spec.value].value
    if HEADER_CONTENT_TYPE in h and h[HEADER_CONTENT_TYPE].decode("utf-8", "replace") != want:
        raise SchemaError(RejectReason.CONTENT_TYPE,
                          f"content-type {h[HEADER_CONTENT_TYPE]!r}, {spec.name} carries {want}")
    from_headers = _schema_from_headers(h)
    if spec.value == Value.ARROW:
        return _decode_arrow(spec, value, from_headers, registry, settings)
    if spec.value == Value.BINARY:
        return _decode_binary(spec, value, h, from_headers, registry)
    body = _json_object(value, "the value")
    name, version = _schema_of(body, from_headers)
    _check_topic(spec, name, registry)
    return registry.load(name, version, body)


def encoded_size(payload: Payload, settings: SerdeSettings = DEFAULT_SETTINGS) -> int:
    """Bytes ``payload`` takes on the wire (for sizing batches under a topic limit)."""
    if isinstance(payload, Envelope):
        return len(payload.model_dump_json())
    return len(arrow_ipc(transitions.to_arrow(payload), settings))


def steps_per_record(row_bytes: int, spec: TopicSpec, headroom: float = 0.8) -> int:
    """How many rows of ``row_bytes`` fit a record of ``spec`` (uncompressed, with
    ``headroom`` for framing)."""
    return max(1, math.floor(spec.max_message_bytes * headroom / max(1, row_bytes)))
