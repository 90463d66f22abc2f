"""Streaming weight sync, robot side: fetch, verify and swap in learned policies.

DESIGN §5 / issue 6 item 3.  A :class:`WeightsSubscriber` runs one background thread
per agent process.  It follows the manifests of every experiment (from the beginning,
so a robot that joins late goes straight to the newest version), and for each
experiment a robot here is leased to it fetches the newest version's chunks, checks
them (:class:`Assembly`: every chunk present, at its offset, of its size and SHA-256),
builds the policy through ``learners.policies`` and swaps a complete :class:`Applied`
``(policy, version)`` in under a lock.

Each byte is hashed once: the source hashes a chunk when it reads it (the Kafka source
reads new chunks as the learner writes them, before their manifest exists), and the
assembly compares that digest with the manifest's.  The whole-blob SHA-256 is not
hashed again by default: the manifest pins every chunk's digest, index, offset and size,
so the joined bytes are exactly the ones the learner hashed (a manifest whose ``sha256``
contradicts its own chunk digests is a learner bug, not a transport fault; signing covers
both).  ``USER_AGENT_WEIGHTS_VERIFY_BLOB_SHA256=true`` hashes the joined blob as well
(a second pass); a one-chunk version's blob digest is its chunk's and is always compared.

The control loop never touches the network: each control step asks
:func:`learned_or` for the current pair, a dictionary look-up.  A corrupt, partial or
mismatching version is never applied; the robot keeps what it ran before, the reason
is logged and counted in :attr:`WeightsSubscriber.rejected`.

Transport is a :class:`WeightsSource` (:mod:`agents.weights_kafka` on the real topics,
or a fake), so the logic here runs in unit tests without a broker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.policies import ChunkPolicy, FramesPolicy, PolicyFn
from agents.worker import Lease
from learners import policies
from schemas import events
from schemas.events import RejectReason
from topics import signing

log = logging.getLogger(__name__)

#: Header metadata key of the spec a blob was trained for; the learner writes it
#: (``learners.weights_sync.SPEC_KEY``, which agents may not import).
SPEC_KEY = "policy_spec"

#: Why a version was refused (the keys of :attr:`WeightsSubscriber.rejected`).
REASONS = (
    "bad_manifest",    # the manifest contradicts itself
    "missing_chunk",   # a chunk it names is not on the topic (expired, never written)
    "unreadable_chunk",  # a chunk record fails decoding (its bytes do not match its hash …)
    "chunk_mismatch",  # a chunk belongs to another version/index/offset than named
    "chunk_size",      # a chunk is not as long as the manifest says
    "chunk_hash",      # a chunk's SHA-256 differs from the manifest's
    "blob_size",       # the assembled blob is not total_bytes long
    "blob_hash",       # the assembled blob's SHA-256 differs from the manifest's
    "bad_blob",        # not a self-describing safetensors blob of the manifest's kind
    "spec_mismatch",   # trained for another robot description
    "non_finite",      # a tensor holds NaN or infinity (a diverged learner)
    "build_failed",    # learners.policies could not build or load it
    "fetch_timeout",   # the chunks did not all arrive in time
    "fetch_error",     # the transport failed while fetching (logged with its traceback)
    # signatures (issue 16; topics.signing): checked before a single chunk is fetched
    "unsigned",        # no signature, and this agent requires one
    "untrusted_key",   # signed by a key not in the trusted-keys file
    "expired_key",     # signed by a key outside its trusted window (rotated out)
    "bad_signature",   # the signature does not match the manifest
    "replayed",        # a version at or below the one already applied
)


class Policy(Protocol):
    """What an agent needs of a ``learners.policies`` policy (``learners.core.Policy``)."""

    cameras: tuple[str, ...]

    def act(self, observation: np.ndarray, deterministic: bool = False,
            images: Mapping[str, np.ndarray] | None = None) -> np.ndarray: ...


class WeightsRejected(Exception):
    """A version that must not be applied; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FetchedChunk:
    """A chunk as read back, with the ``weights`` offset it was read at."""

    offset: int
    chunk: events.WeightsChunkV1
    sha256: str | None = None
    """SHA-256 of ``chunk.data`` as the fetcher computed it from the bytes it read (the
    one pass over them); None: :class:`Assembly` computes it."""


