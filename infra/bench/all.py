"""Run every benchmark in turn, bounded to about 40 minutes on a 2-core machine.

Each benchmark runs with its own defaults except where the bounds below shorten it (a
learning run's wall clock, a measuring window, the cheaper parts of a long benchmark; the
summary table shows each run's arguments); --full runs every default (hours).  async-sync
runs twice, as is and with --paper.  Every benchmark writes its own section of --out
(default benchmarks/bench-all.md, so the curated BENCHMARKS.md keeps its readings; give
--out BENCHMARKS.md to rewrite that), and this command adds an "all" section: each run's
arguments, outcome, wall time and headline figure.  The demo's time to the first learner
update and each role's peak RSS are pipeline-cost's; each role's RSS at start is
footprint's.  Names for --only/--skip: `userctl bench --help`.

Each benchmark runs in a fresh interpreter (python -m infra.cli bench NAME ...): figures of
the whole process (peak RSS, threads, imported modules) would otherwise carry what the
benchmarks before it left (the pixel buffer's peak RSS read 5.7 GB after eleven others in
one process, 1.25 GB alone).  Every run's arguments are checked before anything runs.

Needs a broker: the local one is started if none answers (and stopped again at the end),
unless USER_KAFKA_BOOTSTRAP names a cluster.  A benchmark that fails, or that exits without
writing its section (sync-gpu without CUDA), is reported as such and the rest still run; the
exit code says whether all ran.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.broker import Broker

HELP = "run every benchmark, bounded to about 40 minutes (a section each and a summary)"

#: Where ``--out`` goes by default: beside, not over, the curated BENCHMARKS.md.
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench-all.md"

#: Arguments ``bench all`` gives a benchmark instead of its defaults: time bounds, and the
#: parts of a benchmark that fit (pixel reach and the long manipulator runs are hours here).
ARGS: dict[str, list[str]] = {
    "async-sync": ["--max-wall-s", "180"],
    "pipeline-cost": ["--max-wall-s", "300"],
    "fleet": ["--seconds", "4"],
    "manipulators": ["--runs", "reach-panda", "--max-wall-s", "360"],
    "pixels": ["--parts", "updates,buffer", "--seconds", "20"],
    "imitation": ["--time-limit", "360"],
    "sites": ["--max-wall-s", "480", "--cut-after-steps", "4000"],
    "wan": ["--seconds", "30"],
    "inference": ["--seconds", "8"],
}
#: Extra runs of a benchmark with other arguments (own BENCHMARKS.md section each).
EXTRA: list[tuple[str, list[str]]] = [
    ("async-sync", ["--paper", "--skip-probe", "--robots", "2", "--max-wall-s", "150"]),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip", default="",
                   help="comma-separated benchmarks to leave out (names: userctl bench --help)")
    p.add_argument("--only", default=None,
                   help="comma-separated benchmarks to run (default: all)")
    p.add_argument("--full", action="store_true",
                   help="every benchmark with its own defaults (no time bounds; hours)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="markdown file every benchmark writes its section into (default "
                        "benchmarks/bench-all.md; BENCHMARKS.md rewrites the curated one)")


def plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(benchmark, arguments) in the order they run (``--out`` is added when run)."""
    from infra.bench import BENCHMARKS

    skip = {s for s in args.skip.split(",") if s}
    only = {s for s in (args.only or "").split(",") if s}
    if args.only is not None and not only:
        raise SystemExit("bench all: --only names no benchmark (leave it out to run all)")
    unknown = (skip | only) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"bench all: unknown benchmark(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(n for n in BENCHMARKS if n != 'all')}")
    runs = [(name, [] if args.full else list(ARGS.get(name, []))) for name in BENCHMARKS]
    runs += [] if args.full else EXTRA
    return [(name, argv) for name, argv in runs
            if name != "all" and name not in skip and (not only or name in only)]


def headline(text: str, section: str) -> str:
    """The first bold phrase with a figure in it of ``section`` in ``text`` (its result), or
    ''."""
    from infra.bench.report import section_of

    body = section_of(text, section) or ""
    found = next((m for m in re.findall(r"\*\*(.+?)\*\*", body) if re.search(r"\d", m)), "")
    return found.strip()


def _ensure_broker() -> Broker | None:
    """Start the local broker unless one answers; returns it if this call started it."""
    from infra.broker import Broker, BrokerSettings, answers_metadata

    external = os.environ.get("USER_KAFKA_BOOTSTRAP")
    broker = Broker(BrokerSettings())
    if external and external != broker.settings.bootstrap:
        return None
    if broker.pid() is not None and answers_metadata(broker.settings.bootstrap):
        return None
    print("bench all: starting the local broker …", flush=True)
    result = broker.start(say=lambda m: print(m, flush=True))
    return None if result.already_running else broker


def run(args: argparse.Namespace) -> int:
    from infra.bench import BENCHMARKS, report

    runs = plan(args)
    out = Path(os.path.relpath(args.out)) if args.out.is_absolute() and \
        args.out.resolve().is_relative_to(Path.cwd()) else args.out  # no machine path in it
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, argv in runs:  # a typo in a bound shows now, not an hour in
        parser = argparse.ArgumentParser(prog=f"userctl bench {name}")
        importlib.import_module(BENCHMARKS[name]).add_arguments(parser)
        parser.parse_args([*argv, "--out", str(out)])
    started_broker = _ensure_broker()
    load = os.getloadavg()
    rows: list[str] = []
    failed: list[str] = []
    began = time.monotonic()
    try:
        for name, argv in runs:
            label = shlex.join([name, *argv])
            print(f"== bench {label}  ({time.monotonic() - began:.0f} s in)", flush=True)
            started = time.monotonic()
            section = "async-sync-paper" if "--paper" in argv else name
            before = report.section_of(out.read_text() if out.exists() else "", section)
            # One broken benchmark must not hide the others' figures: its exit code is noted.
            rc = subprocess.run([sys.executable, "-m", "infra.cli", "bench", name, *argv,
                                 "--out", str(out)], check=False).returncode
            took = time.monotonic() - started
            text = out.read_text() if out.exists() else ""
            wrote = report.section_of(text, section) not in (None, before)
            outcome = (f"FAILED ({rc})" if rc else "ok" if wrote
                       else "ran, wrote no section (see its output)")
            print(f"== bench {label}: {outcome} in {took:.0f} s", flush=True)
            if rc:
                failed.append(label)
            rows.append(f"| `{label}` | {outcome} | {took:,.0f} | "
                        f"{headline(text, section).replace('|', '/')} |")
    finally:
        if started_broker is not None:
            started_broker.stop()
    total = time.monotonic() - began
    body = "\n".join([
        "## Every benchmark in one command (`userctl bench all`)", "",
        *report.machine_lines(),
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in load)} (1/5/15 min)",
        f"- sections written to: `{out}`",
        f"- **{len(runs)} benchmark runs in {total / 60:.1f} min, "
        f"{len(runs) - len(failed)} ran, {len(failed)} failed** (ran: exit code 0; whether a "
        f"figure met its target is in its section)", "",
        "| benchmark (arguments) | outcome | wall s | headline |",
        "|---|---|---:|---|",
        *rows,
    ])
    report.write_section("all", body, out)
    print(f"all: {total:.0f} s; {len(runs) - len(failed)}/{len(runs)} ran; sections and the "
          f"summary in {out}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
