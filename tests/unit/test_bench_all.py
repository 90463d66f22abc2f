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


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_all.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_every_planned_run_takes_the_out_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # bench all sends every section to --out: a benchmark without --out would write the
    # repository's BENCHMARKS.md behind the user's back (or fail an hour in).
    runs = bench_all.plan(_args())
    assert {name for name, _ in runs} == set(BENCHMARKS) - {"all"}
    for name, argv in runs:
        module = importlib.import_module(BENCHMARKS[name])
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert parser.parse_args([*argv, "--out", str(tmp_path / "b.md")]).out == \
            tmp_path / "b.md"


def test_only_and_skip_select_runs_and_a_typo_is_named() -> None:
    assert [n for n, _ in bench_all.plan(_args("--only", "codec,async-sync"))] == \
        ["codec", "async-sync", "async-sync"]
    assert "fleet" not in {n for n, _ in bench_all.plan(_args("--skip", "fleet"))}
    with pytest.raises(SystemExit, match="fleeet"):
        bench_all.plan(_args("--skip", "fleeet"))
    with pytest.raises(SystemExit, match="names no benchmark"):  # not "everything"
        bench_all.plan(_args("--only", ""))


def test_the_default_out_is_beside_the_curated_benchmarks_file() -> None:
    # Run with no --out, every section goes to benchmarks/bench-all.md: BENCHMARKS.md keeps
    # its readings unless asked for.
    out = _args().out
    assert out.name == "bench-all.md" and out.parent.name == "benchmarks"


def test_headline_is_the_sections_first_bold_result() -> None:
    text = ("<!-- bench:fleet:begin -->\n## Fleet\n- date: x\n\n**threads** share cores\n"
            "**reacher2d: 40 robots** at 20 Hz"
            "\n**second**\n<!-- bench:fleet:end -->\n")
    assert bench_all.headline(text, "fleet") == "reacher2d: 40 robots"
    assert bench_all.headline(text, "codec") == ""


def test_each_benchmark_runs_in_its_own_interpreter_and_the_summary_is_written(
        tmp_path, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    # sync-gpu on a machine without CUDA says so and exits 0 at once without a section: the
    # cheapest real run, and "ok" would claim a figure it did not measure.  A broker named
    # elsewhere is not started (USER_KAFKA_BOOTSTRAP).
    monkeypatch.setenv("USER_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    out = tmp_path / "B.md"
    commands = []
    real_run = bench_all.subprocess.run

    def spy(cmd, **kw):  # type: ignore[no-untyped-def]
        commands.append(cmd)
        return real_run(cmd, **kw)

    monkeypatch.setattr(bench_all.subprocess, "run", spy)
    assert bench_all.run(_args("--only", "sync-gpu", "--out", str(out))) == 0
    assert [c[1:5] for c in commands] == [["-m", "infra.cli", "bench", "sync-gpu"]]
    assert commands[0][-2:] == ["--out", str(out)]
    text = out.read_text()
    assert "<!-- bench:all:begin -->" in text
    assert "| `sync-gpu` | ran, wrote no section (see its output) |" in text
    assert "1 benchmark runs" in text