# -- pure verification ----------------------------------------------------------------------


def check_manifest(manifest: events.WeightsManifestV1) -> None:
    """Raise :class:`WeightsRejected` (``bad_manifest``) if the manifest contradicts itself."""
    n = len(manifest.chunk_sha256)
    want = math.ceil(manifest.total_bytes / manifest.chunk_bytes)
    if n != want or n == 0:
        raise WeightsRejected("bad_manifest", f"{n} chunks for {manifest.total_bytes} bytes "
                              f"in chunks of {manifest.chunk_bytes} (expected {want})")
    if len(set(manifest.chunk_offsets)) != n:
        raise WeightsRejected("bad_manifest", "two chunks share an offset")


class Assembly:
    """One version's blob, filled in place as its chunks arrive, in any order.

    :meth:`add` checks a chunk the moment it is handed over — it belongs to this
    experiment and version, was read at the offset the manifest names for its index, has
    the size and SHA-256 the manifest names (the fetcher's digest, or hashed here when it
    has none) — and copies it to its place; :meth:`blob` checks none is missing.  Raises
    :class:`WeightsRejected` naming the first failure.
    """

    def __init__(self, manifest: events.WeightsManifestV1, *, verify_blob: bool = True) -> None:
        check_manifest(manifest)
        self.manifest = manifest
        self._n = len(manifest.chunk_sha256)
        self._verify_blob = verify_blob
        self._index_at = {o: i for i, o in enumerate(manifest.chunk_offsets)}
        self._last = manifest.total_bytes - manifest.chunk_bytes * (self._n - 1)
        self._buf = bytearray(manifest.total_bytes) if self._n > 1 else None
        self._single: bytes | None = None  # a one-chunk blob is the chunk itself (no copy)
        self._have: set[int] = set()

    def add(self, item: FetchedChunk) -> None:
        """Check ``item`` and put its bytes in place (a repeat of a held chunk is ignored)."""
        m, c, n = self.manifest, item.chunk, self._n
        if (c.experiment_id, c.version, c.n_chunks) != (m.experiment_id, m.version, n):
            raise WeightsRejected("chunk_mismatch", f"chunk at offset {item.offset} is "
                                  f"{c.experiment_id} v{c.version} {c.index + 1}/{c.n_chunks}, "
                                  f"expected {m.experiment_id} v{m.version} of {n}")
        if c.index >= n or m.chunk_offsets[c.index] != item.offset:
            raise WeightsRejected("chunk_mismatch", f"chunk {c.index} read at offset "
                                  f"{item.offset}, the manifest does not put it there")
        i = c.index
        if i in self._have:
            return
        size = m.chunk_bytes if i < n - 1 else self._last
        data = c.data
        if len(data) != size:
            raise WeightsRejected("chunk_size", f"chunk {i} has {len(data)} bytes, expected {size}")
        digest = item.sha256 if item.sha256 is not None else hashlib.sha256(data).hexdigest()
        if digest != m.chunk_sha256[i]:
            raise WeightsRejected("chunk_hash", f"chunk {i} does not match its SHA-256")
        if self._buf is None:
            self._single = data
        else:
            start = i * m.chunk_bytes
            self._buf[start : start + size] = data
        self._have.add(i)

    def missing(self) -> list[int]:
        """Indices of the chunks not yet added."""
        return [i for i in range(self._n) if i not in self._have]

    def blob(self) -> bytes | bytearray:
        """The verified blob (raises ``missing_chunk`` while chunks are missing; with
        ``verify_blob``, ``blob_hash`` if the joined bytes differ from the manifest's
        whole-blob SHA-256).  The caller owns it: nothing here writes to it again."""
        missing = self.missing()
        if missing:
            raise WeightsRejected("missing_chunk",
                                  f"chunks {missing[:5]} of {self._n} did not arrive")
        m = self.manifest
        blob: bytes | bytearray
        if self._buf is None:
            assert self._single is not None
            blob = self._single
            # One chunk: the blob's digest is the chunk's, already checked (no second pass).
            if m.sha256 != m.chunk_sha256[0]:
                raise WeightsRejected("blob_hash",
                                      "the joined chunks do not match the manifest's SHA-256")
        else:
            blob = self._buf
            if self._verify_blob and hashlib.sha256(blob).hexdigest() != m.sha256:
                raise WeightsRejected("blob_hash",
                                      "the joined chunks do not match the manifest's SHA-256")
        if len(blob) != m.total_bytes:
            raise WeightsRejected("blob_size", f"{len(blob)} bytes, expected {m.total_bytes}")
        return blob


