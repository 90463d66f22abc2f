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

Chunks are read while the learner writes them: once the subscriber says which
experiments it wants (:meth:`KafkaWeightsSource.prefetch`), a reader of the chunk log's
tail (:class:`_ChunkTail`, its own consumer on its own thread) keeps each new chunk of
those experiments, hashed once as it arrives.  The learner writes a version's chunks,
waits for their acknowledgements, then writes the manifest, so by the time a manifest
is read its chunks are usually here already and :meth:`~KafkaWeightsSource.fetch` reads
nothing; what the tail does not hold (chunks written before this agent started, a
mirrored log) is fetched by offset as before.  Every chunk is hashed exactly once, by
:func:`read_chunk`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from agents import weights
from agents.weights import FetchedChunk, SubscriberSettings, WeightsRejected, WeightsSubscriber
from learners import policies
from schemas import events, spaces
from schemas.events import RejectReason
from topics import catalog, serde
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


#: Chunk bytes a tail keeps at most (the oldest go first; a version it dropped is
#: fetched by offset instead).
_TAIL_MAX_BYTES = 512 * 1024 * 1024

#: How long :meth:`KafkaWeightsSource.fetch` waits for the tail to reach a manifest's
#: chunks before fetching the rest by offset.
_TAIL_WAIT_S = 2.0

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class _Elsewhere(Exception):
    """The manifest's offsets do not hold its chunks on this log (a mirrored copy)."""


def read_chunk(record: Record) -> tuple[events.WeightsChunkV1, str] | Rejected:
    """A ``weights`` record as its chunk and the SHA-256 of its bytes, or why it is refused.

    The bytes are hashed once, here: the chunk is built from its header without the
    model's own hash check (``topics.validation.validate`` would hash it twice, its
    decoder's check and then the model's), and the digest is checked against the
    header's.  A record that is not a plain ``weights.chunk`` v1 with a readable header
    is judged by ``validate`` as every consumer judges it.
    """
    value, h = record.value, serde.header_map(record.headers)
    raw = h.get(serde.HEADER_EVENT)
    if (not value or raw is None or len(value) > catalog.WEIGHTS.max_message_bytes
            or h.get(serde.HEADER_CONTENT_TYPE, serde.ContentType.BINARY.value.encode())
            != serde.ContentType.BINARY.value.encode()
            or h.get(serde.HEADER_SCHEMA, b"weights.chunk") != b"weights.chunk"
            or h.get(serde.HEADER_VERSION, b"1") != b"1"):
        return _judged(record)
    try:
        body = json.loads(raw)
        claimed = body["sha256"]
        header = events.WeightsChunkV1.model_validate(
            {**body, "sha256": _EMPTY_SHA256, "data": b""})
    except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
        return _judged(record)
    digest = hashlib.sha256(value).hexdigest()
    if claimed != digest:
        return Rejected(record, RejectReason.HASH_MISMATCH,
                        "the chunk's bytes do not match its sha256")
    chunk = header.model_copy(update={"sha256": digest, "data": value})
    want = serde.key_for(catalog.WEIGHTS, chunk)
    got = (record.key or b"").decode("utf-8", "replace")
    if got != want:
        return Rejected(record, RejectReason.KEY_MISMATCH, f"key {got!r}, the event says {want!r}")
    return chunk, digest


def _judged(record: Record) -> tuple[events.WeightsChunkV1, str] | Rejected:
    result = validate(record)
    if not isinstance(result, Accepted):
        return result
    if not isinstance(result.event, events.WeightsChunkV1):
        return Rejected(record, RejectReason.WRONG_TOPIC, "not a weights chunk")
    return result.event, result.event.sha256  # validated: the bytes hash to it


