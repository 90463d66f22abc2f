"""`userctl bench all` (issue 17 §10): every run it makes parses with its benchmark's own
arguments, and every benchmark module is registered (a typo in a time bound would only
show an hour into the run)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from infra.bench import BENCHMARKS
from infra.bench import all as bench_all


@pytest.mark.parametrize("name, argv", [
    *((n, a) for n, a in bench_all.ARGS.items()), *bench_all.EXTRA])
def test_each_bounded_run_parses_with_its_benchmarks_arguments(name: str,
                                                               argv: list[str]) -> None:
    module = importlib.import_module(BENCHMARKS[name])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    parser.parse_args(argv)


def test_the_new_benchmark_modes_are_registered() -> None:
    assert {"pipeline-cost", "weights-lerobot", "fleet", "footprint"} <= set(BENCHMARKS)