def assemble(manifest: events.WeightsManifestV1, fetched: Iterable[FetchedChunk], *,
             verify_blob: bool = True) -> bytes | bytearray:
    """The verified blob of ``manifest`` from its chunks, given in any order
    (:class:`Assembly`; ``verify_blob`` also hashes the joined blob, a second pass)."""
    assembly = Assembly(manifest, verify_blob=verify_blob)
    for item in fetched:
        assembly.add(item)
    return assembly.blob()


def _spec_of(text: str) -> policies.PolicySpec:
    raw = json.loads(text)
    return policies.PolicySpec(int(raw["observation_dim"]), int(raw["action_dim"]),
                               tuple(float(v) for v in raw["action_low"]),
                               tuple(float(v) for v in raw["action_high"]))


#: safetensors dtype codes numpy reads as they are (little-endian); others (BF16) go
#: through the library.
_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                 "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def tensors_of(blob: bytes | bytearray) -> dict[str, np.ndarray]:
    """The tensors of a safetensors blob as read-only views into ``blob``.

    ``safetensors.numpy.load`` copies every tensor out of the bytes, a pass over the
    whole policy per version; views cost nothing (the policy keeps ``blob`` alive).  The
    header is checked as the library checks it: known dtypes, shapes that fit their
    byte ranges, ranges that tile the data section.  Blobs with a dtype numpy lacks go
    through the library.  Raises ``ValueError`` for a malformed blob.
    """
    header, base = policies.safetensors_header(blob)
    spans: list[tuple[int, int]] = []
    out: dict[str, np.ndarray] = {}
    try:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _NUMPY_DTYPES.get(entry["dtype"])
            if dtype is None:
                return policies.from_safetensors(bytes(blob))
            begin, end = (int(x) for x in entry["data_offsets"])
            shape = tuple(int(d) for d in entry["shape"])
            dt = np.dtype(dtype)
            count = math.prod(shape)
            if begin < 0 or end < begin or base + end > len(blob) or \
                    count * dt.itemsize != end - begin:
                raise ValueError(f"tensor {name!r}: shape {shape} {entry['dtype']} does not "
                                 f"fit bytes {begin}..{end} of {len(blob) - base}")
            arr = np.frombuffer(blob, dtype=dt, count=count, offset=base + begin).reshape(shape)
            arr.flags.writeable = False
            out[name] = arr
            spans.append((begin, end))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a valid safetensors header: {exc}") from None
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ValueError(f"tensor bytes overlap or leave a gap at {position}")
        position = end
    if base + position != len(blob):
        raise ValueError(f"{len(blob) - base - position} bytes after the last tensor")
    return out


def _non_finite(tensors: Mapping[str, np.ndarray]) -> str | None:
    """:func:`learners.policies.non_finite`, after a fast pass: a float tensor whose sum
    is finite holds no NaN or infinity (either would make the sum non-finite), so only a
    tensor whose sum is not finite (or overflows) is counted element by element."""
    suspect = {name: a for name, a in tensors.items()
               if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a.sum())}
    return policies.non_finite(suspect) if suspect else None


