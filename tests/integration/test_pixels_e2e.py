"""A short image experiment end to end (issue 12): camera frames through Kafka (the
``transitions`` topic), the real sink into Delta, and `userctl learn` with the
``cnn_gaussian`` policy — warm start from Delta (frames read chunk by chunk), live steps
from Kafka, updates, weights published."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import events, samples
from schemas.experiment import ExperimentSpec
from tests.conftest import Processes
from tests.integration.test_learn import REWARD, ROBOTS, STEPS, Setup, stop, wait_until
from topics import catalog
from topics.settings import KafkaSettings


class PixelSetup(Setup):
    def __init__(self, kafka: KafkaSettings, unique: str, tmp: Path) -> None:
        super().__init__(kafka, unique, tmp)
        self.spec = samples.robot_spec(obs_dim=6, act_dim=2, robot_type=self.robot_type,
                                       cameras=("overhead",), image_hw=(32, 32))

    def announce_and_submit(self) -> None:
        for robot, site in ROBOTS:
            self.producer.send(catalog.ROBOTS, events.RobotAnnouncedV1(
                site=site, robot_id=self.robot_ids[robot], spec=self.spec))
        spec = ExperimentSpec.model_validate({
            "name": self.experiment, "reward": REWARD,
            "robots": [{"robot_type": self.robot_type, "count": 2}],
            "algorithm": {"utd_ratio": 0.25, "batch_size": 8, "warmup_steps": 20},
            "policy": {"kind": "cnn_gaussian", "hidden": [16, 16],
                       "options": {"channels": 4, "feature_dim": 8}},
            "observation": {"cameras": ["overhead"], "image_size": [32, 32],
                            "state_indices": [0, 1, 2, 3]},
            "buffer": {"memory_budget_mb": 16},
            "weight_sync": {"every_updates": 5, "every_s": 1.0},
            "stop": {"target_success": 1.0, "success_window": 1000},
        })
        self.producer.send(catalog.EXPERIMENTS, events.ExperimentSubmittedV1(
            experiment_id=self.experiment, spec=spec.model_dump(mode="json")))
        self.producer.flush()


@pytest.fixture
def setup(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[PixelSetup]:
    s = PixelSetup(kafka, unique, tmp_path)
    s.announce_and_submit()
    try:
        yield s
    finally:
        s.close()


def test_an_image_experiment_learns_from_frames_of_delta_and_kafka(
        setup: PixelSetup, processes: Processes) -> None:
    setup.produce(range(6))  # history: 120 steps with frames
    sink = setup.start_sink(processes)
    wait_until("the sink to write the frames", setup.sink_caught_up)
    assert stop(sink) == 0
    setup.produce(range(6, 9))  # only in Kafka
    learner = setup.start_learner(processes)
    m = setup.wait_metrics(
        "every step learned from and weights published",
        lambda m: m["charts/env_steps"] == 2 * 9 * STEPS
        and (m["charts/update_step"] or 0) >= 20 and (m["weights/published"] or 0) >= 1,
        learner, processes, timeout_s=75)
    assert m.metrics["replay/history_steps"] == 2 * 6 * STEPS
    assert m.metrics["replay/live_steps"] == 2 * 3 * STEPS
    assert m.metrics["replay/rejected_steps"] == 0
    assert m.metrics["replay/steps_fingerprint"] == setup.fingerprint()
    assert stop(learner) == 0
    assert "sac + cnn_gaussian" in processes.log("learn")
