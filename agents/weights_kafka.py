"""The Kafka adapter of :mod:`agents.weights`: manifests from ``weights.manifests``, chunks
from ``weights`` by direct assign + seek to the offsets a manifest names.

Delivery: none to keep.  Manifests are followed from the beginning on every start
(the topic is compacted: the newest manifest per experiment), nothing is committed, and
chunks are read by offset without a consumer group.  A manifest or chunk record that
cannot be read goes to ``dlq`` with the reason (again after a restart, which re-reads it).

At an edge (DESIGN §9) the topics are MirrorMaker 2's copies of the cloud's: a manifest's
offsets are the cloud's, the edge's log numbers records its own way (it started later,
the mirror re-copied after a restart), and a manifest may arrive before its chunks.  When
the records at the named offsets are not this version's chunks, :meth:`fetch` finds them
by identity instead — (experiment, version, index, SHA-256 of the manifest) — reading from
shortly before the manifest was made and waiting for late chunks until its deadline.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaException, TopicPartition

from agents import weights
from agents.weights import FetchedChunk, SubscriberSettings, WeightsRejected, WeightsSubscriber
from learners import policies
from schemas import events, spaces
from schemas.events import RejectReason
from topics import catalog
from topics.consumer import DeadLetterSink, record_of
from topics.follow import Follower
from topics.settings import KafkaSettings
from topics.validation import Accepted, Record, Rejected, excerpt, validate

log = logging.getLogger(__name__)

#: The ``weights`` partition chunks are on (the topic has one; see learners.weights_sync_kafka).
CHUNK_PARTITION = 0

#: Records between two wanted offsets beyond which the reader seeks instead of reading on.
_SEEK_GAP = 32

#: How long before its manifest a version's chunks may have been written (the learner
#: writes every chunk, waits for the broker's acks, then the manifest; rate-limited
#: publishing of a large policy takes a while).
_CHUNKS_BEFORE_MANIFEST_MS = 10 * 60 * 1000


class _Elsewhere(Exception):
    """The manifest's offsets do not hold its chunks on this log (a mirrored copy)."""

#: Manifest records remembered for dead-lettering (the newest; older ones were judged).
_KEEP_RECORDS = 1024


