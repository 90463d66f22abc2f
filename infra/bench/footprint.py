"""Role footprint: resident memory of each role process at start, beside the full command line.

Each role starts as `userctl <role> …` does — the command-line parser built for its argv,
then the modules its handler runs with — in a fresh interpreter, and reports its resident
set size (``VmRSS``) and whether torch was imported.  The baseline, measured in the same
run, is the parser with every command registered (what each role imported before roles
were started light: the learner's and replay's commands pull in torch).  Start-up RSS is
the floor of a role's RSS: buffers (a sink's rows, faust's queues) come on top while it runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from infra.bench import report

HELP = "resident memory of the controller, sink, reward job and an agent at start (no torch)"

#: An agent's 64 robots stepping under a learned mlp_gaussian policy, built by
#: ``policies.LOAD`` (the numpy twin agents use, or the torch module they used before).
_AGENT_ARGV = ["agent", "--robot-type", "reacher2d", "--site", "lab", "--count", "64"]
_AGENT_RUNNING = """import numpy as np
from agents import agent, registry, weights, weights_kafka, worker
from learners import policies
robots = [registry.make_robot("reacher2d", seed=i) for i in range(64)]
spec = policies.PolicySpec.from_robot_spec(robots[0].spec)
rng = np.random.default_rng(0)
sizes = [spec.observation_dim, 256, 256]
w = {}
for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
    w[f"trunk.{2 * i}.weight"] = rng.standard_normal((n_out, n_in)).astype(np.float32) * 0.1
    w[f"trunk.{2 * i}.bias"] = np.zeros(n_out, np.float32)
for head in ("mean", "log_std"):
    w[f"{head}.weight"] = rng.standard_normal((spec.action_dim, 256)).astype(np.float32) * 0.1
    w[f"{head}.bias"] = np.zeros(spec.action_dim, np.float32)
blob = policies.to_safetensors(w, {"policy_kind": "mlp_gaussian",
                                   "policy_options": '{"hidden_sizes": [256, 256]}'})
policy = policies.LOAD(spec, blob)
for robot in robots:
    step = robot.reset()
    for _ in range(20):
        step = robot.step(policy.act(step.observation[None].astype(np.float32))[0])
"""

#: Role -> (its `userctl` argv, what its handler imports once it runs).
ROLES: dict[str, tuple[list[str], str]] = {
    "controller": (["controller"], "from pipeline import controller"),
    "sink": (["sink"], "from pipeline import sink"),
    "reward job": (["rewards", "run", "reach_dense@1"],
                   "from pipeline import reward_job, rewards; rewards.lookup('reach_dense@1')"),
    "agent, 64 robots running a learned policy": (
        _AGENT_ARGV, _AGENT_RUNNING.replace("LOAD", "load_for_inference")),
    "agent, the same with the torch policy (before)": (
        _AGENT_ARGV, _AGENT_RUNNING.replace("LOAD", "load")),
    "every command (baseline)": ([], "pass"),
}

_PROBE = """
import json, sys
from infra import cli
argv = json.loads(sys.argv[1])
cli.build_parser(argv)
{started}
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(json.dumps({{"rss_kb": rss, "torch": "torch" in sys.modules}}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=3, help="fresh interpreters per role "
                   "(median reported)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


def measure(argv: list[str], started: str) -> tuple[float, bool]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(started=started),
                          json.dumps(argv)], capture_output=True, text=True, check=True,
                         timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["rss_kb"] / 1024, bool(got["torch"])


def run(args: argparse.Namespace) -> int:
    rows = []
    for role, (argv, started) in ROLES.items():
        samples = [measure(argv, started) for _ in range(args.repeats)]
        rss = sorted(s[0] for s in samples)[len(samples) // 2]
        command = "`userctl " + (" ".join(argv) if argv else "<any>") + "`"
        rows.append(f"| {role} | {command} | {rss:,.0f} | "
                    f"{'yes' if any(s[1] for s in samples) else 'no'} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "## Footprint: role RSS at start (`userctl bench footprint`)", "",
        *report.machine_lines(), "",
        "| role | command | RSS at start (MB, median) | imports torch |",
        "|---|---|---:|---|",
        *rows, "",
        "Each role in a fresh interpreter: the `userctl` parser for its argv, then the "
        "modules its handler runs with. The baseline row is the parser with every command "
        "registered, which every role imported before `infra.cli.ROLE_COMMANDS` (the "
        "learner's and replay's commands import torch). Buffers a running role fills come "
        "on top; `tests/unit/test_footprint.py` keeps torch out of these roles. The agent "
        "row builds 64 simulated reacher2d robots, applies a learned mlp_gaussian (256×2) "
        "the way agents do (`learners.policies.load_for_inference`: numpy, no torch) and "
        "runs 20 steps on each; a running agent adds its spool and Kafka client buffers "
        "(the Fleet section's RSS column is a running agent's). The row after it is the same "
        "agent running the learner's torch network (`learners.policies.load`), what "
        "agents did before.",
    ])
    if not args.no_write:
        report.write_section("footprint", text, args.out)
    print(text)
    return 0
