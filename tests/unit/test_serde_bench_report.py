"""Benchmark sections in BENCHMARKS.md: each benchmark rewrites only its own."""

from __future__ import annotations

from pathlib import Path

from infra.bench import BENCHMARKS, report


def test_a_section_is_replaced_and_the_others_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    report.write_section("codec", "codec v1", path)
    report.write_section("fleet", "fleet v1", path)
    report.write_section("codec", "codec v2", path)
    text = path.read_text()
    assert "codec v2" in text and "codec v1" not in text and "fleet v1" in text
    assert text.index("codec v2") < text.index("fleet v1")
    assert text.startswith("# Benchmarks")


def test_the_machine_is_described() -> None:
    lines = report.machine_lines(["userctl", "bench", "codec"])
    assert any("cores" in line for line in lines)
    assert any("`userctl bench codec`" in line for line in lines)


def test_codec_is_a_registered_benchmark() -> None:
    assert BENCHMARKS["codec"] == "infra.bench.codec"
