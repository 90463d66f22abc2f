"""How many simulated robots one agent process keeps at 20 Hz real time.

For each robot type, hosts K robots in one real agent (``agents.agent.Agent``: MuJoCo
stepping, the random policy, step recording, Arrow encoding, the on-disk spool and the
Kafka forwarder to a live broker), leases them to a benchmark experiment, and runs the
agent's own control loop for a few seconds.  K doubles until more than 5 % of control
deadlines are missed; the largest K within 5 % is the figure, with the steps/s it
produced.  Needs a broker (``userctl broker start``) with the catalog created.

Each K also reports where the control loop's time went (issue 17 §5), per step, from
timers wrapped around the agent's own calls: the policy, the MuJoCo step (with the safety
layer), recording (the rest of a robot's tick), the batch build, Arrow encoding, the spool
write, heartbeats, and the CPU the agent's other threads (the Kafka forwarder, the
control listener, librdkafka) took meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agents.agent import Agent, AgentSettings
from agents.worker import Lease
from infra.bench import report
from schemas.transitions import TransitionBatch
from topics import admin
from topics.settings import KafkaSettings

HELP = "robots per agent process at 20 Hz within 5 percent missed deadlines"
MAX_MISSED = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--types", default="reacher2d,arm7", help="robot types to measure")
    p.add_argument("--seconds", type=float, default=6.0, help="run time per step of K")
    p.add_argument("--max-robots", type=int, default=256, help="stop doubling here")
    p.add_argument("--start", type=int, default=1, help="first K (then doubling)")
    p.add_argument("--compare-stagger", action="store_true",
                   help="also run each K with the robots' flushes not staggered (before)")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


#: Control-loop phases, in the order the table shows them.
PHASES = ("policy", "mujoco step", "recording", "batch build", "encode", "spool write",
          "other threads (CPU)")


class Phases:
    """Seconds spent per phase while ``on`` (the measured window only)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.on = False

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
        return wrapper


