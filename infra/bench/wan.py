"""Bytes over the WAN link, per topic and direction, for a site of N robots.

A private plane (:class:`infra.plane.LocalPlane`): the cloud's broker, one site's broker,
MirrorMaker 2 at the edge dialling the cloud's mutual-TLS listener through a byte-counting
relay.  The controller and the Delta sink run in the cloud, N simulated reachers at the
site; the cloud publishes V weights versions of an MLP policy while they collect.

Per topic, the bytes MM2's producer wrote to the far side's log (the ``.log`` segments of
the copy: zstd-compressed record batches exactly as they crossed); per direction, every
byte the relay carried (TLS, fetches, acks, metadata, MM2's own bookkeeping included).
Targets: weights ≈ 1× the policy size per version for the site (not N×: robots fetch
from the edge); raw steps ≤ 1.05× the bytes their Delta rows take.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.bench import report

HELP = "bytes over the WAN per topic and direction for a site of N robots (MM2 over mTLS)"
SITE = "lab-a"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robots", type=int, default=4, help="robots at the site (default 4)")
    p.add_argument("--seconds", type=float, default=60.0, help="collection time (default 60)")
    p.add_argument("--versions", type=int, default=3, help="weights versions published")
    p.add_argument("--hidden", default="256,256", help="policy MLP hidden sizes")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


def _log_bytes(data_dir: Path, topic: str, partitions: list[int]) -> int:
    total = 0
    for p in partitions:
        total += sum(f.stat().st_size for f in (data_dir / f"{topic}-{p}").glob("*.log"))
    return total


def _dir_bytes(path: Path, suffix: str) -> int:
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}")) if path.exists() else 0


def _sunk(delta: Path, raw_ends: dict[int, int]) -> bool:
    """True when the sink's Delta table records every raw-step partition up to its end."""
    from pipeline import sink
    from topics import catalog
    from topics import tables as contract

    dt = sink.open_table(contract.table_path(delta, contract.TRANSITIONS_RAW))
    if dt is None:
        return False
    return all(end == 0 or (dt.transaction_version(contract.app_id(
        contract.DEFAULT_SINK_NAME, catalog.TRANSITIONS_RAW.name, p)) or -1) >= end - 1
        for p, end in raw_ends.items())


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from infra import mirror
    from infra.plane import LocalPlane
    from learners import policies, sac, weights_sync
    from learners.weights_sync import Snapshot, WeightSyncSettings
    from learners.weights_sync_kafka import KafkaWeightsSink
    from schemas import events as ev
    from schemas.experiment import ExperimentSpec
    from topics import catalog
    from topics.producer import EventProducer

    t_start = time.monotonic()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    root = Path(tempfile.mkdtemp(prefix="user-bench-wan-"))
    plane = LocalPlane(root, sites=(SITE,), site_map=f"{SITE}=0,1", proxy="count")
    procs: list[subprocess.Popen[bytes]] = []

    def role(name: str, where: str, *argv: str, **env: str) -> None:
        with (root / f"{name}.log").open("ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "infra.cli", *argv], stdout=out,
                stderr=subprocess.STDOUT, env={**plane.env(where), **env},
                start_new_session=True))

    def ends(kafka_name: str, topic: str, partitions: list[int]) -> dict[int, int]:
        c = Consumer(plane.kafka(kafka_name).consumer_config("bench", role="bench"))
        try:
            return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in partitions}
        finally:
            c.close()

    print(f"plane in {root}; starting brokers and MirrorMaker 2…", flush=True)
    plane.start()
    try:
        cloud = plane.kafka(mirror.CLOUD)
        name = "bench-wan"
        spec = ExperimentSpec.model_validate({
            "name": name,
            "robots": [{"robot_type": "reacher2d", "count": args.robots, "sites": [SITE]}],
            "algorithm": {"name": "sac", "warmup_steps": 10_000_000},
            "policy": {"kind": "mlp_gaussian", "hidden": list(hidden)},
        })
        producer = EventProducer(cloud, role="bench")
        producer.send(catalog.EXPERIMENTS, ev.ExperimentSubmittedV1(
            experiment_id=name, spec=spec.model_dump(mode="json")))
        producer.flush(30)
        delta = root / "delta"
        role("controller", mirror.CLOUD, "controller")
        role("sink", mirror.CLOUD, "sink", USER_SINK_ROOT=str(delta),
             USER_SINK_FLUSH_INTERVAL_S="5", USER_SINK_COMPACT_INTERVAL_S="0")
        role("agent", SITE, "agent", "--robot-type", "reacher2d", "--site", SITE,
             "--count", str(args.robots), USER_AGENT_FLUSH_MS="250")
        # The weights versions, published in the cloud while the robots collect.
        policy_spec = policies.PolicySpec(4, 2, (-1.0, -1.0), (1.0, 1.0))
        algorithm = sac.SAC(policy_spec, sac.SACConfig(hidden_sizes=hidden, seed=0))
        pub = weights_sync.WeightsPublisher(KafkaWeightsSink(cloud), name,
                                            WeightSyncSettings(max_bytes_per_s=0))
        pub.start()
        t0 = time.monotonic()
        for v in range(1, args.versions + 1):
            while time.monotonic() - t0 < (v - 1) * args.seconds / args.versions:
                time.sleep(0.5)
            pub.publish(Snapshot.of_algorithm(algorithm, kind="mlp_gaussian",
                                              options={"hidden_sizes": list(hidden)},
                                              spec=policy_spec, learner_step=v))
            if not pub.wait_published(v, 120):
                raise SystemExit(f"userctl: weights v{v} was not published: {pub.stats}")
        while time.monotonic() - t0 < args.seconds:
            time.sleep(0.5)
        pub.close()
        for proc in procs[2:]:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        # Everything the site made reaches the cloud; everything the cloud made, the site.
        site_parts = list(cloud.sites.partitions_of(SITE))
        deadline = time.monotonic() + 180
        while True:
            up_done = all(ends(SITE, t.name, site_parts if t.site_partitioned else [0])
                          == ends(mirror.CLOUD, t.name, site_parts if t.site_partitioned
                                  else [0]) for t in mirror.UP if t is not catalog.ROBOTS)
            down_done = all(ends(mirror.CLOUD, t.name, [0]) == ends(SITE, t.name, [0])
                            for t in (catalog.WEIGHTS, catalog.WEIGHTS_MANIFESTS))
            if up_done and down_done:
                break
            if time.monotonic() > deadline:
                raise SystemExit("userctl: the mirror did not catch up within 180 s")
            time.sleep(1)
        raw_ends = ends(mirror.CLOUD, catalog.TRANSITIONS_RAW.name, site_parts)
        while not _sunk(delta, raw_ends):  # the sink's last flush lands
            if time.monotonic() > deadline:
                raise SystemExit("userctl: the sink did not catch up within 180 s")
            time.sleep(1)
        up_wire, down_wire = plane.relays[SITE].counts()
        cloud_data = plane.brokers[mirror.CLOUD].data_dir
        site_data = plane.brokers[SITE].data_dir
        up = {t.name: _log_bytes(cloud_data, t.name, site_parts if t.site_partitioned
                                 else [0]) for t in mirror.UP}
        down = {t.name: _log_bytes(site_data, t.name, [0]) for t in mirror.DOWN}
        delta_raw = _dir_bytes(delta / "transitions_raw", ".parquet")
        manifests = []
        from topics.consumer import TopicReader
        from topics.validation import Accepted

        with TopicReader(cloud, catalog.WEIGHTS_MANIFESTS, start="beginning") as r:
            for item in r.read():
                if isinstance(item, Accepted) and isinstance(item.event,
                                                             ev.WeightsManifestV1):
                    manifests.append(item.event.total_bytes)
        steps = sum(ends(mirror.CLOUD, catalog.TRANSITIONS_RAW.name, site_parts).values())
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        plane.stop()
    policy_bytes = manifests[-1] if manifests else 0
    weights_ratio = down[catalog.WEIGHTS.name] / max(1, policy_bytes * len(manifests))
    raw_ratio = up[catalog.TRANSITIONS_RAW.name] / max(1, delta_raw)
    elapsed = time.monotonic() - t_start
    rows = ["| direction | topic | bytes over the WAN |", "|---|---|---:|"]
    rows += [f"| up (site → cloud) | {t} | {n:,} |" for t, n in up.items()]
    rows += [f"| down (cloud → site) | {t} | {n:,} |" for t, n in down.items()]
    rows += [f"| up, all bytes on the link (TLS, fetches, MM2 bookkeeping) | — | "
             f"{up_wire:,} |",
             f"| down, all bytes on the link | — | {down_wire:,} |"]
    body = "\n".join([
        "## WAN bytes per topic and direction (`userctl bench wan`)",
        "",
        *report.machine_lines(),
        f"- one site of {args.robots} simulated reachers at 20 Hz for {args.seconds:.0f} s; "
        f"{len(manifests)} weights versions of an MLP {hidden} policy "
        f"({policy_bytes:,} bytes each) published in the cloud; MirrorMaker 2 "
        f"(Kafka {plane.brokers[mirror.CLOUD].version}, zstd) over mutual TLS; "
        f"run time {elapsed:.0f} s",
        f"- {steps:,} raw-step records mirrored up; their Delta rows: {delta_raw:,} bytes "
        "of Parquet",
        "",
        *rows,
        "",
        f"- weights: {weights_ratio:.2f}× the policy size per version for the site "
        f"(target ≈ 1×; {args.robots} robots fetch from the edge broker)",
        f"- raw steps: {raw_ratio:.2f}× their Delta bytes (target ≤ 1.05×)",
    ])
    print(body)
    if not args.no_write:
        report.write_section("wan", body, args.out)
        print(f"\nwritten to {args.out}")
    return 0
