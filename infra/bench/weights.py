"""Weight sync latency: learner publish -> policy applied on N robots, beside raw loopback TCP.

For each policy size (an ``mlp_gaussian`` whose hidden width is chosen to reach the size)
and each subscriber count, one cell is measured as:

* ``applied`` — from ``WeightsPublisher.publish(snapshot)`` returning to each
  subscriber's swap of the verified policy: serialise, chunk, produce every chunk and
  wait for its acknowledgement, produce the manifest; then on every subscriber: read
  the chunks as they are written (its tail reader hashes each once on arrival), follow
  the manifest, check each chunk's digest, size and offset against it (chunks the tail
  missed are fetched by assign + seek), build the policy with ``learners.policies`` and
  swap it in.  One sample per subscriber per repeat; p50 and p99 (nearest rank) over all
  samples.
* ``manifest durable`` — the publisher's part alone (publish -> manifest acknowledged).
* ``loopback`` — baseline: the same blob sent to N receivers over 127.0.0.1 TCP sockets
  at once (one sender thread per receiver), until the last byte is in; median of the
  same number of repeats.

The broker is the one ``USER_KAFKA_BOOTSTRAP`` names (the local one by default).
Subscribers are threads of this one process (each with its own Kafka clients), so N of
them share this machine's cores with the publisher and, locally, the broker: a real
fleet fetches on N machines.  The bandwidth cap is off (``max_bytes_per_s=0``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents.weights import Applied, FetchedChunk, SubscriberSettings, WeightsSubscriber
from agents.weights_kafka import KafkaWeightsSource
from infra.bench import report
from learners import policies, weights_sync
from learners.weights_sync import Snapshot, WeightSyncSettings
from learners.weights_sync_kafka import KafkaWeightsSink
from schemas import events
from topics import admin, catalog
from topics.settings import KafkaSettings

HELP = "weights publish -> applied latency (p50/p99) to 1/4/16 subscribers vs loopback TCP"

OBS_DIM, ACT_DIM = 64, 8
SPEC = policies.PolicySpec(OBS_DIM, ACT_DIM, (-1.0,) * ACT_DIM, (1.0,) * ACT_DIM)
MB = 1_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes-mb", default="1,10,100", help="policy sizes in MB, comma-separated")
    p.add_argument("--subscribers", default="1,4,16", help="subscriber counts, comma-separated")
    p.add_argument("--repeats", default="10,5,2",
                   help="publishes per cell, one per size (or one for all)")
    p.add_argument("--chunk-mb", type=float, default=1.0,
                   help="weights record size in MiB (the topic takes at most 8 MiB per record)")
    p.add_argument("--timeout-s", type=float, default=120.0,
                   help="give up on a publish that is not applied everywhere by then")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH,
                   help="the BENCHMARKS.md to update")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--profile", action="store_true",
                   help="one subscriber per size: print when each stage of a publish was "
                   "reached (p50 ms after publish()); writes nothing")


@dataclass(frozen=True)
class Cell:
    size_mb: int
    blob_bytes: int
    chunks: int
    subscribers: int
    repeats: int
    applied_s: list[float]
    durable_s: list[float]
    loopback_s: list[float]
    missed: int
    phases: list[tuple[float, float, float]]
    """per sample: subscriber seconds fetching, verifying, building."""
    from_tail: int = 0
    """chunks the subscribers found already read by their tail readers …"""
    fetched: int = 0
    """… and chunks they had to fetch by offset after the manifest."""

    def phase_ms(self, i: int) -> str:
        return _ms(statistics.median(p[i] for p in self.phases)) if self.phases else "—"

    @property
    def p50(self) -> float:
        return statistics.median(self.applied_s) if self.applied_s else math.nan

    @property
    def p99(self) -> float:
        if not self.applied_s:
            return math.nan
        ordered = sorted(self.applied_s)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def hidden_width(size_bytes: int) -> int:
    """The hidden width h of a 2-layer mlp_gaussian of about ``size_bytes`` float32 bytes."""

    def params(h: int) -> int:
        return OBS_DIM * h + h + h * h + h + h * 2 * ACT_DIM + 2 * ACT_DIM

    h = 1
    while params(h * 2) * 4 < size_bytes:
        h *= 2
    lo, hi = h, h * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if params(mid) * 4 < size_bytes:
            lo = mid + 1
        else:
            hi = mid
    return lo


def policy_snapshot(size_mb: int) -> Snapshot:
    width = hidden_width(size_mb * MB)
    options = {"hidden_sizes": [width, width]}
    policy = policies.build("mlp_gaussian", SPEC, options)
    return Snapshot.take(policy.export_weights(), kind="mlp_gaussian", options=options,
                         spec=SPEC)


# -- the baseline: the same bytes over loopback TCP ------------------------------------------


def loopback_seconds(blob: bytes, receivers: int) -> float:
    """Seconds to deliver ``blob`` to ``receivers`` TCP receivers on 127.0.0.1 at once."""
    size = len(blob)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(receivers)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(receivers)]
        conns = [server.accept()[0] for _ in range(receivers)]
        start = threading.Barrier(2 * receivers + 1)
        done: list[float] = []
        lock = threading.Lock()

        def send(conn: socket.socket) -> None:
            start.wait()
            conn.sendall(blob)

        def receive(sock: socket.socket) -> None:
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            start.wait()
            while got < size:
                n = sock.recv_into(view[got:], size - got)
                if n == 0:
                    raise ConnectionError("loopback sender closed early")
                got += n
            with lock:
                done.append(time.perf_counter())

        threads = [threading.Thread(target=send, args=(c,)) for c in conns]
        threads += [threading.Thread(target=receive, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        for s in clients + conns:
            s.close()
    return max(done) - began


# -- the measured path --------------------------------------------------------------------------


class Stages:
    """Per version, when each stage of a publish was reached (``--profile``)."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, float]] = {}
        self.began: dict[int, float] = {}
        """version -> when ``publish()`` was called."""
        self._lock = threading.Lock()

    def mark(self, version: int, stage: str) -> None:
        with self._lock:
            self.at.setdefault(version, {}).setdefault(stage, time.monotonic())

    def table(self) -> list[tuple[str, float]]:
        """(stage, p50 ms after ``publish()``) in the order stages were reached."""
        rows: dict[str, list[float]] = {}
        for version, stages in self.at.items():
            if version in self.began:
                for stage, t in stages.items():
                    rows.setdefault(stage, []).append((t - self.began[version]) * 1e3)
        return sorted(((k, statistics.median(v)) for k, v in rows.items()), key=lambda r: r[1])


