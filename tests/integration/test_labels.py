"""People's episode labels as events (issue 12): `userctl rewards label` writes
``EpisodeLabeledV1`` to the ``labels`` topic (real broker), and `userctl rewards train
--labels human` learns a success classifier from the raw Delta steps of the labelled
episodes — an episode's latest label counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from deltalake import write_deltalake

from pipeline import tables as sink_tables
from schemas import samples
from tests.conftest import Processes
from topics import tables
from topics.settings import KafkaSettings

ROBOT = samples.robot_spec(obs_dim=6, act_dim=2, robot_type="reacher2d", cameras=("overhead",),
                           image_hw=(32, 32))
SUCCESS_FROM = 12  # in a successful episode, frames show the goal reached from this step


def write_raw(root: Path, experiment: str, episodes: int) -> list[str]:
    """``episodes`` 20-step episodes of robot r1 in ``transitions_raw``: dark noise, and a
    bright square from step SUCCESS_FROM on in the even episodes.  Returns episode ids."""
    rng = np.random.default_rng(0)
    raw = samples.batch(ROBOT, 20 * episodes, rng=0, robot_id="r1", experiment_id=experiment,
                        episode_len=20)
    frames = rng.integers(0, 60, (len(raw), 32, 32, 3), dtype=np.uint8)
    ids = list(dict.fromkeys(raw.episode_id.tolist()))
    bright = np.isin(raw.episode_id, ids[::2]) & (raw.step >= SUCCESS_FROM)
    frames[bright, 8:24, 8:24] = 250
    raw.images["overhead"][:] = frames
    rows = sink_tables.batch_rows(raw, sink_tables.Source("transitions.raw", 0, 0))
    write_deltalake(tables.table_path(root, tables.TRANSITIONS_RAW), rows, mode="append",
                    partition_by=[tables.PARTITION_COLUMN])
    return ids


def test_labels_written_with_userctl_train_a_learned_reward(
        kafka: KafkaSettings, unique: str, processes: Processes, tmp_path: Path) -> None:
    experiment, root = f"lbl-{unique}", tmp_path / "delta"
    ids = write_raw(root, experiment, episodes=8)
    env = {**os.environ, "USER_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "USER_HOME": str(tmp_path / "home")}

    def userctl(name: str, *args: str) -> str:
        proc = processes.userctl(name, *args, env=env)
        assert proc.wait(timeout=120) == 0, processes.log(name)
        return processes.log(name)

    # A first verdict corrected later: the later label of episode 0 is the one that counts.
    userctl("wrong", "rewards", "label", experiment, "r1", ids[0], "--failure")
    for i, episode in enumerate(ids[:6]):  # episodes 6 and 7 stay unlabelled
        verdict = ["--success", "--from-step", str(SUCCESS_FROM)] if i % 2 == 0 \
            else ["--failure"]
        userctl(f"label-{i}", "rewards", "label", experiment, "r1", episode, *verdict,
                "--by", "tester")
    listing = userctl("labels", "rewards", "labels", experiment)
    assert listing.count("success from step 12") == 3 and listing.count("failure") == 3

    out = userctl("train", "rewards", "train", "px_human", "--experiment", experiment,
                  "--labels", "human", "--root", str(root), "--epochs", "10")
    assert "registered px_human@1" in out, out
    record = json.loads((tmp_path / "home" / "rewards" / "px_human" / "1" / "record.json")
                        .read_text())
    assert record["labels"] == "human"
    assert record["train_frames"] + record["heldout_frames"] == 6 * 20  # labelled episodes only