def build_policy(manifest: events.WeightsManifestV1, blob: bytes | bytearray,
                 spec: policies.PolicySpec, numpy_inference: bool = True) -> Policy:
    """The policy a verified blob describes, for a robot of ``spec``: with
    ``numpy_inference``, the kind's torch-free twin where it has one
    (:func:`learners.policies.load_for_inference`; torch is imported only for kinds
    without one), else the learner's torch network.

    Raises :class:`WeightsRejected`: ``bad_blob`` (header or tensors unreadable, or
    another kind than the manifest names), ``spec_mismatch`` (trained for another robot),
    ``non_finite`` (a tensor holds NaN or infinity), ``build_failed`` (the policy kind
    refuses the weights).
    """
    data = cast(bytes, blob)  # a bytearray is sliced and parsed the same way
    try:
        meta = policies.safetensors_metadata(data)
    except ValueError as exc:
        raise WeightsRejected("bad_blob", str(exc)) from None
    kind = meta.get("policy_kind")
    if kind != manifest.policy:
        raise WeightsRejected("bad_blob", f"blob is of kind {kind!r}, the manifest says "
                              f"{manifest.policy!r}")
    if SPEC_KEY in meta:
        try:
            trained_for = _spec_of(meta[SPEC_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise WeightsRejected("bad_blob", f"unreadable {SPEC_KEY}: {exc}") from None
        if trained_for != spec:
            raise WeightsRejected("spec_mismatch", f"trained for {trained_for}, this robot is "
                                  f"{spec}")
    try:
        tensors = tensors_of(blob)
    except ValueError as exc:
        raise WeightsRejected("bad_blob", str(exc)) from None
    bad = _non_finite(tensors)
    if bad is not None:
        raise WeightsRejected("non_finite", bad)
    try:
        if numpy_inference:
            built: Policy = policies.load_for_inference(spec, data, tensors)
            return built
        return policies.load(spec, bytes(blob))
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsRejected("build_failed", str(exc)) from None


#: Refusals that mean "the bytes are not what the manifest says" (dead letter reason).
_HASH_REASONS = frozenset({"chunk_hash", "blob_hash", "chunk_size", "blob_size", "chunk_mismatch"})


# -- what the control loop sees -------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """A learned policy ready to run, and the version it is."""

    version: int
    policy: Policy
    act: PolicyFn
    """observation -> action (one robot, one step)."""
    learner_step: int = 0
    fetch_s: float = 0.0
    """seconds from taking up its manifest to holding every chunk (what the source's
    tail had read beforehand costs nothing here)."""
    verify_s: float = 0.0
    """seconds spent checking the chunks against the manifest and joining the blob."""
    build_s: float = 0.0
    """seconds spent building the policy and loading the weights."""


def _act_fn(policy: Policy, deterministic: bool) -> PolicyFn:
    def act(observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        batch = np.asarray(observation, dtype=np.float32).reshape(1, -1)
        return np.asarray(policy.act(batch, deterministic=deterministic)[0], dtype=np.float32)

    def act_on_frames(observation: npt.NDArray[np.floating],
                      images: Mapping[str, npt.NDArray[np.uint8]] | None
                      ) -> npt.NDArray[np.float32]:
        batch = np.asarray(observation, dtype=np.float32).reshape(1, -1)
        frames = {c: img[None] for c, img in (images or {}).items() if c in policy.cameras}
        return np.asarray(policy.act(batch, deterministic=deterministic, images=frames)[0],
                          dtype=np.float32)

    act_chunk = getattr(policy, "act_chunk", None)
    # A chunked policy with an execution rule: the worker executes its chunks.  Without
    # one (vla_transformer, meant for inference replicas: its act_chunk takes
    # instructions), a robot running it itself acts step by step with its first action.
    if act_chunk is not None and hasattr(policy, "execution"):
        def chunk(observation: npt.NDArray[np.floating],
                  images: Mapping[str, npt.NDArray[np.uint8]] | None
                  ) -> npt.NDArray[np.float32]:
            batch = np.asarray(observation, dtype=np.float32).reshape(1, -1)
            frames = {c: img[None] for c, img in (images or {}).items()
                      if c in policy.cameras}
            return np.asarray(act_chunk(batch, deterministic, frames or None)[0], np.float32)

        return ChunkPolicy(chunk, policy.execution)  # type: ignore[attr-defined]
    return FramesPolicy(act_on_frames) if getattr(policy, "cameras", ()) else act


def learned_or(
    fallback: Callable[[], tuple[PolicyFn, int]],
    subscriber: WeightsSubscriber | None,
    lease: Callable[[], Lease | None],
    robot_type: str,
) -> Callable[[], tuple[PolicyFn, int]]:
    """A robot's per-step policy source: the learned policy of its leased experiment (its
    robot type's weights stream, :func:`learners.policies.weights_stream`) once a verified
    one exists, else ``fallback`` (version 0: no learned weights).

    The returned callable does no I/O: it reads what the subscriber already swapped in.
    """
    if subscriber is None:
        return fallback

    def current() -> tuple[PolicyFn, int]:
        held = lease()
        if held is not None:
            stream = policies.weights_stream(held.experiment_id, robot_type)
            subscriber.want(stream)
            applied = subscriber.current(stream)
            if applied is not None:
                return applied.act, applied.version
        return fallback()

    return current


# -- the background subscriber --------------------------------------------------------------


class WeightsSource(Protocol):
    """Where a subscriber reads manifests and chunks (Kafka adapter, or a fake)."""

    def manifests(self, timeout_s: float) -> list[events.WeightsManifestV1 | str]:
        """New manifests (waiting up to ``timeout_s`` for the first); a ``str`` stands
        for a manifest record that could not be read, and says why."""

    def caught_up(self) -> bool:
        """True once every manifest that existed at start has been returned."""

    def fetch(self, manifest: events.WeightsManifestV1, timeout_s: float) -> list[FetchedChunk]:
        """The chunks ``manifest`` names, read at its offsets (in any order; each with
        the SHA-256 its bytes had when read, where the source hashed them).  Raises
        :class:`WeightsRejected` (``missing_chunk``, ``unreadable_chunk``,
        ``fetch_timeout``)."""

    def prefetch(self, wanted: Callable[[str], bool]) -> None:
        """Keep new chunks of the experiments ``wanted`` says yes to as they are written,
        before their manifest exists, so :meth:`fetch` finds them here (a source without
        a reader of its own for chunks ignores this)."""

    def refuse(self, manifest: events.WeightsManifestV1, reason: RejectReason,
               detail: str) -> None:
        """Dead-letter ``manifest``'s record (a refused version leaves a trace in ``dlq``)."""

    def close(self) -> None: ...


class SubscriberSettings(BaseSettings):
    """How an agent takes learned weights (environment prefix ``USER_AGENT_WEIGHTS_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_AGENT_WEIGHTS_", frozen=True,
                                      extra="ignore")

    enabled: bool = Field(True, description="run learned policies once they are published")
    deterministic: bool = Field(
        False, description="act with the policy's mode instead of sampling (evaluation)"
    )
    fetch_timeout_s: float = Field(120.0, gt=0, description="give up on a version after this")
    prefetch: bool = Field(
        True, description="read new chunks as the learner writes them, before their "
        "manifest (every experiment's chunks on the site's log cross the link; only wanted "
        "ones are kept and hashed); false: fetch a version's chunks after its manifest")
    verify_blob_sha256: bool = Field(
        False, description="also hash each joined blob against the manifest's whole-blob "
        "SHA-256 (a second pass over every byte; the per-chunk digests already pin them)")
    numpy_inference: bool = Field(
        True, description="run kinds that have a numpy twin (mlp_gaussian) without torch; "
        "false: the learner's torch network (an inference host moving it to a GPU)")
    trusted_keys: Path | None = Field(
        None, description="trusted-keys JSON (topics.signing; `userctl security trust-key`): "
        "apply only versions a trusted, unexpired key signed; None: hashes only (unsecured)")


class WeightsSubscriber:
    """Keeps the newest verified policy of each wanted experiment, fetched in the background.

    Thread-safe: :meth:`want` and :meth:`current` are called from the control loop,
    everything else happens on the subscriber's own thread.
    """

    def __init__(
        self,
        open_source: Callable[[], WeightsSource],
        spec: policies.PolicySpec,
        settings: SubscriberSettings | None = None,
        *,
        on_applied: Callable[[str, Applied], None] | None = None,
    ) -> None:
        self._open_source = open_source
        self.spec = spec
        self.settings = settings or SubscriberSettings()
        self._on_applied = on_applied
        self._lock = threading.Condition()
        self._wanted: set[str] = set()
        self._applied: dict[str, Applied] = {}
        self._latest: dict[str, events.WeightsManifestV1] = {}
        self._refused: dict[str, int] = {}  # experiment -> newest version refused
        self._ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rejected: Counter[str] = Counter()
        """versions refused, by reason (and ``bad_manifest`` records)."""
        self.applied_versions: list[tuple[str, int]] = []
        """every (experiment, version) swapped in, in order."""
        self.last_rejection = ""
        self._trusted = signing.TrustedKeys()
        self._trusted_stamp: int | None = None

    # -- control-loop side (no I/O) ----------------------------------------------------------

    def want(self, experiment_id: str) -> None:
        """Fetch weights for ``experiment_id`` (a robot here is leased to it)."""
        if experiment_id in self._wanted:  # set membership is atomic; skip the lock
            return
        with self._lock:
            self._wanted.add(experiment_id)
            self._lock.notify_all()

    def current(self, experiment_id: str) -> Applied | None:
        """The newest applied policy of ``experiment_id``, or None."""
        with self._lock:
            return self._applied.get(experiment_id)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="weights-subscriber")
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def ready(self) -> bool:
        """True once every manifest that existed at start has been read."""
        with self._lock:
            return self._ready

    def wait_ready(self, timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._ready, timeout_s)

    def wait_applied(self, experiment_id: str, version: int, timeout_s: float) -> bool:
        """Wait until ``version`` (or newer) of ``experiment_id`` is applied."""
        def done() -> bool:
            applied = self._applied.get(experiment_id)
            return applied is not None and applied.version >= version

        with self._lock:
            return self._lock.wait_for(done, timeout_s)

    def wait_rejected(self, experiment_id: str, version: int, timeout_s: float) -> bool:
        """Wait until ``version`` (or newer) of ``experiment_id`` has been refused."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self._refused.get(experiment_id, 0) >= version, timeout_s)

    # -- the background thread -----------------------------------------------------------------

    def _run(self) -> None:
        source = self._connect()
        if source is None:
            return
        try:
            if self.settings.prefetch:
                source.prefetch(self._wanted.__contains__)  # set membership is atomic
            while not self._stop.is_set():
                self._read_manifests(source, 0.1)
                if not source.caught_up():
                    continue  # a late joiner jumps straight to the newest version
                with self._lock:
                    if not self._ready:
                        self._ready = True
                        self._lock.notify_all()
                for manifest in self._due():
                    self._install(source, manifest)
        except Exception:  # never take the agent down; robots keep their last policy
            log.exception("weights subscriber stopped; robots keep their current policies")
        finally:
            source.close()

    def _connect(self) -> WeightsSource | None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                return self._open_source()
            except (TimeoutError, LookupError) as exc:
                log.warning("weights: %s; retrying in %.0f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 15.0)
        return None

    def _read_manifests(self, source: WeightsSource, timeout_s: float) -> None:
        for item in source.manifests(timeout_s):
            if isinstance(item, str):
                self._count("bad_manifest", f"unreadable manifest record: {item}")
                continue
            applied = self.current(item.experiment_id)
            if applied is not None and item.version <= applied.version:
                self._refuse(source, item, "replayed", f"{item.experiment_id} v{item.version} "
                             f"is not newer than the applied v{applied.version}; keeping it")
                continue
            with self._lock:
                held = self._latest.get(item.experiment_id)
                if held is None or item.version > held.version:
                    self._latest[item.experiment_id] = item

    def _due(self) -> list[events.WeightsManifestV1]:
        with self._lock:
            due = []
            for exp in self._wanted:
                manifest = self._latest.get(exp)
                if manifest is None:
                    continue
                applied = self._applied.get(exp)
                if manifest.version <= (applied.version if applied else 0):
                    continue
                if manifest.version <= self._refused.get(exp, 0):
                    continue
                due.append(manifest)
            return due

    def _install(self, source: WeightsSource, manifest: events.WeightsManifestV1) -> None:
        exp, version = manifest.experiment_id, manifest.version
        try:
            self._check_signature(manifest)
            t0 = time.monotonic()
            fetched = source.fetch(manifest, self.settings.fetch_timeout_s)
            t1 = time.monotonic()
            blob = assemble(manifest, fetched, verify_blob=self.settings.verify_blob_sha256)
            del fetched
            t2 = time.monotonic()
            policy = build_policy(manifest, blob, self.spec, self.settings.numpy_inference)
            t3 = time.monotonic()
        except Exception as exc:  # a transport failure must not end the subscriber
            if not isinstance(exc, WeightsRejected):
                log.exception("weights %s v%d: fetching failed", exp, version)
                exc = WeightsRejected("fetch_error", f"{type(exc).__name__}: {exc}")
            held = self.current(exp)
            keeping = f"v{held.version}" if held else "the non-learned policy"
            self._refuse(source, manifest, exc.reason,
                         f"{exp} v{version} refused ({exc.detail}); keeping {keeping}")
            return
        applied = Applied(version, policy, _act_fn(policy, self.settings.deterministic),
                          manifest.learner_step, t1 - t0, t2 - t1, t3 - t2)
        with self._lock:
            self._applied[exp] = applied
            self.applied_versions.append((exp, version))
            self._lock.notify_all()
        log.info("weights %s v%d applied (%d bytes, learner step %d; fetch %.3f s, verify "
                 "%.3f s, build %.3f s)", exp, version, manifest.total_bytes,
                 manifest.learner_step, applied.fetch_s, applied.verify_s, applied.build_s)
        if self._on_applied is not None:
            self._on_applied(exp, applied)

    def _check_signature(self, manifest: events.WeightsManifestV1) -> None:
        """Raise :class:`WeightsRejected` unless a trusted key signed ``manifest`` (when
        this agent requires signatures).  The trusted-keys file is re-read when it changes,
        so `userctl security trust-key` takes effect without a restart."""
        path = self.settings.trusted_keys
        if path is None:
            return
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = -1
        if stamp != self._trusted_stamp:
            self._trusted = signing.TrustedKeys.load(path)
            self._trusted_stamp = stamp
        try:
            self._trusted.verify(manifest)
        except signing.SignatureRefused as exc:
            raise WeightsRejected(exc.reason, exc.detail) from None

    def _refuse(self, source: WeightsSource, manifest: events.WeightsManifestV1, reason: str,
                detail: str) -> None:
        """Count, log and dead-letter a refused version (the robot keeps its policy)."""
        self._count(reason, detail, refused=(manifest.experiment_id, manifest.version))
        dlq_reason = (RejectReason.SIGNATURE if reason in signing.REASONS
                      else RejectReason.REPLAYED if reason == "replayed"
                      else RejectReason.HASH_MISMATCH if reason in _HASH_REASONS
                      else RejectReason.NON_FINITE if reason == "non_finite"
                      else RejectReason.SPEC_MISMATCH if reason == "spec_mismatch"
                      else RejectReason.INCONSISTENT)
        try:
            source.refuse(manifest, dlq_reason, f"{reason}: {detail}")
        except Exception:  # a dead letter that fails is logged; the refusal stands
            log.exception("weights: could not dead-letter %s v%d", manifest.experiment_id,
                          manifest.version)

    def _count(self, reason: str, detail: str, refused: tuple[str, int] | None = None) -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.last_rejection = f"{reason}: {detail}"
            if refused is not None:
                exp, version = refused
                self._refused[exp] = max(self._refused.get(exp, 0), version)
            self._lock.notify_all()
        log.warning("weights: %s: %s", reason, detail)