class _TimedSink(KafkaWeightsSink):
    def __init__(self, kafka: KafkaSettings, stages: Stages) -> None:
        super().__init__(kafka, role="bench-publisher")
        self._stages, self._version = stages, 0

    def send_chunk(self, chunk: events.WeightsChunkV1) -> None:
        self._version = chunk.version
        super().send_chunk(chunk)
        if chunk.index == 0:
            self._stages.mark(chunk.version, "first chunk hashed and queued")
        if chunk.index == chunk.n_chunks - 1:
            self._stages.mark(chunk.version, "last chunk queued")

    def acknowledged_offsets(self, timeout_s: float) -> list[int]:
        self._stages.mark(self._version, "whole-blob digest ready")
        offsets = super().acknowledged_offsets(timeout_s)
        self._stages.mark(self._version, "chunks acknowledged")
        return offsets

    def send_manifest(self, manifest: events.WeightsManifestV1, timeout_s: float) -> None:
        self._stages.mark(manifest.version, "manifest produced")
        super().send_manifest(manifest, timeout_s)
        self._stages.mark(manifest.version, "manifest acknowledged")


class _TimedSource(KafkaWeightsSource):
    def __init__(self, kafka: KafkaSettings, role: str, stages: Stages) -> None:
        super().__init__(kafka, role=role)
        self._stages = stages

    def fetch(self, manifest: events.WeightsManifestV1, timeout_s: float) -> list[FetchedChunk]:
        self._stages.mark(manifest.version, "agent took up the manifest")
        got = super().fetch(manifest, timeout_s)
        self._stages.mark(manifest.version, "agent holds every chunk")
        return got


