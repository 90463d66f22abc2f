"""Image experiments end to end (issue 12).

* The whole chain, every role a real process on a broker of the module's own:
  `userctl experiments submit` → controller → an agent whose MuJoCo robot renders its
  camera (EGL) → ``transitions.raw`` → reward job → ``transitions`` → sink → Delta →
  `userctl learn` with ``cnn_gaussian`` → weights → the robot acting on its frames.
* The learner's side in detail, on the shared broker: frames through Kafka (the
  ``transitions`` topic), the real sink into Delta, warm start from Delta (frames read
  chunk by chunk) and live steps from Kafka, each step exactly once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from learners import policies
from schemas import events, samples
from schemas.experiment import ExperimentSpec
from schemas.transitions import TransitionBatch
from tests.conftest import Processes, catalog_broker
from tests.integration.test_learn import REWARD, ROBOTS, STEPS, Setup, stop, wait_until
from topics import catalog, tables
from topics.follow import Follower
from topics.settings import KafkaSettings
from topics.validation import Accepted


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


# ------------------------------------------------------------------ the whole chain

@pytest.fixture(scope="module")
def fleet_kafka(tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
                ) -> Iterator[KafkaSettings]:
    """A broker of this module's own: the controller serves every experiment in the log,
    so other runs' experiments on the shared broker would take this test's robot."""
    yield from catalog_broker(tmp_path_factory.mktemp("pixels-kafka"), kafka_libs)


def _delta_frames(root: Path, experiment: str) -> int:
    """Rows of ``experiment`` in the rewarded Delta table that carry a 32×32 overhead frame."""
    try:
        dt = DeltaTable(tables.table_path(root, tables.TRANSITIONS))
    except TableNotFoundError:
        return 0
    t = dt.to_pyarrow_table(columns=["experiment_id", "images"])
    t = t.filter(pc.equal(t.column("experiment_id"), experiment))
    if t.num_rows == 0:
        return 0
    frames = pc.struct_field(t.column("images").combine_chunks(), "overhead")
    return int(pc.sum(pc.equal(pc.binary_length(frames), 32 * 32 * 3)).as_py() or 0)


def test_a_cnn_gaussian_experiment_runs_from_submit_through_fleet_sink_and_learner(
        fleet_kafka: KafkaSettings, unique: str, processes: Processes, tmp_path: Path
) -> None:
    """`userctl experiments submit` → controller leases a real agent whose MuJoCo robot
    renders its overhead camera → ``transitions.raw`` → reward job → ``transitions`` →
    sink → Delta → `userctl learn` (cnn_gaussian: warm start from Delta's frames, live
    frames from Kafka) → weights → the agent acts with the CNN on its camera frames."""
    name, robot = f"px-{unique}", f"px-{unique}"
    root, home = tmp_path / "delta", tmp_path / "home"
    env = {**os.environ, "USER_KAFKA_BOOTSTRAP": fleet_kafka.bootstrap,
           "USER_HOME": str(home), "USER_LOG_LEVEL": "INFO", "MUJOCO_GL": "egl",
           "USER_AGENT_CAMERAS": '["overhead"]', "USER_AGENT_CAMERA_SIZE": "[32, 32]",
           "USER_AGENT_FLUSH_MS": "200", "USER_LEARN_TORCH_THREADS": "1",
           "USER_SINK_ROOT": str(root), "USER_LEARN_DELTA_ROOT": str(root)}
    spec_file = tmp_path / "pixels.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": name, "reward": REWARD,
        "robots": [{"robot_type": "reacher2d", "count": 1}],
        "algorithm": {"utd_ratio": 0.25, "batch_size": 8, "warmup_steps": 40},
        "policy": {"kind": "cnn_gaussian", "hidden": [16, 16],
                   "options": {"channels": 4, "feature_dim": 8}},
        "observation": {"cameras": ["overhead"], "image_size": [32, 32],
                        "state_indices": [0, 1, 2, 3, 4, 5]},
        "buffer": {"memory_budget_mb": 16},
        "weight_sync": {"every_updates": 5, "every_s": 1.0},
        "stop": {"target_success": 1.0, "success_window": 1000},
    }))
    sink_name = f"sink-{unique}"
    processes.userctl("controller", "controller", env=env)
    processes.userctl("agent", "agent", "--robot-type", "reacher2d", "--site", "lab-a",
                      "--robot-id", robot, "--seed", "0", env=env)
    processes.userctl("rewards", "rewards", "run", REWARD, "--datadir",
                      str(tmp_path / "faust"), env=env)
    processes.userctl("sink", "sink", "--static", "--name", sink_name, "--flush-rows", "40",
                      "--flush-interval", "0.5", "--compact-interval", "0", env=env)
    submit = processes.userctl("submit", "experiments", "submit", str(spec_file), env=env)
    assert submit.wait(timeout=60) == 0, processes.log("submit")
    raw = Follower(fleet_kafka, {catalog.TRANSITIONS_RAW: "beginning"}, role="test-watch")
    metrics = Follower(fleet_kafka, {catalog.LEARNER_METRICS: "beginning"}, role="test-watch")
    try:
        # The leased robot records frames; the sink lands them (rewarded) in Delta.
        wait_until("camera frames of the experiment in Delta",
                   lambda: _delta_frames(root, name) >= 40, timeout_s=60)
        learner = processes.userctl("learn", "learn", name, "--sink-name", sink_name,
                                    "--metrics-s", "0.5", env=env)
        stream = policies.weights_stream(name, "reacher2d")
        seen: dict[str, float | None] = {}

        def learned() -> bool:
            for item in metrics.poll(0.2):
                if isinstance(item, Accepted) and isinstance(item.event,
                                                             events.LearnerMetricsV1) \
                        and item.event.experiment_id == stream:
                    seen.update(item.event.metrics)
            if learner.poll() is not None:
                raise AssertionError(f"the learner exited ({learner.returncode}):\n"
                                     f"{processes.log('learn')[-3000:]}")
            return (seen.get("charts/update_step") or 0) >= 10 \
                and (seen.get("weights/published") or 0) >= 1 \
                and (seen.get("replay/live_steps") or 0) > 0

        wait_until("updates on history and live frames, weights published", learned,
                   timeout_s=75)
        assert (seen.get("replay/history_steps") or 0) >= 40
        assert seen.get("replay/rejected_steps") == 0
        assert "sac + cnn_gaussian" in processes.log("learn")

        # The weights come back: the robot acts with the CNN on its own frames.
        acted: list[TransitionBatch] = []

        def acting_on_frames() -> bool:
            for item in raw.poll(0.2):
                if isinstance(item, Accepted) and isinstance(item.event, TransitionBatch) \
                        and item.event.event.experiment_id == name \
                        and (item.event.policy_version >= 1).any():
                    acted.append(item.event)
            return bool(acted)

        wait_until("steps the robot took with learned weights", acting_on_frames,
                   timeout_s=45)
        assert acted[0].images["overhead"].shape[1:] == (32, 32, 3)
        assert "Traceback" not in processes.log("agent")
        assert stop(learner) == 0
    finally:  # the broker is this module's: nothing to cancel on it
        raw.close()
        metrics.close()