class _ChunkTail:
    """Reads the ``weights`` log from its end as records are written, on its own thread
    and consumer, keeping the chunks of wanted experiments (hashed on arrival) until a
    fetch takes them.  A record it cannot read is left out: the fetch then reads it by
    offset and refuses (and dead-letters) it there.

    Bounded: a newer version's chunk drops the experiment's older versions, and at most
    :data:`_TAIL_MAX_BYTES` are held (oldest dropped first).
    """

    def __init__(self, settings: KafkaSettings, role: str, wanted: Callable[[str], bool],
                 timeout_s: float) -> None:
        self._wanted = wanted
        group = f"{settings.client_id}-{role}-tail-{uuid.uuid4().hex[:12]}"
        self._consumer = Consumer(settings.consumer_config(group, role=f"{role}-tail"))
        tp = TopicPartition(catalog.WEIGHTS.name, CHUNK_PARTITION)
        try:
            _low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)
        except KafkaException:
            self._consumer.close()
            raise
        self.start = high
        """the first offset this tail reads (older chunks are fetched by offset)."""
        self._consumer.assign([TopicPartition(catalog.WEIGHTS.name, CHUNK_PARTITION,
                                              high if high >= 0 else OFFSET_END)])
        self._cond = threading.Condition()
        self._position = high  # every offset below it has been looked at
        self._chunks: dict[tuple[str, int, int], FetchedChunk] = {}
        self._bytes = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="weights-tail")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # One record first, so the call returns the moment one exists (a batch
                # call waits out its whole timeout), then whatever else is here.
                msgs = self._consumer.consume(1, 0.2)
                if msgs:
                    msgs += self._consumer.consume(64, 0.0)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        continue
                    self._take(record_of(msg))
                if msgs:
                    with self._cond:
                        last = msgs[-1].offset()
                        if last is not None and last >= self._position:
                            self._position = last + 1
                        self._cond.notify_all()
        except Exception as exc:  # fetches fall back to reading by offset
            log.exception("weights: the chunk tail stopped; chunks are fetched by offset")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _take(self, record: Record) -> None:
        exp = _experiment_of(record)
        if exp is not None and not self._wanted(exp):
            return  # another experiment's weights: not read further, not hashed
        read = read_chunk(record)
        if isinstance(read, Rejected):
            return  # judged (and dead-lettered) by the fetch that asks for it
        chunk, digest = read
        with self._cond:
            for key in [k for k in self._chunks
                        if k[0] == chunk.experiment_id and k[1] < chunk.version]:
                self._drop(key)
            self._chunks[(chunk.experiment_id, chunk.version, chunk.index)] = FetchedChunk(
                record.offset, chunk, digest)
            self._bytes += len(chunk.data)
            while self._bytes > _TAIL_MAX_BYTES and self._chunks:
                self._drop(next(iter(self._chunks)))

    def _drop(self, key: tuple[str, int, int]) -> None:
        self._bytes -= len(self._chunks.pop(key).chunk.data)

    def take(self, manifest: events.WeightsManifestV1, wait_s: float
             ) -> dict[int, FetchedChunk]:
        """The held chunks of ``manifest`` by index, each at the address the manifest
        gives it (on a mirrored log the offsets differ, the identity and SHA-256 do
        not); waits up to ``wait_s`` for the tail to read past the manifest's last
        offset (no wait for chunks written before the tail began)."""
        exp, version, n = manifest.experiment_id, manifest.version, len(manifest.chunk_sha256)
        after = [o for o in manifest.chunk_offsets if o >= self.start]
        last = max(after, default=-1)

        def ready() -> bool:
            have = sum((exp, version, i) in self._chunks for i in range(n))
            return have == n or self._position > last or self._error is not None

        with self._cond:
            self._cond.wait_for(ready, wait_s)
            got: dict[int, FetchedChunk] = {}
            for i in range(n):
                item = self._chunks.get((exp, version, i))
                if item is None or item.sha256 != manifest.chunk_sha256[i]:
                    continue
                self._drop((exp, version, i))
                address = manifest.chunk_offsets[i]
                got[i] = item if item.offset == address else FetchedChunk(
                    address, item.chunk, item.sha256)
            return got

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._consumer.close()


