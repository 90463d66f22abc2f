"""`userctl replay EXPERIMENT --learner` and `userctl history lineage` against a learner run
on a real broker, with a real Delta sink writing the history the replay reads back.

The learner warm-starts from Delta, then takes live steps while it learns (so ingest and
updates interleave however wall time decides), publishing a version every few updates;
the replay must reach each published learner step with bit-identical weights.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from schemas import events
from schemas.experiment import ExperimentSpec
from tests.conftest import Processes
from tests.integration.test_learn import REWARD, STEPS, Setup, stop, wait_until
from topics import catalog
from topics.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[2]
EVERY_UPDATES = 5


def submit(setup: Setup) -> None:
    for robot, site in (("r1", "lab-a"), ("r2", "lab-b")):
        setup.producer.send(catalog.ROBOTS, events.RobotAnnouncedV1(
            site=site, robot_id=setup.robot_ids[robot], spec=setup.spec))
    spec = ExperimentSpec.model_validate({
        "name": setup.experiment, "reward": REWARD,
        "robots": [{"robot_type": setup.robot_type, "count": 2}],
        "algorithm": {"utd_ratio": 1.0, "batch_size": 16, "warmup_steps": 20, "seed": 7},
        "policy": {"hidden": [16, 16]},
        "buffer": {"memory_budget_mb": 8},
        "weight_sync": {"every_updates": EVERY_UPDATES, "every_s": 600.0},
        "stop": {"target_success": 1.0, "success_window": 1000},
    })
    setup.producer.send(catalog.EXPERIMENTS, events.ExperimentSubmittedV1(
        experiment_id=setup.experiment, spec=spec.model_dump(mode="json")))
    setup.producer.flush()


def userctl(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], cwd=REPO,
                          env=setup.env(), capture_output=True, text=True, timeout=120)


def test_replaying_a_learner_from_the_log_reproduces_every_version_bit_for_bit(
        kafka: KafkaSettings, unique: str, tmp_path: Path, processes: Processes) -> None:
    setup = Setup(kafka, unique, tmp_path)
    try:
        submit(setup)
        # History the learner warm-starts from: batches 0-3 of both robots.
        setup.produce(range(4))
        sink = setup.start_sink(processes)
        wait_until("the sink to write the history", setup.sink_caught_up)
        learner = setup.start_learner(processes)
        # Live steps in waves while it learns (the sink keeps writing them to Delta).
        for first in range(4, 14, 2):
            setup.produce(range(first, first + 2))
            setup.wait_metrics(f"batches up to {first + 1} learned from",
                               lambda m, n=first + 2: m["charts/env_steps"] == 2 * n * STEPS
                               and m["charts/update_step"] == 2 * n * STEPS - 20,
                               learner, processes)
        assert stop(learner) == 0
        wait_until("the sink to write every live step", setup.sink_caught_up)
        assert stop(sink) == 0

        done = userctl(setup, "replay", setup.experiment, "--learner", "--root",
                       str(setup.root), "--manifests", "kafka")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = [line.split() for line in done.stdout.splitlines()
                if line.startswith(setup.stream)]
        assert len(rows) >= 20, done.stdout
        assert all(r[-1] == "OK" for r in rows), done.stdout
        assert f"{len(rows)}/{len(rows)} versions bit-identical" in done.stdout
        # Every step once: from the warm start (at least batches 0-3, more if the sink had
        # written the first live wave by then) or from a live record (one batch each).
        head = re.search(r"(\d+) warm-start rows, (\d+) live records", done.stdout)
        assert head is not None, done.stdout
        warm_rows, live_records = int(head[1]), int(head[2])
        assert warm_rows >= 2 * 4 * STEPS
        assert warm_rows + live_records * STEPS == 2 * 14 * STEPS

        shown = userctl(setup, "history", "--root", str(setup.root), "--json", "lineage",
                        setup.experiment, "--version", rows[-1][1], "--manifests", "kafka")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        facts = json.loads(shown.stdout.splitlines()[0])
        warm, live = facts["warm_start"], facts["live"]
        assert warm["table"] == "transitions" and warm["rows"] == warm_rows
        assert isinstance(warm["version"], int)
        # The topic is new: its records are numbered from 0 in every partition.
        assert sum(o + 1 for o in warm["offsets"].values()) == warm_rows // STEPS
        spans = live["partitions"]
        assert all(s["first"] == warm["offsets"].get(k, -1) + 1 for k, s in spans.items())
        assert sum(s["last"] - s["first"] + 1 for s in spans.values()) == live_records
    finally:
        setup.close()
