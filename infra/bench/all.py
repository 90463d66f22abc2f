"""Run every benchmark in turn; each rewrites its own BENCHMARKS.md section.

Each runs with its defaults except where :data:`ARGS` bounds a learning run's wall clock so
the whole command ends within about an hour on the 2-core machine (``--full`` runs every
default), and ``async-sync`` runs twice: as is and ``--paper``.  Needs what the
benchmarks need: a broker (``userctl broker start``) with the catalog.  A benchmark that
fails is reported and the rest still run; the exit code says whether all passed, and the
last line gives each one's wall time.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

HELP = "run every benchmark (rewrites BENCHMARKS.md section by section)"


#: Arguments ``bench all`` gives a benchmark instead of its defaults (time bounds).
ARGS: dict[str, list[str]] = {
    "async-sync": ["--max-wall-s", "240"],
    "pipeline-cost": ["--max-wall-s", "360"],
    "fleet": ["--seconds", "4"],
}
#: Extra runs of a benchmark with other arguments (own BENCHMARKS.md section each).
EXTRA: list[tuple[str, list[str]]] = [
    ("async-sync", ["--paper", "--skip-probe", "--robots", "2", "--max-wall-s", "150"]),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    p.add_argument("--full", action="store_true",
                   help="every benchmark with its own defaults (no time bounds; hours)")


def run(args: argparse.Namespace) -> int:
    from infra.bench import BENCHMARKS

    skip = {s for s in args.skip.split(",") if s}
    failed: list[str] = []
    took: list[str] = []
    began = time.monotonic()
    runs = [(name, [] if args.full else ARGS.get(name, [])) for name in BENCHMARKS]
    runs += [] if args.full else EXTRA
    for name, argv in runs:
        if name == "all" or name in skip:
            continue
        module = importlib.import_module(BENCHMARKS[name])
        parser = argparse.ArgumentParser(prog=f"userctl bench {name}")
        module.add_arguments(parser)
        sub_args = parser.parse_args(argv)
        label = " ".join([name, *argv])
        print(f"== bench {label}", flush=True)
        started = time.monotonic()
        try:
            rc = int(module.run(sub_args) or 0)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            rc = 1
        print(f"== bench {label}: {'ok' if rc == 0 else f'FAILED ({rc})'} in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        took.append(f"{label} {time.monotonic() - started:.0f} s")
        if rc:
            failed.append(label)
    print(f"all: {time.monotonic() - began:.0f} s ({'; '.join(took)})")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
