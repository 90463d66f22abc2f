"""Streaming weight sync, learner side: snapshot, chunk and publish under a bandwidth cap.

DESIGN §5 / issue 6 item 3.  The trainer only ever pays for a snapshot (a CPU copy of
the acting policy's tensors); serialising, hashing and sending happen on a background
thread that is throttled to ``max_bytes_per_s``::

    sink = weights_sync_kafka.KafkaWeightsSink(kafka_settings)      # or a fake
    publisher = weights_sync.WeightsPublisher(sink, "exp-1", weights_sync.WeightSyncSettings())
    publisher.start()                          # versions resume after the latest manifest
    schedule = weights_sync.PublishSchedule(publisher.settings)
    for step in itertools.count(1):
        stats = algorithm.update(sampler.sample(batch_size))
        if schedule.due(step):
            publisher.publish(weights_sync.Snapshot.of_algorithm(
                algorithm, kind="mlp_gaussian", options=options, spec=spec, learner_step=step))
    publisher.close()

One version on the wire: the safetensors blob (policy kind, options and spec in its
header, so a robot can rebuild the policy from the bytes alone) cut into chunks of
``chunk_bytes``, each a :class:`~schemas.events.WeightsChunkV1` with its SHA-256, then
one :class:`~schemas.events.WeightsManifestV1` naming the version, tensors, whole-blob
SHA-256, per-chunk SHA-256 and the chunks' offsets.  The manifest is written only after
every chunk is acknowledged, so a manifest always points at durable chunks.

While a version is being sent, :meth:`WeightsPublisher.publish` only replaces the
queued snapshot (latest wins): a slow link delays and thins versions, it never grows a
queue or blocks the trainer.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from learners import lineage
from learners.core import JSON, Algorithm
from learners.policies import PolicySpec, sha256_hex, to_safetensors, weights_metadata
from schemas import events
from topics import catalog, signing

log = logging.getLogger(__name__)

#: Header metadata key of the policy spec a blob was trained for (JSON).
SPEC_KEY = "policy_spec"

#: Room left in a ``weights`` record for the headers around a chunk's bytes.
_RECORD_HEADROOM = 64 * 1024

#: The largest chunk a ``weights`` record can carry.
MAX_CHUNK_BYTES = catalog.WEIGHTS.max_message_bytes - _RECORD_HEADROOM

#: safetensors dtype codes -> the dtype names manifests use.
_DTYPES = {"F32": "float32", "F64": "float64", "I32": "int32", "I64": "int64", "U8": "uint8",
           "F16": "float16", "BF16": "bfloat16"}


class WeightSyncSettings(BaseSettings):
    """How a learner publishes weights (environment prefix ``USER_WEIGHTS_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_WEIGHTS_", frozen=True, extra="ignore")

    chunk_bytes: int = Field(
        1 << 20, gt=0, le=MAX_CHUNK_BYTES,
        description="bytes per weights record (the topic takes at most 8 MiB per record)",
    )
    max_bytes_per_s: float = Field(
        25e6, ge=0, description="bandwidth cap on chunk bytes sent; 0 means no cap"
    )
    burst_bytes: int | None = Field(
        None, gt=0, description="bytes that may go out at once after idling; None: one chunk"
    )
    every_updates: int = Field(1000, ge=1, description="publish every N learner updates…")
    every_s: float = Field(30.0, gt=0, description="…or every T seconds, whichever first")
    ack_timeout_s: float = Field(120.0, gt=0, description="give up on a version after this")
    signing_key: Path | None = Field(
        None, description="Ed25519 private key (0600 PEM) signing every manifest "
        "(`userctl security init` makes one); None: manifests go unsigned")

    @model_validator(mode="after")
    def _burst_fits(self) -> WeightSyncSettings:
        if self.burst_bytes is not None and self.burst_bytes < self.chunk_bytes:
            raise ValueError(f"burst_bytes {self.burst_bytes} is below one chunk "
                             f"({self.chunk_bytes}); raise it or leave it unset")
        return self


# -- snapshots ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The acting policy's weights at one learner step, owned by the publisher.

    ``tensors`` are CPU numpy copies: the trainer may keep updating its networks the
    moment a snapshot exists.
    """

    tensors: Mapping[str, np.ndarray]
    kind: str
    """policy kind (``learners.policies.kinds()``)."""
    options: Mapping[str, JSON] = field(default_factory=dict)
    """the kind's options (``hidden_sizes`` …), so a robot builds the same network."""
    spec: PolicySpec | None = None
    """the robot description the policy was trained for; robots refuse a mismatch."""
    learner_step: int = 0
    trained_on: Mapping[str, int] = field(default_factory=dict)
    """'topic:partition' -> last offset the learner had used."""
    lineage: Mapping[str, JSON] = field(default_factory=dict)
    """what the policy trained on since the stream's previous snapshot
    (:mod:`learners.lineage`); goes into the manifest, not the blob."""

    @classmethod
    def take(
        cls,
        weights: Mapping[str, np.ndarray | torch.Tensor],
        *,
        kind: str,
        options: Mapping[str, JSON] | None = None,
        spec: PolicySpec | None = None,
        learner_step: int = 0,
        trained_on: Mapping[str, int] | None = None,
    ) -> Snapshot:
        """Copy ``weights`` to CPU numpy (under ``no_grad``), so training can go on.

        This is the only part of publishing that runs on the trainer's thread: one
        memory copy of the policy (plus a device-to-host copy for GPU tensors).
        """
        with torch.no_grad():
            tensors = {
                name: (value.detach().to("cpu", copy=True).numpy()
                       if isinstance(value, torch.Tensor) else np.array(value, copy=True))
                for name, value in weights.items()
            }
        return cls(tensors, kind, dict(options or {}), spec, learner_step, dict(trained_on or {}))

    @classmethod
    def of_algorithm(
        cls,
        algorithm: Algorithm,
        *,
        kind: str,
        options: Mapping[str, JSON] | None = None,
        spec: PolicySpec | None = None,
        learner_step: int = 0,
        trained_on: Mapping[str, int] | None = None,
    ) -> Snapshot:
        """Snapshot ``algorithm.policy_weights()`` (already a copy by its contract)."""
        return cls(algorithm.policy_weights(), kind, dict(options or {}), spec, learner_step,
                   dict(trained_on or {}))

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())