def _experiment_of(record: Record) -> str | None:
    """The experiment a ``weights`` record's header names (None if unreadable: such a
    record is judged in full)."""
    raw = serde.header_map(record.headers).get(serde.HEADER_EVENT)
    try:
        exp = json.loads(raw)["experiment_id"] if raw is not None else None
    except (ValueError, TypeError, KeyError):
        return None
    return exp if isinstance(exp, str) else None

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
        self._settings, self._role = settings, role
        group = f"{settings.client_id}-{role}-chunks-{uuid.uuid4().hex[:12]}"
        self._chunks = Consumer(settings.consumer_config(group, role=f"{role}-chunks"))
        self._tail: _ChunkTail | None = None
        self.chunks_from_tail = 0
        """chunks :meth:`fetch` found already read by the tail."""
        self.chunks_fetched = 0
        """chunks :meth:`fetch` had to read from the log (by offset or by identity)."""
        # The records of manifests handed out and not yet judged, to dead-letter a refused one.
        self._records: dict[str, Record] = {}

    def prefetch(self, wanted: Callable[[str], bool]) -> None:
        if self._tail is None:
            try:
                self._tail = _ChunkTail(self._settings, self._role, wanted, self._timeout_s)
            except KafkaException as exc:  # slower, not wrong: every chunk by offset
                log.warning("weights: no reader of new chunks (%s); fetching by offset", exc)

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
        got: dict[int, FetchedChunk] = {}
        if self._tail is not None:
            got = self._tail.take(manifest, min(timeout_s, _TAIL_WAIT_S))
        self.chunks_from_tail += len(got)
        missing = [i for i in range(len(manifest.chunk_sha256)) if i not in got]
        if not missing:
            return list(got.values())
        try:
            fetched = self._fetch_at_offsets(manifest, missing, deadline, timeout_s)
        except _Elsewhere as moved:
            log.info("weights %s v%d: %s; finding its chunks by identity (a mirrored topic)",
                     manifest.experiment_id, manifest.version, moved)
            fetched = self._fetch_by_identity(manifest, missing, deadline, timeout_s)
        finally:
            self._chunks.unassign()  # stop prefetching chunks nobody asked for
        self.chunks_fetched += len(fetched)
        return list(got.values()) + fetched

    def _fetch_at_offsets(self, manifest: events.WeightsManifestV1, indices: list[int],
                          deadline: float, timeout_s: float) -> list[FetchedChunk]:
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
        index_at = {manifest.chunk_offsets[i]: i for i in indices}
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
                    read = read_chunk(record_of(msg))
                    if isinstance(read, Rejected):
                        self._refuse(read)
                        raise WeightsRejected(
                            "unreadable_chunk", f"chunk at offset {offset}: "
                            f"{read.reason.value}: {excerpt(read.detail)}")
                    chunk, digest = read
                    if (chunk.experiment_id, chunk.version, chunk.index) != (
                            manifest.experiment_id, manifest.version, index_at[offset]):
                        raise _Elsewhere(f"offset {offset} holds {chunk.experiment_id} "
                                         f"v{chunk.version} chunk {chunk.index}")
                    got[offset] = FetchedChunk(offset, chunk, digest)
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

    def _fetch_by_identity(self, manifest: events.WeightsManifestV1, indices: list[int],
                           deadline: float, timeout_s: float) -> list[FetchedChunk]:
        """The manifest's chunks wherever this log holds them, matched by experiment,
        version, index and the manifest's SHA-256 of each; waits for late ones.

        Each is returned at the offset the manifest names for its index (the address the
        manifest gives it; :func:`agents.weights.assemble` checks chunks against it), the
        bytes verified as ever by their SHA-256 and the blob's.
        """
        topic = catalog.WEIGHTS.name
        wanted = set(indices)
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
        while len(got) < len(wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                raise WeightsRejected("missing_chunk", f"{len(got)} of {len(wanted)} chunks "
                                      f"found on {topic} from offset {start} in {timeout_s:g}s")
            for msg in self._chunks.consume(100, min(left, 0.5)):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                record = record_of(msg)
                if _experiment_of(record) not in (manifest.experiment_id, None):
                    continue  # another experiment's chunk: not hashed
                read = read_chunk(record)
                if isinstance(read, Rejected):
                    continue  # not ours to judge: the fast path dead-letters what it needs
                chunk, digest = read
                if (chunk.experiment_id == manifest.experiment_id
                        and chunk.version == manifest.version and chunk.index in wanted
                        and digest == manifest.chunk_sha256[chunk.index]):
                    address = manifest.chunk_offsets[chunk.index]
                    got.setdefault(address, FetchedChunk(address, chunk, digest))
        return list(got.values())

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
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
