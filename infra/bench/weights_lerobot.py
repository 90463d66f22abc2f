"""Weights to agents, USER's Kafka fan-out beside LeRobot's HIL-SERL parameter push, in one run.

For each policy size and agent count: USER's cell is ``bench weights``' (publish ->
verified policy swapped in on every subscriber, over the broker ``USER_KAFKA_BOOTSTRAP``
names); LeRobot's is its own transport code (``lerobot.transport`` + ``LearnerService``
from the LeRobot wheel, one learner service per actor, ``torch.save`` bytes pushed over
gRPC in 2 MB chunks, ``torch.load`` + ``load_state_dict`` on the actor) timed by
:mod:`infra.bench._lerobot_push` in a child interpreter, with an actor of exactly the
``mlp_gaussian`` tensors USER publishes.

LeRobot 0.6.1 declares Python >= 3.12 and pulls torch from the CUDA index; this machine
reaches PyPI but not download.pytorch.org, and the 3.12 interpreter here has no torch, so
the child runs LeRobot's unpacked wheel (``--lerobot-site``; ``pip download lerobot==0.6.1
--no-deps`` + unzip, and ``pip install --target`` of ``draccus`` for ``--lerobot-deps``;
:func:`ensure_lerobot` does both on first use, into ``~/.cache/user-bench``) on this venv's
Python 3.11 + torch + grpcio.  The push path's modules import and run unchanged on 3.11.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from infra.bench import report, weights
from learners import weights_sync
from topics import admin, catalog
from topics.settings import KafkaSettings

HELP = "weights to N agents: USER's Kafka fan-out vs LeRobot's gRPC parameter push"
CACHE = Path.home() / ".cache" / "user-bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes-mb", default="1,10", help="policy sizes in MB")
    p.add_argument("--agents", default="1,16", help="agent counts")
    p.add_argument("--repeats", type=int, default=5, help="pushes per cell")
    p.add_argument("--lerobot-site", type=Path, default=CACHE / "lerobot-site",
                   help="LeRobot 0.6.1's unpacked wheel")
    p.add_argument("--lerobot-deps", type=Path, default=CACHE / "lerobot-deps",
                   help="its light dependencies (draccus) installed with pip --target")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true")


def lerobot_cell(args: argparse.Namespace, width: int, agents: int) -> tuple[list[float], int]:
    env = {**os.environ, "PYTHONPATH": f"{args.lerobot_site}{os.pathsep}{args.lerobot_deps}"}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_lerobot_push.py")),
         str(args.lerobot_site), str(width), str(agents), str(args.repeats)],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    line = next((x for x in reversed(out.stdout.strip().splitlines())
                 if x.startswith("{")), None)
    if line is None:  # no figures (a non-zero exit after printing them is teardown noise)
        raise RuntimeError(f"LeRobot push failed (rc {out.returncode}): "
                           f"{out.stderr[-3000:]}")
    got = json.loads(line)
    return list(got["samples_s"]), int(got["bytes"])


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


LEROBOT = "lerobot==0.6.1"
#: LeRobot's light dependencies its push path imports, with theirs (the rest is not loaded).
LEROBOT_DEPS = ("draccus==0.11.6",)


def ensure_lerobot(site: Path, deps: Path) -> None:
    """Put LeRobot's unpacked wheel at ``site`` and its light dependencies at ``deps`` unless
    they are there: ``pip download --no-deps`` + unzip, ``pip install --target``.

    Raises:
        subprocess.CalledProcessError: pip could not fetch or install them (no PyPI?).
    """
    import tempfile
    import zipfile

    if not (site / "lerobot" / "transport" / "utils.py").exists():
        print(f"fetching {LEROBOT} (wheel only) into {site} …", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            # The wheel declares Requires-Python >= 3.12: pip picks it for this 3.11 only
            # when told the target version (it is pure Python; see the module doc).
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "--python-version", "3.12", "--dest", tmp,
                            LEROBOT], check=True)
            wheel = next(Path(tmp).glob("lerobot-*.whl"))
            staging = site.with_name(site.name + ".part")
            with zipfile.ZipFile(wheel) as z:
                z.extractall(staging)
            staging.replace(site)
    if not deps.exists():
        print(f"installing {', '.join(LEROBOT_DEPS)} into {deps} …", flush=True)
        staging = deps.with_name(deps.name + ".part")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--target", str(staging), *LEROBOT_DEPS], check=True)
        staging.replace(deps)


def run(args: argparse.Namespace) -> int:
    try:
        ensure_lerobot(args.lerobot_site, args.lerobot_deps)
    except (subprocess.CalledProcessError, StopIteration) as e:
        print(f"could not fetch LeRobot's wheel into {args.lerobot_site}: {e} "
              f"(see this module's docstring for the manual steps)")
        return 1
    kafka = KafkaSettings()
    admin.ensure_topics(kafka, [catalog.WEIGHTS, catalog.WEIGHTS_MANIFESTS])
    for name in ("agents.weights", "learners.weights_sync"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load = os.getloadavg()
    rows = []
    tails: list[tuple[str, int, int]] = []
    began = time.monotonic()
    for size_mb in (int(s) for s in args.sizes_mb.split(",") if s):
        snapshot = weights.policy_snapshot(size_mb)
        blob_bytes = len(weights_sync.serialise(snapshot))
        width = weights.hidden_width(size_mb * weights.MB)
        for n in (int(s) for s in args.agents.split(",") if s):
            print(f"{size_mb} MB -> {n} agents …", flush=True)
            cell = weights.measure_cell(kafka, snapshot, blob_bytes, size_mb, n, args.repeats,
                                        1 << 20, 120.0)
            theirs, their_bytes = lerobot_cell(args, width, n)
            ours_p50 = statistics.median(cell.applied_s)
            their_p50 = statistics.median(theirs)
            fetch, verify, build = (
                (statistics.median(p[i] for p in cell.phases) * 1e3 for i in range(3))
                if cell.phases else (0.0, 0.0, 0.0))
            durable = statistics.median(cell.durable_s) * 1e3 if cell.durable_s else 0.0
            tails.append((f"{size_mb} MB -> {n}", cell.from_tail, cell.fetched))
            rows.append(
                f"| {size_mb} MB | {n} | {ours_p50 * 1e3:,.1f} | "
                f"{_p(cell.applied_s, 0.99) * 1e3:,.1f} | {durable:,.1f} / {fetch:,.1f} / "
                f"{verify:,.1f} / {build:,.1f} | "
                f"{their_p50 * 1e3:,.1f} | {_p(theirs, 0.99) * 1e3:,.1f} | "
                f"{ours_p50 / their_p50:.2f}× | {blob_bytes / 1e6:.1f} / "
                f"{their_bytes / 1e6:.1f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "## Weights to agents: USER's Kafka fan-out vs LeRobot's gRPC push "
        "(`userctl bench weights-lerobot`)", "",
        *report.machine_lines(),
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in load)} (1/5/15 min); "
        f"run time {time.monotonic() - began:.0f} s",
        "- LeRobot 0.6.1's own push path (wheel from PyPI, run on this venv's Python 3.11: "
        "its 3.12 interpreter here has no torch and download.pytorch.org is unreachable); "
        "one LearnerService per actor; agents/actors are threads of one process each side",
        "",
        "| policy | agents | USER applied p50 ms | USER p99 ms | USER durable / fetch / "
        "verify / build p50 ms | "
        "LeRobot loaded p50 ms | LeRobot p99 ms | USER ÷ LeRobot (p50) | MB (USER / "
        "LeRobot) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, "",
        "USER's sample: publish (serialise, hash the chunks on a thread pool and produce "
        "each as its digest is ready, wait for every "
        "acknowledgement, manifest) -> each agent's tail reader takes the chunks as they are "
        "written and hashes each byte once; on the manifest the agent checks every chunk's "
        "digest, size and offset against it, joins them and swaps a built policy in (numpy "
        "for mlp_gaussian, views into the blob). *fetch* is the wait for the tail after the "
        f"manifest (chunks from the tail: {sum(r[1] for r in tails)}, fetched by offset: "
        f"{sum(r[2] for r in tails)}), *verify* the checks and the join. "
        "LeRobot's: torch.save -> queue -> gRPC stream -> "
        "torch.load -> load_state_dict; no hashes, no durability, no fan-out beyond one "
        "stream per service.",
    ])
    print(text)
    if not args.no_write:
        report.write_section("weights-lerobot", text, args.out)
    return 0
