"""GPU-side cost of weight snapshots: training throughput with and without them.

Trains the ``vla_transformer`` policy (default size, ~22 M parameters; ``--small`` for a
quick look) on synthetic multi-task batches on the GPU, and takes a weights snapshot every
``--every`` updates in three ways, measuring training updates/s each time:

* **none** — no snapshots (the baseline);
* **blocking** — ``tensor.cpu()`` per parameter on the training stream (what a naive
  learner does: the step waits for every copy);
* **side stream** — :class:`learners.gpu_snapshot.SideStreamSnapshot`: device-to-device
  clones on a side stream fenced before the next optimiser step, then pinned-memory
  copies in slices, capped at ``--bandwidth-gb-s``.

Needs only the repository and its venv (no broker).  On a machine without CUDA it says
"no CUDA" and exits 0 without writing anything.  Sized to finish well within 10 minutes
(defaults: 3 modes x ``--seconds`` 60 + warm-up).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from infra.bench import report
from learners import policies
from learners.gpu_snapshot import SideStreamSnapshot
from learners.policies import _text

HELP = "GPU: training throughput cost of weight snapshots (blocking vs side stream)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="measured time per mode")
    p.add_argument("--every", type=int, default=20, help="snapshot every N updates")
    p.add_argument("--batch", type=int, default=64, help="training batch size")
    p.add_argument("--bandwidth-gb-s", type=float, default=2.0,
                   help="side-stream copy budget (GB/s)")
    p.add_argument("--small", action="store_true", help="a small policy (quick look)")
    p.add_argument("--cpu", action="store_true",
                   help="run the same loop on CPU anyway (a smoke test of the code path)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


def _mode(policy: policies.VlaTransformerPolicy, mode: str, args: argparse.Namespace,
          batch: dict[str, object]) -> dict[str, float]:
    opt = torch.optim.AdamW(policy.net.parameters(), lr=1e-4)
    cuda = policy.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    updates = snapshots = 0
    snap: SideStreamSnapshot | None = None
    snap_s: list[float] = []
    sync()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        loss = policy.loss(batch["obs"], batch["ins"], batch["act"],  # type: ignore[arg-type]
                           images=batch["img"])  # type: ignore[arg-type]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if snap is not None:
            snap.fence()
        opt.step()
        updates += 1
        if mode == "side stream" and snap is not None:
            snap.poll()
            if snap.done:
                snap_s.append(time.perf_counter() - snap.started)
                snap = None
        if updates % args.every == 0:
            if mode == "blocking":
                s0 = time.perf_counter()
                _ = {k: v.detach().cpu().numpy() for k, v in policy.net.state_dict().items()}
                snap_s.append(time.perf_counter() - s0)
                snapshots += 1
            elif mode == "side stream" and snap is None:
                snap = SideStreamSnapshot(policy.net,
                                          max_bytes_per_s=args.bandwidth_gb_s * 1e9,
                                          clock=time.perf_counter)
                snapshots += 1
        if updates % 50 == 0:
            sync()
    sync()
    if snap is not None:
        snap.wait()
    elapsed = time.perf_counter() - t0
    return {"updates_s": updates / elapsed, "snapshots": snapshots,
            "snapshot_ms": float(np.mean(snap_s) * 1e3) if snap_s else 0.0}


def run(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available() and not args.cpu:
        print("no CUDA: the GPU snapshot path was not measured (run on a machine with a GPU; "
              "`--cpu` runs the loop on CPU as a smoke test)")
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    spec = policies.PolicySpec(observation_dim=24, action_dim=7, action_low=(-1.0,) * 7,
                               action_high=(1.0,) * 7)
    options: dict[str, object] = {"cameras": ["wrist"], "seed": 0}
    if args.small:
        options.update(d_model=128, layers=2, heads=4, ff=512)
    policy = policies.build("vla_transformer", spec, options)  # type: ignore[arg-type]
    assert isinstance(policy, policies.VlaTransformerPolicy)
    policy.to(device)
    rng = np.random.default_rng(0)
    instructions = ["reach the red target", "push the cube left", "pick up the block"]
    _text.embed(instructions)  # the encoder loads once, before timing
    batch = {
        "obs": rng.uniform(-1, 1, (args.batch, 24)).astype(np.float32),
        "ins": [instructions[i % 3] for i in range(args.batch)],
        "act": rng.uniform(-0.9, 0.9, (args.batch, policy.chunk, 7)).astype(np.float32),
        "img": {"wrist": rng.integers(0, 255, (args.batch, 64, 64, 3), dtype=np.uint8)},
    }
    params = policy.parameter_count()
    name = torch.cuda.get_device_name(0) if device == "cuda" else report.cpu_model()
    print(f"vla_transformer {params / 1e6:.1f} M parameters "
          f"({params * 4 / 2**20:.0f} MiB fp32) on {name}")
    warm = argparse.Namespace(**{**vars(args), "seconds": min(10.0, args.seconds)})
    _mode(policy, "none", warm, batch)
    results = {}
    for mode in ("none", "blocking", "side stream"):
        results[mode] = _mode(policy, mode, args, batch)
        r = results[mode]
        print(f"{mode:12s}: {r['updates_s']:.2f} updates/s, {r['snapshots']} snapshots, "
              f"{r['snapshot_ms']:.1f} ms per snapshot")
    base = results["none"]["updates_s"]
    lines = ["## Weight snapshots on the GPU (`userctl bench sync-gpu`)", ""]
    lines += report.machine_lines()
    lines += [
        f"- device: {name}; policy `vla_transformer` {params / 1e6:.1f} M parameters, batch "
        f"{args.batch}, one 64x64 camera; a snapshot every {args.every} updates; side-stream "
        f"budget {args.bandwidth_gb_s:g} GB/s",
        "",
        "| mode | updates/s | cost vs none | snapshots | time per snapshot |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        cost = (1 - r["updates_s"] / base) * 100 if base else 0.0
        lines.append(f"| {mode} | {r['updates_s']:.2f} | {cost:+.1f} % | {r['snapshots']} | "
                     f"{r['snapshot_ms']:.1f} ms |")
    text = "\n".join(lines)
    print(text)
    if device == "cuda" and not args.no_write:
        report.write_section("sync-gpu", text, args.out)
    return 0