def measure_cell(kafka: KafkaSettings, snapshot: Snapshot, blob_bytes: int, size_mb: int,
                 n_subscribers: int, repeats: int, chunk_bytes: int, timeout_s: float,
                 stages: Stages | None = None) -> Cell:
    """One cell; with ``stages`` (one subscriber), also when each stage was reached."""
    experiment = f"bench-{size_mb}mb-{n_subscribers}x-{uuid.uuid4().hex[:8]}"
    applied_at: dict[tuple[int, int], float] = {}
    phases: list[tuple[float, float, float]] = []
    durable_at: dict[int, float] = {}
    cond = threading.Condition()

    def on_applied(index: int) -> Callable[[str, Applied], None]:
        def record(_exp: str, applied: Applied) -> None:
            if stages is not None:
                stages.mark(applied.version, "policy built and swapped in")
            with cond:
                applied_at[(index, applied.version)] = time.monotonic()
                phases.append((applied.fetch_s, applied.verify_s, applied.build_s))
                cond.notify_all()
        return record

    def on_published(manifest: events.WeightsManifestV1) -> None:
        with cond:
            durable_at[manifest.version] = time.monotonic()

    sources: list[KafkaWeightsSource] = []

    def source(index: int) -> Callable[[], KafkaWeightsSource]:
        def made() -> KafkaWeightsSource:
            role = f"bench-sub{index}"
            sources.append(KafkaWeightsSource(kafka, role=role) if stages is None
                           else _TimedSource(kafka, role, stages))
            return sources[-1]
        return made

    subscribers = [
        WeightsSubscriber(
            source(i), SPEC,
            SubscriberSettings(deterministic=True, fetch_timeout_s=timeout_s),
            on_applied=on_applied(i))
        for i in range(n_subscribers)
    ]
    for sub in subscribers:
        sub.want(experiment)
        sub.start()
    publisher = weights_sync.WeightsPublisher(
        KafkaWeightsSink(kafka, role="bench-publisher") if stages is None
        else _TimedSink(kafka, stages), experiment,
        WeightSyncSettings(chunk_bytes=chunk_bytes, max_bytes_per_s=0),
        on_published=on_published)
    applied_s: list[float] = []
    durable_s: list[float] = []
    missed = 0
    try:
        for sub in subscribers:
            if not sub.wait_ready(60.0):
                raise TimeoutError("a subscriber did not catch up on weights manifests in 60 s")
        publisher.start(first_version=1)
        for version in range(1, repeats + 1):
            began = time.monotonic()
            if stages is not None:
                stages.began[version] = began
            publisher.publish(snapshot)
            def everywhere(v: int = version) -> bool:
                return all((i, v) in applied_at for i in range(n_subscribers))

            with cond:
                cond.wait_for(everywhere, timeout_s)
                got = [applied_at[(i, version)] - began for i in range(n_subscribers)
                       if (i, version) in applied_at]
                if version in durable_at:
                    durable_s.append(durable_at[version] - began)
            applied_s += got
            missed += n_subscribers - len(got)
            if len(got) < n_subscribers:
                reasons = {k: v for s in subscribers for k, v in s.rejected.items()}
                print(f"  v{version}: {n_subscribers - len(got)} subscribers missed it "
                      f"({reasons or 'timeout'})", flush=True)
    finally:
        publisher.close()
        for sub in subscribers:
            sub.close()
    blob = weights_sync.serialise(snapshot)
    loop = [loopback_seconds(blob, n_subscribers) for _ in range(max(3, repeats))]
    chunks = math.ceil(blob_bytes / chunk_bytes)
    return Cell(size_mb, blob_bytes, chunks, n_subscribers, repeats, applied_s, durable_s, loop,
                missed, phases, sum(s.chunks_from_tail for s in sources),
                sum(s.chunks_fetched for s in sources))


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    if math.isnan(ms):
        return "—"
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def table(cells: list[Cell]) -> str:
    lines = [
        "| policy | chunks | subscribers | samples | manifest durable p50 ms | applied p50 ms "
        "| applied p99 ms | subscriber fetch / verify / build p50 ms "
        "| loopback TCP ms (same bytes to N) | loopback MB/s | applied p50 ÷ loopback |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for c in cells:
        loop = statistics.median(c.loopback_s)
        missed = f" ({c.missed} missed)" if c.missed else ""
        lines.append(
            f"| {c.size_mb} MB ({c.blob_bytes / MB:.1f} MB blob) | {c.chunks} | {c.subscribers} "
            f"| {len(c.applied_s)}{missed} | "
            f"{_ms(statistics.median(c.durable_s)) if c.durable_s else '—'} | "
            f"{_ms(c.p50)} | {_ms(c.p99)} | "
            f"{c.phase_ms(0)} / {c.phase_ms(1)} / {c.phase_ms(2)} | {_ms(loop)} | "
            f"{c.blob_bytes * c.subscribers / loop / MB:,.0f} | {c.p50 / loop:.1f}× |"
        )
    return "\n".join(lines)


def section(cells: list[Cell], args: argparse.Namespace, elapsed_s: float,
            load: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> str:
    import torch

    return "\n".join([
        "## Weight sync: publish → applied (`userctl bench weights`)",
        "",
        *report.machine_lines(),
        f"- torch {torch.__version__}; broker: the local single-node Kafka "
        "(`userctl broker start`), on the same cores",
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in load)} (1/5/15 min); "
        f"run time: {elapsed_s:.0f} s",
        "",
        "One sample = one subscriber's latency from `WeightsPublisher.publish(snapshot)` to "
        "that subscriber swapping in the verified policy: serialise to safetensors, cut into "
        f"{args.chunk_mb:g} MiB chunks, hash them on a pool of threads (the whole-blob "
        "SHA-256 beside them) and produce each as its digest is ready, wait for every "
        "acknowledgement, produce the "
        "manifest; each subscriber's tail reader takes the chunks as they are written and "
        "hashes each byte once, then on the manifest the subscriber checks every chunk's "
        "digest, size and offset against it (fetching by offset what its tail did not "
        "hold), builds the `mlp_gaussian` policy (numpy, views into the blob) and swaps it "
        "in. *fetch* is the wait for the tail after the manifest, *verify* the checks and "
        "the copy into one blob, *build* the policy. p99 is the "
        "nearest-rank 99th percentile of all samples of a cell (with few samples, about the "
        "maximum). *Manifest durable* is the publisher's part alone. *Loopback TCP* is the "
        "baseline measured in the same run: the same blob sent over 127.0.0.1 sockets to N "
        "receivers at once, median of ≥ 3 sends; *loopback MB/s* counts all N copies.",
        "",
        "Subscribers are **threads in this one process** (each with its own Kafka consumers "
        "and its own policy build), so 16 of them share the machine's cores with the "
        "publisher and the broker; on a fleet each robot fetches on its own computer, and "
        "the 16-subscriber rows are an upper bound on contention. The `weights` topic takes "
        f"at most {catalog.WEIGHTS.max_message_bytes >> 20} MiB per record, so chunks stay "
        "below that; the bandwidth cap is off for this run (learners default to "
        f"{WeightSyncSettings().max_bytes_per_s / 1e6:g} MB/s).",
        "",
        table(cells),
        "",
        f"Chunks taken from the tail readers: {sum(c.from_tail for c in cells):,}; fetched "
        f"by offset after their manifest: {sum(c.fetched for c in cells):,}.",
    ])


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes_mb.split(",") if s.strip()]
    counts = [int(s) for s in args.subscribers.split(",") if s.strip()]
    repeats = [int(s) for s in args.repeats.split(",") if s.strip()]
    if len(repeats) == 1:
        repeats = repeats * len(sizes)
    if len(repeats) != len(sizes):
        print(f"--repeats gives {len(repeats)} counts for {len(sizes)} sizes; give one per "
              "size or a single one")
        return 2
    chunk_bytes = int(args.chunk_mb * (1 << 20))
    if chunk_bytes > weights_sync.MAX_CHUNK_BYTES:
        print(f"--chunk-mb {args.chunk_mb:g} exceeds the weights topic's record limit; "
              f"use at most {weights_sync.MAX_CHUNK_BYTES / (1 << 20):.2f}")
        return 2
    kafka = KafkaSettings()
    try:
        admin.ensure_topics(kafka, [catalog.WEIGHTS, catalog.WEIGHTS_MANIFESTS])
    except admin.BrokerUnreachableError as exc:
        print(f"no Kafka broker at {kafka.bootstrap} ({exc}); run `userctl broker start` "
              "or set USER_KAFKA_BOOTSTRAP")
        return 1
    # One line per version and subscriber would bury the progress lines.
    for name in ("agents.weights", "learners.weights_sync"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load = os.getloadavg()
    if args.profile:
        return profile(kafka, sizes, repeats, chunk_bytes, args.timeout_s, load)
    began = time.monotonic()
    cells = []
    for size_mb, reps in zip(sizes, repeats, strict=True):
        snapshot = policy_snapshot(size_mb)
        blob_bytes = len(weights_sync.serialise(snapshot))
        for n in counts:
            print(f"{size_mb} MB policy -> {n} subscribers, {reps} publishes …", flush=True)
            cells.append(measure_cell(kafka, snapshot, blob_bytes, size_mb, n, reps,
                                      chunk_bytes, args.timeout_s))
            c = cells[-1]
            print(f"  applied p50 {_ms(c.p50)} ms, p99 {_ms(c.p99)} ms; loopback "
                  f"{_ms(statistics.median(c.loopback_s))} ms", flush=True)
        del snapshot
    text = section(cells, args, time.monotonic() - began, load)
    print(text)
    if not args.no_write:
        report.write_section("weights", text, args.out)
        print(f"\nwritten to {args.out}")
    return 0 if not any(c.missed for c in cells) else 1



def profile(kafka: KafkaSettings, sizes: list[int], repeats: list[int], chunk_bytes: int,
            timeout_s: float, load: tuple[float, float, float]) -> int:
    """Where a publish's time goes, one subscriber, each size: stage -> p50 ms."""
    print(f"load average at start: {' / '.join(f'{x:.1f}' for x in load)}")
    for size_mb, reps in zip(sizes, repeats, strict=True):
        snapshot = policy_snapshot(size_mb)
        stages = Stages()
        cell = measure_cell(kafka, snapshot, len(weights_sync.serialise(snapshot)), size_mb, 1,
                            reps, chunk_bytes, timeout_s, stages)
        print(f"\n{size_mb} MB -> 1 subscriber, {reps} publishes: applied p50 {_ms(cell.p50)} "
              f"ms (samples {', '.join(_ms(x) for x in sorted(cell.applied_s))})")
        for stage, ms in stages.table():
            print(f"  {ms:8.1f} ms  {stage}")
    return 0