def spec_json(spec: PolicySpec) -> str:
    """The header form of a policy spec (robots compare it with their own)."""
    return json.dumps({"observation_dim": spec.observation_dim, "action_dim": spec.action_dim,
                       "action_low": list(spec.action_low),
                       "action_high": list(spec.action_high)}, sort_keys=True)


def serialise(snapshot: Snapshot) -> bytes:
    """The self-describing safetensors blob of ``snapshot`` (kind, options, spec in the header)."""
    meta = weights_metadata(snapshot.kind, snapshot.options)
    if snapshot.spec is not None:
        meta[SPEC_KEY] = spec_json(snapshot.spec)
    return to_safetensors(snapshot.tensors, meta)


def tensor_infos(blob: bytes) -> tuple[events.TensorInfo, ...]:
    """Where each tensor of a safetensors blob lies, as offsets into the whole blob.

    Raises ``ValueError`` for a malformed header or a dtype manifests cannot name.
    """
    if len(blob) < 8:
        raise ValueError("safetensors blob shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    start = 8 + n
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r} has dtype {entry['dtype']}, which weight "
                             f"manifests cannot carry (use one of {', '.join(_DTYPES.values())})")
        begin, end = entry["data_offsets"]
        infos.append(events.TensorInfo(name=name, dtype=dtype, shape=tuple(entry["shape"]),
                                       begin=start + begin, end=start + end))
    return tuple(sorted(infos, key=lambda t: t.begin))


_EMPTY_SHA256 = sha256_hex(b"")

#: Threads hashing a version's chunks and blob side by side.
_HASH_THREADS = 4


def split(blob: bytes, chunk_bytes: int) -> list[bytes]:
    """``blob`` cut into consecutive pieces of ``chunk_bytes`` (the last may be shorter;
    a blob of one piece is returned as it is, not copied)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if len(blob) <= chunk_bytes:
        return [blob]
    view = memoryview(blob)
    return [bytes(view[i : i + chunk_bytes]) for i in range(0, len(blob), chunk_bytes)]


def chunk_events(experiment_id: str, version: int, blob: bytes, chunk_bytes: int
                 ) -> list[events.WeightsChunkV1]:
    """The chunk events of one version, in index order."""
    return list(_chunks_of(experiment_id, version, split(blob, chunk_bytes)))


def _chunks_of(experiment_id: str, version: int, pieces: Sequence[bytes],
               digests: Iterable[str] | None = None) -> Iterator[events.WeightsChunkV1]:
    """The chunk events of ``pieces``, each made as it is asked for (so a sender can
    send one while the next is hashed); ``digests``: their SHA-256s, in order, if
    already (being) computed.

    Each piece is hashed once: the event is built with the digest just computed instead
    of through the model's validator, which would hash it again (the fields are the
    validator's own checks: index below n_chunks, the digest of ``data``)."""
    # Validated once without data, so a bad id or version is still refused here.
    head = events.WeightsChunkV1(experiment_id=experiment_id, version=version, index=0,
                                 n_chunks=len(pieces), sha256=_EMPTY_SHA256, data=b"")
    hashes = iter(digests) if digests is not None else map(sha256_hex, pieces)
    for i, (piece, digest) in enumerate(zip(pieces, hashes, strict=True)):
        yield head.model_copy(update={"index": i, "sha256": digest, "data": piece,
                                      "event_id": uuid.uuid4()})



