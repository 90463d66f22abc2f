"""How many simulated robots one agent process keeps at 20 Hz real time.

For each robot type, hosts K robots in one real agent (``agents.agent.Agent``: MuJoCo
stepping, the random policy, step recording, Arrow encoding, the on-disk spool and the
Kafka forwarder to a live broker), leases them to a benchmark experiment, and runs the
agent's own control loop for a few seconds.  K doubles until more than 5 % of control
deadlines are missed; the largest K within 5 % is the figure, with the steps/s it
produced.  Needs a broker (``userctl broker start``) with the catalog created.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

from agents.agent import Agent, AgentSettings
from agents.worker import Lease
from infra.bench import report
from topics import admin
from topics.settings import KafkaSettings

HELP = "robots per agent process at 20 Hz within 5 percent missed deadlines"
MAX_MISSED = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--types", default="reacher2d,arm7", help="robot types to measure")
    p.add_argument("--seconds", type=float, default=6.0, help="run time per step of K")
    p.add_argument("--max-robots", type=int, default=256, help="stop doubling here")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


def measure(kafka: KafkaSettings, robot_type: str, count: int, seconds: float,
            home: Path) -> tuple[float, float, float]:
    """(missed fraction, steps/s, achieved loop Hz) of one agent hosting ``count`` robots."""
    settings = AgentSettings(robot_type=robot_type, site=next(iter(kafka.sites.sites)),
                             robot_id=f"bench-{uuid.uuid4().hex[:6]}", count=count,
                             seed=0, home=home)
    agent = Agent(settings, kafka)
    for rid in agent.robot_ids:
        agent.mailbox.leases[rid] = Lease("bench-fleet", f"bench-{rid}")
    # The first second warms up (first episode resets, producer connections); the
    # window is measured from the timer threads, while the agent's own loop runs.
    marks: dict[str, tuple[float, int]] = {}

    def steps_now() -> int:
        return sum(w.steps_total for w in agent.workers)

    def begin() -> None:
        assert agent.pacer is not None
        agent.pacer.restart()
        marks["begin"] = (time.monotonic(), steps_now())

    def end() -> None:
        assert agent.pacer is not None
        marks["end"] = (time.monotonic(), steps_now())
        marks["stats"] = (agent.pacer.stats.missed_fraction, agent.pacer.stats.periods)
        agent.stop()

    warm = threading.Timer(1.0, begin)
    stop = threading.Timer(1.0 + seconds, end)
    warm.start()
    stop.start()
    agent.run()
    (t0, s0), (t1, s1) = marks["begin"], marks["end"]
    missed, periods = marks["stats"]
    return missed, (s1 - s0) / (t1 - t0), periods / (t1 - t0)


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
        "",
        "| robot type | robots | missed deadlines | loop rate (Hz) | steps/s |",
        "|---|---:|---:|---:|---:|",
    ]
    best: dict[str, tuple[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="user-bench-fleet-") as tmp:
        for robot_type in args.types.split(","):

            def probe(count: int, robot_type: str = robot_type) -> bool:
                missed, steps_s, hz = measure(kafka, robot_type, count, args.seconds,
                                              Path(tmp))
                print(f"{robot_type:10s} K={count:4d}  missed {missed:6.1%}  "
                      f"loop {hz:5.1f} Hz  {steps_s:8.0f} steps/s", flush=True)
                lines.append(f"| {robot_type} | {count} | {missed:.1%} | {hz:.1f} | "
                             f"{steps_s:,.0f} |")
                if missed > MAX_MISSED:
                    return False
                if count > best.get(robot_type, (0, 0.0))[0]:
                    best[robot_type] = (count, steps_s)
                return True

            # Double until a K misses too many deadlines, then bisect between the last
            # good K and that one (two more probes).
            good, count = 0, 1
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
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        report.write_section("fleet", text, args.out)
    return 0
