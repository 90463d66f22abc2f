"""`userctl bench NAME` — measured throughput of USER's parts, written into BENCHMARKS.md.

Each benchmark is a module listed in :data:`BENCHMARKS` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; add a name and a module to add one.
Results go into their own section of ``BENCHMARKS.md`` (:mod:`infra.bench.report`).
"""

from __future__ import annotations

import argparse
import importlib

#: Benchmark name -> module; each registers ``userctl bench <name>``.
BENCHMARKS: dict[str, str] = {
    "codec": "infra.bench.codec",
    "weights": "infra.bench.weights",
    "weights-lerobot": "infra.bench.weights_lerobot",
    "ingest": "infra.bench.ingest",
    "footprint": "infra.bench.footprint",
    "fleet": "infra.bench.fleet",
    "learner": "infra.bench.learner",
    "async-sync": "infra.bench.async_sync",
    "pipeline-cost": "infra.bench.pipeline_cost",
    "manipulators": "infra.bench.manipulators",
    "security": "infra.bench.security",
    "pixels": "infra.bench.pixels",
    "wan": "infra.bench.wan",
    "imitation": "infra.bench.imitation",
    "inference": "infra.bench.inference",
    "sync-gpu": "infra.bench.sync_gpu",
    "sites": "infra.bench.sites",
    "all": "infra.bench.all",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="measure throughput and write it into BENCHMARKS.md")
    bsub = p.add_subparsers(dest="bench_cmd", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        s = bsub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(s)
        s.set_defaults(func=module.run)
