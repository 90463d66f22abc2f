"""Accept or refuse one Kafka record: pure functions, no Kafka client.

:func:`validate` turns a :class:`Record` into :class:`Accepted` (with the decoded event)
or :class:`Rejected` (with a :class:`~schemas.events.RejectReason` and a one-line
detail); it never raises.  :func:`dead_letter` turns a rejection into the
:class:`~schemas.events.DeadLetterV1` that goes to ``dlq``.  The Kafka consumers in
:mod:`topics.consumer` are thin shells around these two.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas import events, transitions
from schemas.events import RejectReason, SchemaError
from schemas.registry import REGISTRY, Registry
from schemas.spaces import RobotSpec
from topics import catalog, serde


@dataclass(frozen=True)
class Record:
    """One Kafka record as read, independent of the client library."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Accepted:
    record: Record
    event: serde.Payload


@dataclass(frozen=True)
class Rejected:
    record: Record
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class Rules:
    """What a consumer accepts beyond well-formed events.

    ``robots`` are the announced specs (robot id -> spec) that transition batches are
    checked against.  A batch of a robot not in ``robots`` is accepted on its own
    consistency unless ``require_announced``.
    """

    robots: Mapping[str, RobotSpec] = field(default_factory=dict)
    require_announced: bool = False
    check_keys: bool = True
    registry: Registry = REGISTRY
    serde: serde.SerdeSettings = serde.DEFAULT_SETTINGS


def _check(record: Record, rules: Rules) -> serde.Payload:
    try:
        spec = catalog.spec(record.topic)
    except KeyError as exc:
        raise SchemaError(RejectReason.WRONG_TOPIC, str(exc.args[0])) from None
    payload = serde.decode(spec, record.value, record.headers,
                           registry=rules.registry, settings=rules.serde)
    if rules.check_keys:
        want = serde.key_for(spec, payload)
        if record.key is None:
            raise SchemaError(RejectReason.KEY_MISMATCH,
                              f"the record has no key; expected {want!r}")
        got = record.key.decode("utf-8", "replace")
        if got != want:
            raise SchemaError(RejectReason.KEY_MISMATCH, f"key {got!r}, the event says {want!r}")
    if isinstance(payload, events.Envelope):
        return payload
    transitions.check_content(payload)
    robot = rules.robots.get(payload.robot_id)
    if robot is not None:
        transitions.check_against(payload, robot)
    elif rules.require_announced:
        raise SchemaError(RejectReason.UNKNOWN_ROBOT,
                          f"robot {payload.robot_id!r} has not announced itself on "
                          f"{catalog.ROBOTS.name}")
    return payload


def validate(record: Record, rules: Rules | None = None) -> Accepted | Rejected:
    """Decode and check ``record``; never raises (a decoder bug is a rejection too)."""
    rules = rules or Rules()
    try:
        return Accepted(record, _check(record, rules))
    except SchemaError as exc:
        return Rejected(record, exc.reason, exc.detail)
    except Exception as exc:  # a consumer must outlive a decoder bug; the DLQ keeps the record
        return Rejected(record, RejectReason.DECODER_ERROR, f"{type(exc).__name__}: {exc}")


#: Share of the ``dlq`` topic's record limit the original value may take (base64 inflates
#: by 4/3 and the JSON around it needs room).
_DLQ_VALUE_SHARE = 0.7


def dead_letter(rejected: Rejected, *, consumer: str = "",
                dlq_limit: int = catalog.DLQ.max_message_bytes) -> events.DeadLetterV1:
    """The dead letter for ``rejected``: reason, detail, source position and the
    original key, headers and value (base64; cut short if it would not fit a ``dlq``
    record of ``dlq_limit`` bytes).  A record refused when it was produced has no
    position: partition and offset -1."""
    rec = rejected.record
    value = rec.value or b""
    budget = int(dlq_limit * _DLQ_VALUE_SHARE * 3 / 4)
    kept = value[:budget]
    return events.DeadLetterV1(
        event_id=uuid.uuid4(),
        source_topic=rec.topic,
        source_partition=rec.partition,
        source_offset=rec.offset,
        source_timestamp_ms=rec.timestamp_ms,
        consumer=consumer[:256],
        reason=rejected.reason,
        detail=rejected.detail[:4000],
        key_b64=None if rec.key is None else base64.b64encode(rec.key).decode(),
        headers={k: (v or b"").decode("utf-8", "backslashreplace")[:1000]
                 for k, v in rec.headers},
        value_b64=base64.b64encode(kept).decode(),
        value_size=len(value),
        truncated=len(kept) < len(value),
    )


#: The most bytes of a refused record (its value, key or a detail quoting it) that one
#: log line may carry; the whole record goes to ``dlq``, never to a log.
LOG_EXCERPT_BYTES = 200


def excerpt(text: object, limit: int = LOG_EXCERPT_BYTES) -> str:
    """``text`` (bytes are shown as ``repr``) cut to at most ``limit`` UTF-8 bytes for a
    log line, saying how much was left out."""
    shown = repr(text) if isinstance(text, bytes | bytearray) else str(text)
    raw = shown.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return shown
    note = f"… (+{len(raw) - limit} bytes)"
    cut = raw[:max(0, limit - len(note.encode()))].decode("utf-8", "ignore")
    return cut + note
