"""Weight sync latency: learner publish -> policy applied on N robots, beside raw loopback TCP.

For each policy size (an ``mlp_gaussian`` whose hidden width is chosen to reach the size)
and each subscriber count, one cell is measured as:

* ``applied`` — from ``WeightsPublisher.publish(snapshot)`` returning to each
  subscriber's swap of the verified policy: serialise, chunk, produce every chunk and
  wait for its acknowledgement, produce the manifest; then on every subscriber: follow
  the manifest, fetch the chunks by assign + seek, check each chunk's and the blob's
  SHA-256, build the policy with ``learners.policies`` and swap it in.  One sample per
  subscriber per repeat; p50 and p99 (nearest rank) over all samples.
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
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents.weights import Applied, SubscriberSettings, WeightsSubscriber
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


def measure_cell(kafka: KafkaSettings, snapshot: Snapshot, blob_bytes: int, size_mb: int,
                 n_subscribers: int, repeats: int, chunk_bytes: int, timeout_s: float
                 ) -> Cell:
    experiment = f"bench-{size_mb}mb-{n_subscribers}x-{uuid.uuid4().hex[:8]}"
    applied_at: dict[tuple[int, int], float] = {}
    phases: list[tuple[float, float, float]] = []
    durable_at: dict[int, float] = {}
    cond = threading.Condition()

    def on_applied(index: int) -> Callable[[str, Applied], None]:
        def record(_exp: str, applied: Applied) -> None:
            with cond:
                applied_at[(index, applied.version)] = time.monotonic()
                phases.append((applied.fetch_s, applied.verify_s, applied.build_s))
                cond.notify_all()
        return record

    def on_published(manifest: events.WeightsManifestV1) -> None:
        with cond:
            durable_at[manifest.version] = time.monotonic()

    def source(index: int) -> Callable[[], KafkaWeightsSource]:
        return lambda: KafkaWeightsSource(kafka, role=f"bench-sub{index}")

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
        KafkaWeightsSink(kafka, role="bench-publisher"), experiment,
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
                missed, phases)


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


def section(cells: list[Cell], args: argparse.Namespace, elapsed_s: float) -> str:
    import torch

    return "\n".join([
        "## Weight sync: publish → applied (`userctl bench weights`)",
        "",
        *report.machine_lines(),
        f"- torch {torch.__version__}; broker: the local single-node Kafka "
        "(`userctl broker start`), on the same cores",
        f"- run time: {elapsed_s:.0f} s",
        "",
        "One sample = one subscriber's latency from `WeightsPublisher.publish(snapshot)` to "
        "that subscriber swapping in the verified policy: serialise to safetensors, cut into "
        f"{args.chunk_mb:g} MiB chunks, produce them and wait for every acknowledgement, "
        "produce the manifest; then on each subscriber follow the manifest, fetch the chunks "
        "by assign + seek to their offsets, check every chunk's and the whole blob's SHA-256, "
        "build the `mlp_gaussian` policy with `learners.policies` and swap it in. p99 is the "
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
    text = section(cells, args, time.monotonic() - began)
    print(text)
    if not args.no_write:
        report.write_section("weights", text, args.out)
        print(f"\nwritten to {args.out}")
    return 0 if not any(c.missed for c in cells) else 1

