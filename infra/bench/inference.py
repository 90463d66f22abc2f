"""Remote inference over the bus: round trip, throughput and held control periods.

One process, the real broker: an inference replica (:class:`agents.inference.
InferenceService`, its own consumer group) serves the ``vla_transformer`` policy; K robots
split over the two default sites each run a :class:`agents.remote.RemotePolicy` at
``--hz`` through one :class:`agents.remote_kafka.RemoteLink` per site, exactly as agents
do, in one paced loop.  The robots' observations are synthetic (random proprio of the
reacher's size; ``--cameras N`` adds N 64x64 camera images per request): what is measured
is the inference path, not MuJoCo.

Per robot count: request -> action round trip p50/p99 (robot clock), replies/s, the batch
sizes the replica ran, and the fraction of control periods after each robot's first chunk
that had no action due (the robot held) — the target is 0 at 16 robots, 20 Hz, chunks of 10.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from agents import policies as agent_policies
from agents.inference import InferenceService
from agents.remote import RemotePolicy
from agents.remote_kafka import RemoteLink
from infra.bench import report
from learners import policies
from topics import admin
from topics.settings import KafkaSettings

HELP = "remote inference: round trip p50/p99, throughput, held periods for 1-64 robots"
log = logging.getLogger(__name__)

MODELS = {
    "small": {"d_model": 128, "layers": 2, "heads": 4, "ff": 512},
    "large": {},  # the policy's default: about 22 M parameters
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robots", default="1,4,16,64", help="robot counts (comma-separated)")
    p.add_argument("--hz", type=float, default=20.0, help="control rate")
    p.add_argument("--chunk", type=int, default=10, help="actions per reply")
    p.add_argument("--seconds", type=float, default=15.0, help="measured time per count")
    p.add_argument("--model", choices=tuple(MODELS), default="small",
                   help="small (CPU-friendly) or large (the ~22 M default)")
    p.add_argument("--cameras", type=int, default=0, help="camera images per request")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads of the replica on CPU (1: on a shared "
                        "machine more threads stall each other — measured in BENCHMARKS.md)")
    p.add_argument("--forward-only", action="store_true",
                   help="no broker: time the replica's answer to a batch of N requests "
                        "(decode, forward pass, replies) for each N of --robots; its own "
                        "section, inference-forward (for a GPU machine without Kafka)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


def _one(kafka: KafkaSettings, policy: policies.VlaTransformerPolicy, robots: int,
         args: argparse.Namespace) -> dict[str, float]:
    load_before = os.getloadavg()[0]
    experiment = f"bench-inference-{uuid.uuid4().hex[:8]}"
    service = InferenceService(kafka, experiment, lambda: (policy, 1), replica="0",
                               max_batch=max(64, robots), group_suffix=f"-{robots}")
    server = threading.Thread(target=service.run, daemon=True, name="inference")
    server.start()
    sites = list(kafka.sites.sites)
    links = {s: RemoteLink(kafka, s) for s in sites}
    remotes = []
    for i in range(robots):
        site = sites[i % len(sites)]
        rp = RemotePolicy(robot_id=f"bench-{i}", site=site, experiment_id=lambda: experiment,
                          send=links[site].send, control_hz=args.hz,
                          instruction="reach the target", action_dim=2)
        links[site].policies[rp.robot_id] = rp
        remotes.append(rp)
    for link in links.values():
        link.start()
    for link in links.values():
        link.ready.wait(30.0)
    service.ready.wait(30.0)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (robots, policy.spec.observation_dim)).astype(np.float32)
    cams = {f"cam{c}": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            for c in range(args.cameras)}
    started_at: list[int | None] = [None] * robots
    held_after = [0] * robots
    periods_after = [0] * robots
    period = 1.0 / args.hz
    warmup_end = time.monotonic() + 10.0  # first chunks, group join, model warm-up
    measure_start: float | None = None
    t_next = time.monotonic()
    replies_at_start = 0
    while True:
        now = time.monotonic()
        if measure_start is None and (now >= warmup_end or all(s is not None
                                                                for s in started_at)):
            measure_start = now
            replies_at_start = sum(r.stats.replies for r in remotes)
            for r in remotes:
                r.stats.round_trips_s.clear()
                r.stats.batch_sizes.clear()
        if measure_start is not None and now - measure_start >= args.seconds:
            break
        for i, rp in enumerate(remotes):
            try:
                rp(obs[i], cams or None)
                if started_at[i] is None:
                    started_at[i] = 1
            except agent_policies.NoActionDue:
                if started_at[i] is not None and measure_start is not None:
                    held_after[i] += 1
            if started_at[i] is not None and measure_start is not None:
                periods_after[i] += 1
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    elapsed = time.monotonic() - (measure_start or time.monotonic())
    service.stop()
    for link in links.values():
        link.close()
    server.join(10.0)
    rtts = np.array([x for r in remotes for x in r.stats.round_trips_s]) * 1e3
    batches = np.array([x for r in remotes for x in r.stats.batch_sizes])
    replies = sum(r.stats.replies for r in remotes) - replies_at_start
    return {
        "robots": robots,
        "p50_ms": float(np.percentile(rtts, 50)) if rtts.size else float("nan"),
        "p99_ms": float(np.percentile(rtts, 99)) if rtts.size else float("nan"),
        "replies_s": replies / max(elapsed, 1e-9),
        "actions_s": replies * args.chunk / max(elapsed, 1e-9),
        "batch_mean": float(batches.mean()) if batches.size else 0.0,
        "batch_max": int(batches.max()) if batches.size else 0,
        "held": sum(held_after) / max(sum(periods_after), 1),
        "never_served": sum(s is None for s in started_at),
        "late": sum(r.stats.late_dropped for r in remotes),
        # Where the replica's time went, per batch it ran (warm-up included).
        "decode_ms": 1e3 * service.stats.decode_s / max(service.stats.batches, 1),
        "forward_ms": 1e3 * service.stats.forward_s / max(service.stats.batches, 1),
        "encode_ms": 1e3 * service.stats.encode_s / max(service.stats.batches, 1),
        "lead": float(np.mean([r.lead_periods for r in remotes])),
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def _forward_only(policy: policies.VlaTransformerPolicy, device: str, params: int,
                  args: argparse.Namespace) -> int:
    import base64

    from agents.inference import InferenceCore
    from schemas import events as ev

    core = InferenceCore(lambda: (policy, 1))
    rng = np.random.default_rng(0)

    def sync() -> None:  # a GPU batch is timed to its end, not to its launch
        if device == "cuda":
            torch.cuda.synchronize()

    rows = []
    for n in (int(x) for x in args.robots.split(",")):
        cams = {f"cam{c}": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                for c in range(args.cameras)}
        requests = [ev.InferenceRequestV1(
            site="lab-a", robot_id=f"r{i}", experiment_id="bench", request_seq=0, step=0,
            sent_ns=0, instruction="reach the target", action_dim=2,
            observation=tuple(float(x) for x in rng.uniform(-1, 1, 11)),
            images_b64={k: base64.b64encode(v.tobytes()).decode() for k, v in cams.items()},
            image_shapes={k: (64, 64, 3) for k in cams}) for i in range(n)]
        for _ in range(3):
            core.answer(requests)
        times: list[float] = []
        deadline = time.monotonic() + args.seconds
        while len(times) < 5 or (time.monotonic() < deadline and len(times) < 200):
            sync()
            t0 = time.perf_counter()
            core.answer(requests)
            sync()
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1e3
        rows.append((n, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                     n / float(np.percentile(ms, 50)) * 1e3))
        print(f"{n:4d} requests: answer p50 {rows[-1][1]:.2f} ms, p99 {rows[-1][2]:.2f} ms, "
              f"{rows[-1][3]:.0f} requests/s", flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else report.cpu_model()
    lines = ["## Remote inference: the replica's answer alone (`userctl bench inference "
             "--forward-only`)", ""]
    lines += report.machine_lines()
    lines += [
        f"- model: `vla_transformer` {args.model}, {params / 1e6:.1f} M parameters, on "
        f"{device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU "
        f"thread(s); {args.cameras} camera(s) of 64x64; chunks of {args.chunk}",
        "- one batch of N requests through `InferenceCore.answer`: decode (images from "
        "base64), one forward pass, replies built; no broker",
        "",
        "| requests per batch | answer p50 | p99 | requests/s at p50 |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {p50:.2f} ms | {p99:.2f} ms | {rps:.0f} |" for n, p50, p99, rps in rows]
    text = "\n".join(lines)
    if not args.no_write:
        report.write_section(f"inference-forward-{device}", text, args.out)
    print(text)
    return 0


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = policies.PolicySpec(observation_dim=11, action_dim=2, action_low=(-1.0, -1.0),
                               action_high=(1.0, 1.0))
    options = {**MODELS[args.model], "chunk": args.chunk, "seed": 0,
               "cameras": [f"cam{c}" for c in range(args.cameras)]}
    policy = policies.build("vla_transformer", spec, options)
    assert isinstance(policy, policies.VlaTransformerPolicy)
    policy.to(device)
    params = policy.parameter_count()
    # Warm up (encoder load, first forward pass) before anything is timed.
    policy.act_chunk(np.zeros((1, 11), np.float32), ["reach the target"],
                     {f"cam{c}": np.zeros((1, 64, 64, 3), np.uint8)
                      for c in range(args.cameras)} or None)
    print(f"vla_transformer ({args.model}): {params / 1e6:.1f} M parameters on {device}; "
          f"{args.hz:g} Hz, chunks of {args.chunk}, {args.cameras} camera(s)")
    if args.forward_only:
        return _forward_only(policy, device, params, args)
    kafka = KafkaSettings()
    admin.ensure_topics(kafka)
    results = []
    for n in (int(x) for x in args.robots.split(",")):
        r = _one(kafka, policy, n, args)
        results.append(r)
        print(f"{n:3d} robots: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
              f"{r['replies_s']:.0f} replies/s, batch mean {r['batch_mean']:.1f} "
              f"max {r['batch_max']}, held {r['held'] * 100:.2f} % of periods, "
              f"late replies dropped {r['late']}; replica per batch: decode "
              f"{r['decode_ms']:.2f} ms, forward {r['forward_ms']:.2f} ms, encode "
              f"{r['encode_ms']:.2f} ms; asks {r['lead']:.1f} periods ahead")
    lines = ["## Remote inference (`userctl bench inference`)", ""]
    lines += report.machine_lines()
    lines += [
        f"- model: `vla_transformer` {args.model}, {params / 1e6:.1f} M parameters "
        f"(+ the frozen 22.7 M-parameter sentence encoder, run once per instruction), on "
        f"{device}; {args.cameras} camera(s); proprio 11-d, actions 2-d",
        f"- control: {args.hz:g} Hz, chunks of {args.chunk}; next chunk asked for a measured "
        "round trip (p99 of its last 50) + 2 periods before the current one runs out",
        f"- replica: torch {torch.get_num_threads()} intra-op thread(s); a batch is what "
        "queued while the last one ran (no batching window)",
        f"- each count measured for {args.seconds:g} s after every robot's first chunk; "
        "broker on this machine, replica and robots in one process; the load average "
        "(1 min, mean of its start and end) is per count: other work on the machine counts",
        "",
        "| robots | round trip p50 | p99 | replies/s | actions/s | batch mean / max | "
        "periods without an action | late replies dropped | replica ms per batch: "
        "decode / forward / encode | asked ahead (periods) | load average |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['robots']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
                     f"{r['replies_s']:.0f} | {r['actions_s']:.0f} | "
                     f"{r['batch_mean']:.1f} / {r['batch_max']} | {r['held'] * 100:.2f} % | "
                     f"{r['late']} | {r['decode_ms']:.2f} / {r['forward_ms']:.2f} / "
                     f"{r['encode_ms']:.2f} | {r['lead']:.1f} | {r['load']:.1f} |")
    text = "\n".join(lines)
    if not args.no_write:
        report.write_section("inference", text, args.out)
    print(text)
    return 0