def build_manifest(
    snapshot: Snapshot,
    *,
    experiment_id: str,
    version: int,
    blob: bytes,
    chunks: Sequence[events.WeightsChunkV1],
    offsets: Sequence[int],
    chunk_bytes: int,
    sha256: str | None = None,
) -> events.WeightsManifestV1:
    """The manifest of a version whose ``chunks`` were acknowledged at ``offsets``
    (``sha256``: the blob's digest when already computed; a one-chunk blob's is its
    chunk's)."""
    if len(offsets) != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but {len(offsets)} offsets")
    if sha256 is None:
        sha256 = chunks[0].sha256 if len(chunks) == 1 else sha256_hex(blob)
    return events.WeightsManifestV1(
        experiment_id=experiment_id,
        version=version,
        learner_step=snapshot.learner_step,
        policy=snapshot.kind,
        total_bytes=len(blob),
        sha256=sha256,
        chunk_bytes=chunk_bytes,
        chunk_sha256=tuple(c.sha256 for c in chunks),
        chunk_offsets=tuple(offsets),
        tensors=tensor_infos(blob),
        trained_on=dict(snapshot.trained_on),
        lineage=dict(snapshot.lineage),
    )


# -- pacing ---------------------------------------------------------------------------------


class TokenBucket:
    """A bytes-per-second cap: :meth:`take` waits until ``n`` bytes may go out.

    Tokens accrue at ``rate`` up to ``burst``; taking more than there are leaves a debt
    that the caller sleeps off, so over any long stretch at most ``rate * t + burst``
    bytes pass.  ``rate`` 0 means no cap.  ``sleep`` returns early (True) when the
    publisher is closing.
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], bool] | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep or _plain_sleep
        self._tokens = burst
        self._at = clock()
        self.waited_s = 0.0

    def take(self, n: int) -> bool:
        """Spend ``n`` bytes, waiting as the cap requires; False if woken to stop."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            wait = -self._tokens / self.rate
            self.waited_s += wait
            if self._sleep(wait):
                return False
        return True