def _thread_cpu_s(exclude: int) -> float:
    """CPU seconds of this process's threads other than native id ``exclude``."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) == exclude:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / hz


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def _instrumented(agent: Agent, phases: Phases) -> Iterator[None]:
    """Wrap the agent's calls with phase timers (the batch build restored on exit)."""
    saved_build = TransitionBatch.build
    TransitionBatch.build = phases.timed(  # type: ignore[method-assign]
        "batch build", saved_build)
    # Outbox.send = encode + send_record (the spool write): encode is the difference,
    # both counted only for sends that began inside the window.
    send, send_record = agent.outbox.send, agent.outbox.send_record
    inner: list[float] = []

    def timed_send(*args: Any, **kwargs: Any) -> None:
        if not phases.on:
            return send(*args, **kwargs)
        inner.clear()
        t0 = time.perf_counter()
        try:
            return send(*args, **kwargs)
        finally:
            total = time.perf_counter() - t0
            spool = sum(inner)
            phases.seconds["spool write"] += spool
            phases.seconds["encode"] += total - spool
            inner.clear()

    def timed_record(*args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            return send_record(*args, **kwargs)
        finally:
            inner.append(time.perf_counter() - t0)

    agent.outbox.send = timed_send  # type: ignore[method-assign]
    agent.outbox.send_record = timed_record  # type: ignore[method-assign]
    for worker in agent.workers:
        policy_source = worker._policy

        def timed_source(source: Callable[[], tuple[Any, int]] = policy_source
                         ) -> tuple[Any, int]:
            fn, version = source()
            return phases.timed("policy", fn), version

        worker._policy = timed_source
        worker.robot.step = phases.timed("mujoco step", worker.robot.step)  # type: ignore
        worker.tick = phases.timed("tick", worker.tick)  # type: ignore[method-assign]
    try:
        yield
    finally:
        TransitionBatch.build = saved_build  # type: ignore[method-assign]


def measure(kafka: KafkaSettings, robot_type: str, count: int, seconds: float,
            home: Path, phases: Phases | None = None, stagger: bool = True
            ) -> tuple[float, float, float]:
    """(missed fraction, steps/s, achieved loop Hz) of one agent hosting ``count`` robots;
    ``phases`` collects where the loop's time went in the measured window."""
    settings = AgentSettings(robot_type=robot_type, site=next(iter(kafka.sites.sites)),
                             robot_id=f"bench-{uuid.uuid4().hex[:6]}", count=count,
                             seed=0, home=home, flush_stagger=stagger)
    agent = Agent(settings, kafka)
    for rid in agent.robot_ids:
        agent.mailbox.leases[rid] = Lease("bench-fleet", f"bench-{rid}")
    phases = phases if phases is not None else Phases()
    loop_tid = threading.get_native_id()
    # The first second warms up (first episode resets, producer connections); the
    # window is measured from the timer threads, while the agent's own loop runs.
    marks: dict[str, tuple[float, int]] = {}

    def steps_now() -> int:
        return sum(w.steps_total for w in agent.workers)

    def begin() -> None:
        assert agent.pacer is not None
        agent.pacer.restart()
        marks["begin"] = (time.monotonic(), steps_now())
        marks["cpu0"] = (_thread_cpu_s(loop_tid), 0)
        phases.on = True

    def end() -> None:
        assert agent.pacer is not None
        phases.on = False
        marks["end"] = (time.monotonic(), steps_now())
        marks["stats"] = (agent.pacer.stats.missed_fraction, agent.pacer.stats.periods)
        # The timer thread itself is counted too: it only sleeps.
        phases.seconds["other threads (CPU)"] += _thread_cpu_s(loop_tid) - marks["cpu0"][0]
        phases.seconds["rss_mb"] = _rss_mb()
        agent.stop()

    warm = threading.Timer(1.0, begin)
    stop = threading.Timer(1.0 + seconds, end)
    warm.start()
    stop.start()
    with _instrumented(agent, phases):
        agent.run()
    (t0, s0), (t1, s1) = marks["begin"], marks["end"]
    steps = max(s1 - s0, 1)
    sec = phases.seconds
    sec["loop busy"] = sec["tick"]
    sec["recording"] = max(sec.pop("tick", 0.0) - sum(
        sec[p] for p in ("policy", "mujoco step", "batch build", "encode", "spool write")), 0.0)
    sec["window_s"] = t1 - t0
    sec["steps"] = steps
    missed, periods = marks["stats"]
    return missed, (s1 - s0) / (t1 - t0), periods / (t1 - t0)


_CHILD = """
import json, sys
from pathlib import Path
from infra.bench import fleet
from topics.settings import KafkaSettings
robot_type, count, seconds, home, stagger = json.loads(sys.argv[1])
phases = fleet.Phases()
missed, steps_s, hz = fleet.measure(KafkaSettings(), robot_type, count, seconds, Path(home),
                                    phases, stagger)
print(json.dumps({"missed": missed, "steps_s": steps_s, "hz": hz,
                  "seconds": dict(phases.seconds), "torch": "torch" in sys.modules}))
"""


def measure_in_child(robot_type: str, count: int, seconds: float, home: Path,
                     stagger: bool = True) -> tuple[float, float, float, Phases, bool]:
    """:func:`measure` in a fresh interpreter that imports what an agent does (not the
    other benchmarks' torch), so its RSS is an agent's; also says if torch got loaded."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD,
         json.dumps([robot_type, count, seconds, str(home), stagger])],
        capture_output=True, text=True, timeout=seconds + 120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    phases = Phases()
    phases.seconds.update(got["seconds"])
    return got["missed"], got["steps_s"], got["hz"], phases, bool(got["torch"])


def run(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    admin.wait_for_broker(admin.admin_client(kafka), kafka)
    admin.ensure_topics(kafka)
    lines = ["## Fleet: simulated robots per agent process at 20 Hz", ""]
    lines += report.machine_lines()
    lines += [
        "- what: K robots in one `userctl agent` process (MuJoCo, random policy, "
        "recording, Arrow encoding, disk spool, Kafka forwarder to a local broker); "
        f"{args.seconds:g} s per K after 1 s warm-up; K doubles until > 5 % of the "
        "50 ms control deadlines are missed, then two bisection steps",
        f"- load average at start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
        f"(1/5/15 min; {report.usable_cores()} usable cores, shared)",
        "- per-phase columns: µs of the control thread per robot step in the measured "
        "window (policy, MuJoCo step incl. the safety layer, recording = the rest of the "
        "robot's tick, batch build, Arrow encoding, spool write); `other threads` is the CPU "
        "the agent's other threads used per step (Kafka forwarder, librdkafka, listener); "
        "`busy` is the share of wall time the control thread spent in robot ticks; "
        "`flushes`: staggered over flush_ms per robot (now) or together (before, "
        "`--compare-stagger`)",
        "",
        "| robot type | robots | flushes | missed deadlines | loop rate (Hz) | steps/s | "
        "busy | policy µs | MuJoCo µs | recording µs | batch build µs | encode µs | "
        "spool µs | other threads µs | RSS MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best: dict[str, tuple[int, float]] = {}
    torch_seen: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="user-bench-fleet-") as tmp:
        for robot_type in args.types.split(","):

            def one(count: int, stagger: bool, robot_type: str = robot_type
                    ) -> tuple[float, float]:
                missed, steps_s, hz, phases, torch_loaded = measure_in_child(
                    robot_type, count, args.seconds, Path(tmp), stagger)
                torch_seen.append(torch_loaded)
                sec = phases.seconds
                per = [sec[p] / sec["steps"] * 1e6 for p in PHASES]
                busy = sec["loop busy"] / sec["window_s"]
                flushes = "staggered" if stagger else "together"
                print(f"{robot_type:10s} K={count:4d} {flushes:9s} missed {missed:6.1%}  "
                      f"loop {hz:5.1f} Hz  {steps_s:8.0f} steps/s  busy {busy:4.0%}  "
                      + "  ".join(f"{p} {v:.0f}us" for p, v in zip(PHASES, per, strict=True))
                      + f"  rss {sec['rss_mb']:.0f} MB", flush=True)
                lines.append(f"| {robot_type} | {count} | {flushes} | {missed:.1%} | "
                             f"{hz:.1f} | {steps_s:,.0f} | {busy:.0%} | "
                             + " | ".join(f"{v:,.0f}" for v in per)
                             + f" | {sec['rss_mb']:.0f} |")
                return missed, steps_s

            def probe(count: int, robot_type: str = robot_type) -> bool:
                if args.compare_stagger:
                    one(count, stagger=False)
                missed, steps_s = one(count, stagger=True)
                if missed > MAX_MISSED:
                    return False
                if count > best.get(robot_type, (0, 0.0))[0]:
                    best[robot_type] = (count, steps_s)
                return True

            # Double until a K misses too many deadlines, then bisect between the last
            # good K and that one (two more probes).
            good, count = 0, max(args.start, 1)
            while count <= args.max_robots and probe(count):
                good, count = count, count * 2
            bad = count
            for _ in range(2):
                if bad > args.max_robots or bad - good <= 1:
                    break
                mid = (good + bad) // 2
                if probe(mid):
                    good = mid
                else:
                    bad = mid
    lines.append("")
    for robot_type, (count, steps_s) in best.items():
        lines.append(f"**{robot_type}: {count} robots** sustained at 20 Hz within 5 % missed "
                     f"deadlines in one process ({steps_s:,.0f} steps/s); every larger K "
                     "tried missed more (or --max-robots was reached).")
    lines.append(f"\nEach K runs in a fresh interpreter importing what `userctl agent` does; "
                 f"torch loaded there: {any(torch_seen)} (agents run learned "
                 "mlp_gaussian policies with numpy).")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        report.write_section("fleet", text, args.out)
    return 0
