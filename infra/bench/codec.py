"""Transition-batch codec throughput: encode + decode, beside raw baselines.

For each workload (state-only steps: 32-float observation, 4-float action; image steps:
the same plus two 84x84x3 uint8 cameras) and batch size, one round trip is timed as:

* ``codec zstd`` / ``codec none`` — ``topics.serde.encode`` then ``decode`` of a
  :class:`~schemas.transitions.TransitionBatch` (header, derived schema, dictionary
  strings, structural checks) with and without zstd;
* ``arrow ipc`` — baseline: the same numeric arrays as a plain Arrow record batch,
  written to and read back from IPC, back to numpy views (no header, no checks);
* ``memcpy`` — baseline: each array copied into one buffer and back out.

Every cell is the median of ``--repeats`` timings, each of enough round trips to last
``--min-time``; all methods run in the same process, taking turns within each repeat.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from infra.bench import report
from schemas import samples, transitions
from topics import catalog, serde

HELP = "transition-batch encode+decode throughput vs plain Arrow IPC and memcpy"

WORKLOADS: dict[str, dict[str, object]] = {
    "state (32-float obs)": {"obs_dim": 32, "act_dim": 4},
    "images (2 x 84x84x3)": {"obs_dim": 32, "act_dim": 4, "cameras": ("front", "wrist")},
}
METHODS = ("codec zstd", "codec none", "arrow ipc", "memcpy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1,64,1024", help="batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=7, help="timings per cell (median reported)")
    p.add_argument("--min-time", type=float, default=0.05,
                   help="seconds each timing lasts at least (loops are added)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH,
                   help="the BENCHMARKS.md to update")
    p.add_argument("--no-write", action="store_true", help="print only")


@dataclass(frozen=True)
class Cell:
    workload: str
    steps: int
    method: str
    seconds: float  # median per round trip
    payload_bytes: int
    wire_bytes: int

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / self.seconds / 1e6


def _numeric_arrays(batch: transitions.TransitionBatch) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f, col in transitions.columns(type(batch)):
        value = getattr(batch, f.name)
        # Per-step columns only (final observations hold one row per truncated step).
        if col.kind in (transitions.Kind.STRING, transitions.Kind.FINAL,
                        transitions.Kind.FINAL_IMAGES):
            continue
        if isinstance(value, dict):
            out.update({f"{f.name}.{k}": v for k, v in value.items()})
        else:
            out[f.name] = value
    return out


def _arrow_round_trip(arrays: dict[str, np.ndarray]) -> Callable[[], int]:
    def run() -> int:
        cols, names = [], []
        for name, arr in arrays.items():
            if arr.shape[0] == 0:
                continue
            flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
            size = math.prod(arr.shape[1:])
            cols.append(flat if arr.ndim == 1 else pa.FixedSizeListArray.from_arrays(flat, size))
            names.append(name)
        rb = pa.RecordBatch.from_arrays(cols, names=names)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rb.schema) as w:
            w.write_batch(rb)
        data = sink.getvalue()
        back = pa.ipc.open_stream(data).read_next_batch()
        for i, name in enumerate(names):
            col = back.column(i)
            arr = arrays[name]
            values = col if arr.ndim == 1 else col.values
            values.to_numpy(zero_copy_only=False).reshape(arr.shape)
        return int(data.size)

    return run


def _memcpy_round_trip(arrays: dict[str, np.ndarray]) -> Callable[[], int]:
    total = sum(a.nbytes for a in arrays.values())

    def run() -> int:
        buf = np.empty(total, np.uint8)
        at = 0
        for arr in arrays.values():
            buf[at: at + arr.nbytes] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            at += arr.nbytes
        at = 0
        for arr in arrays.values():
            np.frombuffer(buf, arr.dtype, arr.size, at).reshape(arr.shape).copy()
            at += arr.nbytes
        return total

    return run


def _codec_round_trip(batch: transitions.TransitionBatch, compression: str
                      ) -> Callable[[], int]:
    cfg = serde.SerdeSettings(arrow_compression=compression)
    spec = catalog.TRANSITIONS_RAW
    # Image batches of 1024 steps exceed the topic's record limit: measure the codec alone.
    big = spec.model_copy(update={"max_message_bytes": 1 << 30})

    def run() -> int:
        rec = serde.encode(big, batch, settings=cfg)
        serde.decode(big, rec.value, rec.headers, settings=cfg)
        return len(rec.value)

    return run


def _loops(fn: Callable[[], int], min_time: float) -> tuple[int, int]:
    """Round trips per timing so that one timing lasts ``min_time``; and the wire size."""
    wire = fn()  # warm-up (caches, allocator)
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, math.ceil(min_time / once)), wire


def _timed(fn: Callable[[], int], loops: int) -> float:
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) / loops


def measure(sizes: list[int], repeats: int, min_time: float) -> list[Cell]:
    cells = []
    for workload, params in WORKLOADS.items():
        spec = samples.robot_spec(**params)  # type: ignore[arg-type]
        for n in sizes:
            batch = samples.batch(spec, n)
            arrays = _numeric_arrays(batch)
            payload = sum(a.nbytes for a in arrays.values())
            runs = {
                "codec zstd": _codec_round_trip(batch, "zstd"),
                "codec none": _codec_round_trip(batch, "none"),
                "arrow ipc": _arrow_round_trip(arrays),
                "memcpy": _memcpy_round_trip(arrays),
            }
            plan = {m: _loops(runs[m], min_time) for m in METHODS}
            timings: dict[str, list[float]] = {m: [] for m in METHODS}
            # Methods take turns within each repeat, so load from other processes on a
            # shared machine falls on all of them alike and the ratios stay fair.
            for _ in range(repeats):
                for m in METHODS:
                    timings[m].append(_timed(runs[m], plan[m][0]))
            for m in METHODS:
                cells.append(Cell(workload, n, m, statistics.median(timings[m]), payload,
                                  plan[m][1]))
    return cells


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(cells: list[Cell]) -> str:
    base = {(c.workload, c.steps): c for c in cells if c.method == "arrow ipc"}
    lines = [
        "| workload | steps/batch | method | steps/s | MB/s | wire bytes/step "
        "| × plain Arrow IPC |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        ratio = c.steps_per_s / base[(c.workload, c.steps)].steps_per_s
        lines.append(
            f"| {c.workload} | {c.steps} | {c.method} | {_fmt(c.steps_per_s)} | "
            f"{_fmt(c.mb_per_s)} | {_fmt(c.wire_bytes / c.steps)} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def section(cells: list[Cell], args: argparse.Namespace) -> str:
    return "\n".join([
        "## Codec: transition batches (`userctl bench codec`)",
        "",
        *report.machine_lines(),
        "",
        "One round trip = encode + decode of one batch, median of "
        f"{args.repeats} timings (each ≥ {args.min_time:g} s of round trips; methods take "
        "turns within each repeat). MB/s counts the "
        "batch's numeric payload (observations, actions, images, …), the same bytes for "
        "every method; the last column is throughput relative to plain Arrow IPC of the same "
        "arrays. Observations are Gaussian noise and images uniform noise, the worst case for "
        "zstd: real camera frames compress better. Image batches of 1024 steps (43 MB) exceed "
        f"`{catalog.TRANSITIONS_RAW.name}`'s {catalog.TRANSITIONS_RAW.max_message_bytes >> 20} "
        "MiB record limit; agents send image batches of ≤ 256 steps. `codec none` is the "
        "default (`USER_SERDE_ARROW_COMPRESSION`; zstd is opt-in: the WAN hop is "
        "compressed by MirrorMaker's producer). `codec` = `topics.serde.encode` + `decode`: "
        "header, derived schema, dictionary strings and every structural check of the "
        "decoder (labels vs header, shapes, nulls, the intervention contract); content "
        "checks (`check_content`, bounds) are the consumers' and are not timed here.",
        "",
        table(cells),
    ])


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    cells = measure(sizes, args.repeats, args.min_time)
    text = section(cells, args)
    print(text)
    if not args.no_write:
        report.write_section("codec", text, args.out)
        print(f"\nwritten to {args.out}")
    return 0