class KafkaWeightsSource:
    """A :class:`~agents.weights.WeightsSource` on the real topics.

    Raises ``LookupError``/``TimeoutError`` from the constructor when the topics are
    missing or the broker does not answer (the subscriber retries).
    """

    def __init__(self, settings: KafkaSettings, *, role: str = "agent-weights",
                 timeout_s: float = 30.0, dead_letters: DeadLetterSink | None = None) -> None:
        self._timeout_s = timeout_s
        self._dead_letters = dead_letters
        self._follower = Follower(settings, {catalog.WEIGHTS_MANIFESTS: "beginning"},
                                  role=f"{role}-manifests", timeout_s=timeout_s)
        group = f"{settings.client_id}-{role}-chunks-{uuid.uuid4().hex[:12]}"
        self._chunks = Consumer(settings.consumer_config(group, role=f"{role}-chunks"))
        # The records of manifests handed out and not yet judged, to dead-letter a refused one.
        self._records: dict[str, Record] = {}

    def manifests(self, timeout_s: float) -> list[events.WeightsManifestV1 | str]:
        # Ask for one record so the call returns as soon as one exists (a batch call
        # waits out its whole timeout), then take whatever else is already here.
        items = self._follower.poll(timeout_s, max_records=1)
        if items:
            items += self._follower.poll(0.0, max_records=500)
        out: list[events.WeightsManifestV1 | str] = []
        for item in items:
            if isinstance(item, Accepted) and isinstance(item.event, events.WeightsManifestV1):
                out.append(item.event)
                self._records[str(item.event.event_id)] = item.record
                while len(self._records) > _KEEP_RECORDS:
                    self._records.pop(next(iter(self._records)))
            else:
                rejected = item if not isinstance(item, Accepted) else Rejected(
                    item.record, RejectReason.WRONG_TOPIC, "not a weights manifest")
                self._refuse(rejected)
                out.append(f"offset {item.record.offset}: {rejected.reason.value}: "
                           f"{excerpt(rejected.detail)}")
        return out

    def _refuse(self, rejected: Rejected) -> None:
        if self._dead_letters is not None:
            self._dead_letters.send(rejected)

    def caught_up(self) -> bool:
        return self._follower.caught_up()

    def refuse(self, manifest: events.WeightsManifestV1, reason: RejectReason,
               detail: str) -> None:
        record = self._records.pop(str(manifest.event_id), None)
        if record is not None:
            self._refuse(Rejected(record, reason, detail))

    def fetch(self, manifest: events.WeightsManifestV1, timeout_s: float) -> list[FetchedChunk]:
        deadline = time.monotonic() + timeout_s
        try:
            return self._fetch_at_offsets(manifest, deadline, timeout_s)
        except _Elsewhere as moved:
            log.info("weights %s v%d: %s; finding its chunks by identity (a mirrored topic)",
                     manifest.experiment_id, manifest.version, moved)
            return self._fetch_by_identity(manifest, deadline, timeout_s)
        finally:
            self._chunks.unassign()  # stop prefetching chunks nobody asked for

    def _fetch_at_offsets(self, manifest: events.WeightsManifestV1, deadline: float,
                          timeout_s: float) -> list[FetchedChunk]:
        topic = catalog.WEIGHTS.name
        try:
            low, high = self._chunks.get_watermark_offsets(
                TopicPartition(topic, CHUNK_PARTITION), timeout=self._timeout_s)
        except KafkaException as exc:
            raise WeightsRejected("fetch_timeout", f"no watermarks for {topic}: {exc}") from None
        absent = [o for o in manifest.chunk_offsets if not low <= o < high]
        if absent:
            raise _Elsewhere(f"offsets {absent[:5]} are not on {topic} (it holds "
                             f"{low}..{high - 1})")
        index_at = {o: i for i, o in enumerate(manifest.chunk_offsets)}
        got: dict[int, FetchedChunk] = {}
        position = min(index_at)
        self._chunks.assign([TopicPartition(topic, CHUNK_PARTITION, position)])
        try:
            while len(got) < len(index_at):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WeightsRejected("fetch_timeout", f"{len(got)} of {len(index_at)} "
                                          f"chunks arrived in {timeout_s:g}s")
                # Ask for no more records than exist before the last wanted one, so the
                # call returns as soon as they are here.
                want = max(1, min(len(index_at) - len(got), max(index_at) + 1 - position, 1000))
                for msg in self._chunks.consume(want, min(left, 1.0)):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        continue
                    offset = msg.offset() or 0
                    position = offset + 1
                    if offset not in index_at or offset in got:
                        continue
                    result = validate(record_of(msg))
                    if not isinstance(result, Accepted) or not isinstance(
                            result.event, events.WeightsChunkV1):
                        rejected = result if not isinstance(result, Accepted) else Rejected(
                            result.record, RejectReason.WRONG_TOPIC, "not a weights chunk")
                        self._refuse(rejected)
                        raise WeightsRejected(
                            "unreadable_chunk", f"chunk at offset {offset}: "
                            f"{rejected.reason.value}: {excerpt(rejected.detail)}")
                    chunk = result.event
                    if (chunk.experiment_id, chunk.version, chunk.index) != (
                            manifest.experiment_id, manifest.version, index_at[offset]):
                        raise _Elsewhere(f"offset {offset} holds {chunk.experiment_id} "
                                         f"v{chunk.version} chunk {chunk.index}")
                    got[offset] = FetchedChunk(offset, chunk)
                pending = [o for o in index_at if o not in got]
                if not pending:
                    break
                nxt = min(pending)
                if nxt < position:
                    raise _Elsewhere(f"offset {nxt} was skipped (the log has no record there)")
                if nxt - position > _SEEK_GAP:
                    position = nxt
                    self._chunks.assign([TopicPartition(topic, CHUNK_PARTITION, position)])
        finally:
            self._chunks.unassign()
        return list(got.values())

    def _fetch_by_identity(self, manifest: events.WeightsManifestV1, deadline: float,
                           timeout_s: float) -> list[FetchedChunk]:
        """The manifest's chunks wherever this log holds them, matched by experiment,
        version, index and the manifest's SHA-256 of each; waits for late ones.

        Each is returned at the offset the manifest names for its index (the address the
        manifest gives it; :func:`agents.weights.assemble` checks chunks against it), the
        bytes verified as ever by their SHA-256 and the blob's.
        """
        topic = catalog.WEIGHTS.name
        n = len(manifest.chunk_sha256)
        made_ms = int(manifest.produced_at.timestamp() * 1000) - _CHUNKS_BEFORE_MANIFEST_MS
        try:
            start = self._chunks.offsets_for_times(
                [TopicPartition(topic, CHUNK_PARTITION, max(0, made_ms))],
                timeout=self._timeout_s)[0].offset
            low, high = self._chunks.get_watermark_offsets(
                TopicPartition(topic, CHUNK_PARTITION), timeout=self._timeout_s)
        except KafkaException as exc:
            raise WeightsRejected("fetch_timeout", f"no offsets for {topic}: {exc}") from None
        start = high if start < 0 else max(start, low)
        self._chunks.assign([TopicPartition(topic, CHUNK_PARTITION, start)])
        got: dict[int, FetchedChunk] = {}
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WeightsRejected("missing_chunk", f"{len(got)} of {n} chunks found on "
                                      f"{topic} from offset {start} in {timeout_s:g}s")
            for msg in self._chunks.consume(100, min(left, 0.5)):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                result = validate(record_of(msg))
                if not isinstance(result, Accepted) or not isinstance(
                        result.event, events.WeightsChunkV1):
                    continue  # not ours to judge: the fast path dead-letters what it needs
                chunk = result.event
                if (chunk.experiment_id == manifest.experiment_id
                        and chunk.version == manifest.version and chunk.index < n
                        and chunk.sha256 == manifest.chunk_sha256[chunk.index]):
                    address = manifest.chunk_offsets[chunk.index]
                    got.setdefault(address, FetchedChunk(address, chunk))
        return list(got.values())

    def close(self) -> None:
        self._follower.close()
        self._chunks.close()


def subscriber_for(
    kafka: KafkaSettings,
    robot_spec: spaces.RobotSpec,
    settings: SubscriberSettings | None = None,
    *,
    dead_letters: DeadLetterSink | None = None,
) -> WeightsSubscriber | None:
    """The weights subscriber of an agent hosting robots of ``robot_spec``, or None when
    disabled (``USER_AGENT_WEIGHTS_ENABLED=false``) or when the robot's action is unbounded
    (learned policies are squashed into the action bounds).  Manifest and chunk records
    it cannot read go to ``dead_letters``."""
    settings = settings or SubscriberSettings()
    if not settings.enabled:
        return None
    try:
        spec = policies.PolicySpec.from_robot_spec(robot_spec)
    except ValueError as exc:
        log.warning("learned weights disabled: %s", exc)
        return None
    return weights.WeightsSubscriber(
        lambda: KafkaWeightsSource(kafka, dead_letters=dead_letters), spec, settings)
