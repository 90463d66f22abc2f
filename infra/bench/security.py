"""The cost of security: the same producer, consumer and weight-sync runs against a
plaintext broker and a secured one (SASL_SSL + SCRAM-SHA-512, ACLs, signed weights),
side by side in one run.

Two private brokers are started for the run (same settings, free ports, a temporary
``USER_HOME``), the secured one exactly as ``userctl broker start --secure`` makes it.

* ``produce`` — an agent's producer (principal ``agent-lab-a`` when secured) sends
  ``--records`` values of ``--record-kb`` KiB to ``transitions.raw`` (one partition,
  the producer settings every role uses: idempotent, ``acks=all``, linger 5 ms) until
  the last is acknowledged: records/s and MB/s.
* ``consume`` — the operator reads them back by assign from the beginning: records/s, MB/s.
* ``weights`` — publish → applied latency of a ``--weights-mb`` policy to one subscriber
  (learner → agent principal; secured: the manifest is signed by the learner's Ed25519
  key and verified against the trusted keys before fetching), p50 over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from agents.weights import Applied, SubscriberSettings, WeightsSubscriber
from agents.weights_kafka import KafkaWeightsSource
from infra import security
from infra.bench import report
from infra.bench.weights import SPEC, policy_snapshot
from infra.broker import Broker, BrokerSettings
from learners import weights_sync
from learners.weights_sync import WeightSyncSettings
from learners.weights_sync_kafka import KafkaWeightsSink
from topics import admin, catalog
from topics.settings import KafkaSettings

HELP = "producer/consumer throughput and weight-sync latency, security off vs on"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=20_000, help="records produced per run")
    p.add_argument("--record-kb", type=float, default=4.0, help="KiB per record")
    p.add_argument("--weights-mb", type=int, default=10, help="policy size for weight sync")
    p.add_argument("--repeats", type=int, default=5, help="weight versions published per side")
    p.add_argument("--trials", type=int, default=3, help="produce/consume runs per side")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH, help="BENCHMARKS.md to update")


#: What the figures mean (kept with the table on every rerun).
WHY = (
    'Why: on the SASL_SSL listener the broker encrypts every fetch response in the JVM '
    'instead of handing file pages to the socket (no `sendfile` zero-copy under TLS), so '
    'reading pays most; producing pays TLS on both ends plus SCRAM once per connection. '
    'Here the broker, the clients and other jobs share 2 cores, so the crypto competes '
    'with everything else; the weight-sync p50 carries that plus ~1.5 ms of Ed25519 (sign '
    '+ verify of a ~1.6 KB canonical manifest, measured separately: 0.7 ms + 0.8 ms). One '
    'run of the command; single-run figures on a shared machine move by ±30 %.'
)


@dataclass(frozen=True)
class Result:
    produce_rps: float
    produce_mbs: float
    consume_rps: float
    consume_mbs: float
    weights_p50_s: float
    weights_max_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker(home: Path, secure: bool) -> Broker:
    libs = Broker(BrokerSettings()).ensure_jars()
    return Broker(BrokerSettings(
        home=home, libs=libs, port=_free_port(), controller_port=_free_port(),
        internal_port=_free_port(), heap="1g", offsets_partitions=3, secure=secure))


@dataclass
class Side:
    """One broker of the comparison and the principals used on it."""

    name: str
    broker: Broker
    producer: KafkaSettings
    reader: KafkaSettings
    learner: KafkaSettings
    signing_key: Path | None = None
    trusted: Path | None = None


def _open(root: Path, secure: bool) -> Side:
    home = root / ("secure" if secure else "plain")
    broker = _broker(home, secure)
    sites = KafkaSettings().sites.sites
    if secure:
        admin.ensure_topics(security.start_secure(broker, sites))
        boot = broker.settings.bootstrap
        paths = security.Paths(home)
        return Side("secure", broker, security.client_settings(home, "agent-lab-a", boot),
                    security.client_settings(home, "operator", boot),
                    security.client_settings(home, "learner", boot),
                    paths.signing_key, paths.trusted_keys)
    broker.start()
    plain = broker.admin_settings()
    admin.ensure_topics(plain)
    return Side("plain", broker, plain, plain, plain)


def _produce(kafka: KafkaSettings, topic: str, n: int, size: int) -> tuple[int, float]:
    """(offset of the first record, seconds until the last is acknowledged)."""
    producer = Producer(kafka.producer_config(role="bench"))
    value = os.urandom(size)
    failed: list[str] = []
    first: list[int] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))
        elif not first:
            first.append(msg.offset())  # type: ignore[attr-defined]

    began = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, value, str(i % 64).encode(), partition=0,
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise TimeoutError("records not acknowledged within 120 s")
    if failed:
        raise RuntimeError(f"{len(failed)} records refused: {failed[0]}")
    return first[0], time.perf_counter() - began


def _consume(kafka: KafkaSettings, topic: str, start: int, n: int) -> float:
    consumer = Consumer(kafka.consumer_config(f"user-bench-{uuid.uuid4().hex[:8]}",
                                              role="bench"))
    consumer.assign([TopicPartition(topic, 0, start)])
    got = 0
    began = time.perf_counter()
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 1.0):
            if msg.error() is None:
                got += 1
    elapsed = time.perf_counter() - began
    consumer.close()
    if got < n:
        raise TimeoutError(f"read {got} of {n} records in 300 s")
    return elapsed


class _WeightSync:
    """A publisher (learner) and a subscriber (agent) of one experiment on one side."""

    def __init__(self, side: Side) -> None:
        self.experiment = f"bench-security-{uuid.uuid4().hex[:8]}"
        self.applied_at: dict[int, float] = {}
        self.cond = threading.Condition()
        self.sub = WeightsSubscriber(
            lambda: KafkaWeightsSource(side.producer, role="agent-bench"), SPEC,
            SubscriberSettings(deterministic=True, trusted_keys=side.trusted),
            on_applied=self._applied)
        self.sub.want(self.experiment)
        self.sub.start()
        self.publisher = weights_sync.WeightsPublisher(
            KafkaWeightsSink(side.learner, role="learner-bench"), self.experiment,
            WeightSyncSettings(max_bytes_per_s=0, signing_key=side.signing_key))
        if not self.sub.wait_ready(60.0):
            raise TimeoutError("the subscriber did not catch up on manifests in 60 s")
        self.publisher.start(first_version=1)
        self.version = 0

    def _applied(self, _exp: str, applied: Applied) -> None:
        with self.cond:
            self.applied_at[applied.version] = time.monotonic()
            self.cond.notify_all()

    def once(self, snapshot: weights_sync.Snapshot) -> float:
        self.version += 1
        version = self.version
        began = time.monotonic()
        self.publisher.publish(snapshot)

        def arrived() -> bool:
            return version in self.applied_at

        with self.cond:
            if not self.cond.wait_for(arrived, 120.0):
                raise TimeoutError(f"v{version} not applied in 120 s ({self.sub.last_rejection})")
            return self.applied_at[version] - began

    def close(self) -> None:
        self.publisher.close()
        self.sub.close()


def measure(args: argparse.Namespace, root: Path) -> tuple[Result, Result]:
    """Both sides, trials interleaved (plain, secure, plain, …) so that whatever else
    the machine is doing weighs on both alike; medians over the trials."""
    sides = [_open(root, False)]
    try:
        sides.append(_open(root, True))
        size = int(args.record_kb * 1024)
        topic = catalog.TRANSITIONS_RAW.name
        produced: dict[str, list[float]] = {s.name: [] for s in sides}
        consumed: dict[str, list[float]] = {s.name: [] for s in sides}
        for trial in range(args.trials):
            for side in sides:
                start, took = _produce(side.producer, topic, args.records, size)
                produced[side.name].append(took)
                consumed[side.name].append(_consume(side.reader, topic, start, args.records))
                print(f"  trial {trial + 1} {side.name}: produce {took:.2f} s, consume "
                      f"{consumed[side.name][-1]:.2f} s", flush=True)
        syncs = [_WeightSync(s) for s in sides]
        snapshot = policy_snapshot(args.weights_mb)
        latency: dict[str, list[float]] = {s.name: [] for s in sides}
        try:
            for _ in range(args.repeats):
                for side, sync in zip(sides, syncs, strict=True):
                    latency[side.name].append(sync.once(snapshot))
        finally:
            for sync in syncs:
                sync.close()
    finally:
        for side in sides:
            side.broker.stop()
    mb = args.records * size / 1e6

    def result(name: str) -> Result:
        p, c = statistics.median(produced[name]), statistics.median(consumed[name])
        return Result(args.records / p, mb / p, args.records / c, mb / c,
                      statistics.median(latency[name]), max(latency[name]))

    return result("plain"), result("secure")


def section(plain: Result, secure: Result, args: argparse.Namespace) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{(b / a - 1) * 100:+.0f} %"

    rows = [
        ("produce, records/s", plain.produce_rps, secure.produce_rps, "{:,.0f}"),
        ("produce, MB/s", plain.produce_mbs, secure.produce_mbs, "{:.1f}"),
        ("consume, records/s", plain.consume_rps, secure.consume_rps, "{:,.0f}"),
        ("consume, MB/s", plain.consume_mbs, secure.consume_mbs, "{:.1f}"),
        (f"weights {args.weights_mb} MB publish → applied, p50 s", plain.weights_p50_s,
         secure.weights_p50_s, "{:.3f}"),
        (f"weights {args.weights_mb} MB publish → applied, max s", plain.weights_max_s,
         secure.weights_max_s, "{:.3f}"),
    ]
    lines = [
        "## Security cost: plaintext vs SASL_SSL + ACLs + signed weights (issue 16)",
        "",
        *report.machine_lines(),
        f"- throughput: {args.records:,} records of {args.record_kb:g} KiB to one partition "
        "of `transitions.raw` (agent principal; idempotent, acks=all), read back by assign "
        f"(operator); median of {args.trials} trials per side. Weight sync: "
        f"{args.repeats} versions of a {args.weights_mb} MB `mlp_gaussian` to one "
        "subscriber (learner → agent; secured: Ed25519-signed manifest verified first), "
        "p50 and max. Both brokers are private, on this machine, up at the same time with "
        "the same settings (the secured one as `userctl broker start --secure` makes it); "
        "trials alternate plain / secured so load from other work weighs on both.",
        "",
        "| | plaintext | SASL_SSL | change |",
        "|---|---:|---:|---:|",
    ]
    for name, a, b, fmt in rows:
        lines.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {ratio(a, b)} |")
    lines += ["", WHY]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="user-bench-security-") as tmp:
        print("starting a plaintext and a secured broker…", flush=True)
        plain, secure = measure(args, Path(tmp))
    body = section(plain, secure, args)
    report.write_section("security", body, args.out)
    print(body)
    return 0
