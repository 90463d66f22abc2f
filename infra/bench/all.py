"""Run every benchmark in turn with its defaults; each rewrites its own BENCHMARKS.md section.

Needs what the benchmarks need: a broker (``userctl broker start``) with the catalog.
A benchmark that fails is reported and the rest still run; the exit code says whether
all passed.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

HELP = "run every benchmark (rewrites BENCHMARKS.md section by section)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")


def run(args: argparse.Namespace) -> int:
    from infra.bench import BENCHMARKS

    skip = {s for s in args.skip.split(",") if s}
    failed: list[str] = []
    for name, module_name in BENCHMARKS.items():
        if name == "all" or name in skip:
            continue
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"userctl bench {name}")
        module.add_arguments(parser)
        sub_args = parser.parse_args([])
        print(f"== bench {name}", flush=True)
        started = time.monotonic()
        try:
            rc = int(module.run(sub_args) or 0)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            rc = 1
        print(f"== bench {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