def _plain_sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-place queue where a newer item replaces the waiting one (latest wins).

    The consumer :meth:`take` s an item, works on it, then calls :meth:`done`;
    :meth:`wait_idle` returns once nothing waits and nothing is being worked on.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._working = False
        self._closed = False

    def put(self, item: T, merge: Callable[[T, T], T] | None = None) -> T | None:
        """Offer ``item``; returns the waiting item it replaced (dropped), if any.
        ``merge(dropped, item)``, when given, is what waits instead of ``item``."""
        with self._cond:
            dropped = self._item
            if dropped is not None and merge is not None:
                item = merge(dropped, item)
            self._item = item
            self._cond.notify_all()
            return dropped

    def take(self, timeout_s: float | None = None) -> T | None:
        """The waiting item (now being worked on); None after ``timeout_s`` or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s)
            item, self._item = self._item, None
            self._working = item is not None
            return item

    def done(self) -> None:
        """The taken item is finished with."""
        with self._cond:
            self._working = False
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no item waits or is being worked on; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._item is None and not self._working,
                                       timeout_s)

    def close(self) -> None:
        """Wake a waiting :meth:`take` for good (it returns what is left, then None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PublishSchedule:
    """Says when to snapshot: every ``every_updates`` updates or ``every_s`` seconds."""

    def __init__(self, settings: WeightSyncSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._every_updates = settings.every_updates
        self._every_s = settings.every_s
        self._clock = clock
        self._last_step = 0
        self._last_at = clock()

    def due(self, update_step: int) -> bool:
        """True (and the timers restart) when a snapshot should be published now."""
        now = self._clock()
        if (update_step - self._last_step >= self._every_updates
                or now - self._last_at >= self._every_s):
            self._last_step, self._last_at = update_step, now
            return True
        return False


# -- the publisher --------------------------------------------------------------------------


class WeightsSink(Protocol):
    """Where a publisher writes (the Kafka adapter, or an in-memory fake)."""

    def latest_version(self, experiment_id: str) -> int | None:
        """The newest version with a manifest for ``experiment_id``; None if none."""

    def send_chunk(self, chunk: events.WeightsChunkV1) -> None:
        """Queue one chunk (returns at once)."""

    def acknowledged_offsets(self, timeout_s: float) -> list[int]:
        """Wait until every chunk queued since the last call is durable; their offsets,
        in the order sent.  Raises ``RuntimeError``/``TimeoutError`` if not all are."""

    def send_manifest(self, manifest: events.WeightsManifestV1, timeout_s: float) -> None:
        """Write ``manifest``; returns once it is durable, raises otherwise."""

    def close(self) -> None: ...


@dataclass
class PublisherStats:
    """Counters of one publisher (read them from any thread; they only grow)."""

    published: int = 0
    """versions whose manifest is durable."""
    dropped: int = 0
    """snapshots replaced by a newer one before they were sent (latest wins)."""
    failed: int = 0
    """versions abandoned (chunks or manifest not acknowledged, or bad snapshot)."""
    bytes_sent: int = 0
    throttled_s: float = 0.0
    """time spent waiting for the bandwidth cap."""
    busy_s: float = 0.0
    """background-thread time serialising, hashing and sending (not the trainer's)."""
    last_error: str = ""


class WeightsPublisher:
    """Publishes snapshots of one experiment's policy from a background thread.

    :meth:`publish` never blocks on the network; versions are numbered when they are
    sent, one above the previous attempt (so they increase strictly, and a restart
    continues after the newest manifest on the topic).
    """

    def __init__(
        self,
        sink: WeightsSink,
        experiment_id: str,
        settings: WeightSyncSettings | None = None,
        *,
        on_published: Callable[[events.WeightsManifestV1], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.experiment_id = experiment_id
        self.settings = settings = settings or WeightSyncSettings()
        self.stats = PublisherStats()
        self._on_published = on_published
        self._slot: LatestSlot[Snapshot] = LatestSlot()
        self._stopping = threading.Event()
        self._state = threading.Condition()
        self._published_version = 0
        self._next_version = 1
        burst = settings.burst_bytes or settings.chunk_bytes
        self._bucket = TokenBucket(settings.max_bytes_per_s, burst, clock=clock,
                                   sleep=self._stopping.wait)
        self._thread: threading.Thread | None = None
        self._unsent: Snapshot | None = None
        """the last snapshot that failed to send: its lineage goes with the next one."""
        self._signer = (signing.SigningKey.load(settings.signing_key)
                        if settings.signing_key is not None else None)
        self._hasher = ThreadPoolExecutor(_HASH_THREADS,
                                          thread_name_prefix=f"weights-hash-{experiment_id}")

    @property
    def published_version(self) -> int:
        """The newest version whose manifest is durable (0: none yet this run)."""
        with self._state:
            return self._published_version

    def start(self, first_version: int | None = None) -> None:
        """Start the sending thread; versions continue after the sink's latest unless
        ``first_version`` is given.  Blocks while the sink is read (once, at start)."""
        if first_version is None:
            latest = self.sink.latest_version(self.experiment_id)
            first_version = 1 if latest is None else latest + 1
            log.info("weights of %s: continuing at version %d", self.experiment_id,
                     first_version)
        self._next_version = first_version
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"weights-publisher-{self.experiment_id}")
        self._thread.start()

    def publish(self, snapshot: Snapshot) -> None:
        """Queue ``snapshot`` for sending and return at once (it replaces any queued one)."""
        if self._thread is None:
            raise RuntimeError("call start() before publish()")
        if self._slot.put(snapshot, _carry_lineage) is not None:
            with self._state:
                self.stats.dropped += 1

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or being sent; False on timeout."""
        return self._slot.wait_idle(timeout_s)

    def wait_published(self, version: int, timeout_s: float) -> bool:
        """Wait until ``version`` (or a newer one) is durable; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self._published_version >= version, timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is queued (up to ``timeout_s``), then stop and close the sink."""
        if self._thread is not None:
            self.flush(timeout_s)
            self._stopping.set()
            self._slot.close()
            self._thread.join(timeout_s)
        self._hasher.shutdown(wait=False)
        self.sink.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            snapshot = self._slot.take(timeout_s=0.5)
            if snapshot is None:
                continue
            try:
                self._send(snapshot)
            finally:
                self._slot.done()

    def _send(self, snapshot: Snapshot) -> None:
        if self._unsent is not None:
            snapshot = _carry_lineage(self._unsent, snapshot)
        self._unsent = snapshot  # until its manifest is durable
        version = self._next_version
        self._next_version += 1
        started = time.monotonic()
        try:
            manifest = self._send_version(snapshot, version)
        except Exception as exc:  # the trainer must outlive a failed publish
            with self._state:
                self.stats.failed += 1
                self.stats.last_error = f"v{version}: {exc}"
            log.warning("weights %s v%d not published: %s", self.experiment_id, version, exc)
            return
        finally:
            with self._state:
                self.stats.busy_s += time.monotonic() - started
        if manifest is None:
            return
        self._unsent = None
        with self._state:
            self.stats.published += 1
            self._published_version = version
            self._state.notify_all()
        log.info("weights %s v%d published: %d bytes in %d chunks", self.experiment_id,
                 version, manifest.total_bytes, len(manifest.chunk_offsets))
        if self._on_published is not None:
            self._on_published(manifest)

    def _send_version(self, snapshot: Snapshot, version: int) -> events.WeightsManifestV1 | None:
        cfg = self.settings
        blob = serialise(snapshot)
        pieces = split(blob, cfg.chunk_bytes)
        # Hashing runs on a small pool (hashlib lets go of the GIL): the chunks' digests
        # first, each chunk sent the moment its digest is ready (robots read chunk 0
        # while chunk 1 is hashed), the whole-blob digest beside the last of them and the
        # broker's acknowledgements.  A one-chunk blob's digest is its chunk's.
        digests = [self._hasher.submit(sha256_hex, piece) for piece in pieces]
        whole = self._hasher.submit(sha256_hex, blob) if len(pieces) > 1 else None
        chunks: list[events.WeightsChunkV1] = []
        waited = self._bucket.waited_s
        for chunk in _chunks_of(self.experiment_id, version, pieces,
                                (d.result() for d in digests)):
            if not self._bucket.take(len(chunk.data)):
                return None  # closing: a version without its manifest is never applied
            self.sink.send_chunk(chunk)
            chunks.append(chunk)
        digest = chunks[0].sha256 if whole is None else whole.result()
        offsets = self.sink.acknowledged_offsets(cfg.ack_timeout_s)
        manifest = build_manifest(snapshot, experiment_id=self.experiment_id, version=version,
                                  blob=blob, chunks=chunks, offsets=offsets,
                                  chunk_bytes=cfg.chunk_bytes, sha256=digest)
        if self._signer is not None:  # robots that require signatures refuse it otherwise
            manifest = signing.sign(manifest, self._signer)
        self.sink.send_manifest(manifest, cfg.ack_timeout_s)
        with self._state:
            self.stats.bytes_sent += len(blob)
            self.stats.throttled_s += self._bucket.waited_s - waited
        return manifest


def _carry_lineage(earlier: Snapshot, later: Snapshot) -> Snapshot:
    """``later`` carrying ``earlier``'s lineage too (``earlier`` is dropped or unsent), so
    the stream's manifests still hold the learner's whole ingest log."""
    if not earlier.lineage:
        return later
    return replace(later, lineage=lineage.merge(earlier.lineage, later.lineage))


# -- an in-memory sink, for tests and for wiring without a broker ---------------------------


class InMemoryWeightsSink:
    """A :class:`WeightsSink` over two lists; offsets are positions in ``chunks``.

    Validates what it is given the way the topic would (the chunk fits a record; the
    manifest is a valid event), so a test catches what Kafka would refuse.
    """

    def __init__(self) -> None:
        self.chunks: list[events.WeightsChunkV1] = []
        self.manifests: list[events.WeightsManifestV1] = []
        self._pending: list[int] = []
        self._lock = threading.Lock()

    def latest_version(self, experiment_id: str) -> int | None:
        with self._lock:
            versions = [m.version for m in self.manifests if m.experiment_id == experiment_id]
        return max(versions, default=None)

    def send_chunk(self, chunk: events.WeightsChunkV1) -> None:
        if len(chunk.data) > catalog.WEIGHTS.max_message_bytes:
            raise ValueError(f"a chunk of {len(chunk.data)} bytes does not fit a record")
        with self._lock:
            self._pending.append(len(self.chunks))
            self.chunks.append(chunk)

    def acknowledged_offsets(self, timeout_s: float) -> list[int]:
        with self._lock:
            offsets, self._pending = self._pending, []
        return offsets

    def send_manifest(self, manifest: events.WeightsManifestV1, timeout_s: float) -> None:
        events.WeightsManifestV1.model_validate(manifest.model_dump())
        with self._lock:
            self.manifests.append(manifest)

    def close(self) -> None:
        pass

