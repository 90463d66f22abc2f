"""Learned rewards (issue 12): a success classifier trained on frames from Delta,
registered as NAME@VERSION (safetensors + JSON), scored in batches by the reward job,
which dead-letters frames of the wrong shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deltalake import write_deltalake

from pipeline import reward_job, rewards
from pipeline import tables as sink_tables
from pipeline.rewards import classifier
from schemas import events, samples, transitions
from schemas.events import DeadLetterV1
from topics import catalog, serde, tables, validation

torch.set_num_threads(1)

ROBOT = samples.robot_spec(obs_dim=6, act_dim=2, robot_type="reacher2d", cameras=("overhead",),
                           image_hw=(32, 32))


def frames_with_success(batch: transitions.TransitionBatch, rng: np.random.Generator
                        ) -> tuple[transitions.TransitionBatch, np.ndarray]:
    """Frames dark with noise, with a bright square on success steps (every 4th step)."""
    success = batch.step % 4 == 0
    frames = rng.integers(0, 60, (len(batch), 32, 32, 3), dtype=np.uint8)
    frames[success, 10:22, 10:22] = 250
    batch.images["overhead"][:] = frames
    return batch, success


def write_history(root: Path, batches: int = 8) -> None:
    rng = np.random.default_rng(0)
    for b in range(batches):
        raw = samples.batch(ROBOT, 40, rng=b, robot_id="r1", experiment_id="exp-px",
                            first_step=b * 40, episode_len=20)
        raw, success = frames_with_success(raw, rng)
        rewarded = transitions.RewardedTransitionBatch.from_raw(
            raw, reward_fn="reach_dense@1", reward=success.astype(np.float32),
            success=success, terminated=np.zeros(40, bool))
        rows = sink_tables.batch_rows(rewarded, sink_tables.Source("transitions", 0, b))
        write_deltalake(tables.table_path(root, tables.TRANSITIONS), rows, mode="append",
                        schema_mode="merge", partition_by=[tables.PARTITION_COLUMN])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("USER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def train_and_register(root: Path, name: str, batches: int) -> classifier.Record:
    frames, success, robots, episodes = classifier.training_frames(
        root, "exp-px", "reach_dense@1", "overhead")
    assert frames.shape[1:] == (32, 32, 3) and success.sum() == 10 * batches
    heldout = classifier.heldout_episode(robots, episodes, fraction=0.3)
    assert 0 < heldout.sum() < len(heldout)
    net, quality = classifier.train(frames, success, heldout, epochs=15)
    record = classifier.Record(
        name=name, version=classifier.next_version(name), camera="overhead",
        image_size=(32, 32), channels=16, threshold=0.5, experiment="exp-px",
        labels="reach_dense@1", train_frames=int((~heldout).sum()),
        heldout_frames=int(heldout.sum()), heldout_episodes=1, precision=quality["precision"],
        recall=quality["recall"], trained_at=classifier.now())
    classifier.save(net, record)
    return record


def test_a_classifier_trained_on_delta_frames_is_registered_and_scores_held_out_frames(
        tmp_path: Path, home: Path) -> None:
    write_history(tmp_path)
    record = train_and_register(tmp_path, "px_success", 8)
    assert record.version == "1"
    assert record.precision >= 0.9 and record.recall >= 0.9, record
    stored = home / "rewards" / "px_success" / "1"
    assert sorted(p.name for p in stored.iterdir()) == ["model.safetensors", "record.json"]
    assert json.loads((stored / "record.json").read_text())["recall"] == record.recall
    fn = rewards.lookup("px_success@1")  # registered like any reward function
    batch, success = frames_with_success(
        samples.batch(ROBOT, 300, rng=99, robot_id="r9", episode_len=50),
        np.random.default_rng(5))
    out = fn(batch)  # 300 frames: two inference batches
    assert out.reward.dtype == np.float32
    assert (out.success == success).mean() >= 0.95


def test_a_version_saved_before_heads_were_named_still_loads_and_scores(
        tmp_path: Path, home: Path) -> None:
    """record.json without ``head``: the first versions' flatten network is built, so
    its weights load and it scores as it did."""
    write_history(tmp_path, batches=4)
    frames, success, robots, episodes = classifier.training_frames(
        tmp_path, "exp-px", "reach_dense@1", "overhead")
    old, quality = classifier.train(frames, success,
                                    classifier.heldout_episode(robots, episodes, fraction=0.3),
                                    epochs=15, head="flatten")
    stored = classifier.save(old, classifier.Record(
        name="px_old", version="1", camera="overhead", image_size=(32, 32), channels=16,
        threshold=0.5, experiment="exp-px", labels="reach_dense@1", train_frames=len(frames),
        heldout_frames=0, heldout_episodes=0, precision=quality["precision"],
        recall=quality["recall"], trained_at=classifier.now()))
    raw = json.loads((stored / "record.json").read_text())
    assert raw.pop("head") == "maxpool"
    (stored / "record.json").write_text(json.dumps(raw))
    ((loaded, _),) = [(r, d) for r, d in classifier.records() if r.name == "px_old"]
    assert loaded.head == "flatten"
    batch, _ = frames_with_success(
        samples.batch(ROBOT, 40, rng=7, robot_id="r9", episode_len=20),
        np.random.default_rng(3))
    out = rewards.lookup("px_old@1")(batch)
    expected = classifier.probabilities(old, batch.images["overhead"]) >= 0.5
    assert np.array_equal(out.success, expected)


def test_the_classifier_job_dead_letters_frames_of_the_wrong_shape(
        tmp_path: Path, home: Path) -> None:
    write_history(tmp_path, batches=4)
    train_and_register(tmp_path, "px_shape", 4)
    fn = rewards.lookup("px_shape@1")
    wrong = samples.batch(samples.robot_spec(obs_dim=6, act_dim=2, robot_type="reacher2d",
                                             cameras=("overhead",), image_hw=(48, 48)), 10)
    enc = serde.encode(catalog.TRANSITIONS_RAW, wrong)
    record = validation.Record(topic=enc.topic, partition=0, offset=3, value=enc.value,
                               key=enc.key, headers=tuple(enc.headers))
    out = reward_job.score(fn, record, out_topic="transitions", dlq_topic="dlq")
    assert out.topic == "dlq"
    letter = serde.decode(catalog.DLQ, out.value, out.headers)
    assert isinstance(letter, DeadLetterV1)
    assert "reads camera 'overhead' at 32x32x3" in letter.detail and "(48, 48, 3)" in letter.detail


# ---------------------------------------------------------------------------- human labels


def write_raw(root: Path) -> None:
    """Raw steps (the facts table) of four 20-step episodes of exp-px, with frames whose
    first byte is the step number in the episode (which step a frame came from)."""
    for b in range(2):
        raw = samples.batch(ROBOT, 40, rng=b, robot_id="r1", experiment_id="exp-px",
                            first_step=b * 40, episode_len=20)
        raw.images["overhead"][:, 0, 0, 0] = raw.step
        rows = sink_tables.batch_rows(raw, sink_tables.Source("transitions.raw", 0, b))
        write_deltalake(tables.table_path(root, tables.TRANSITIONS_RAW), rows, mode="append",
                        schema_mode="merge", partition_by=[tables.PARTITION_COLUMN])


def label(episode: str, success: bool, from_step: int | None = None) -> events.EpisodeLabeledV1:
    return events.EpisodeLabeledV1(experiment_id="exp-px", robot_id="r1", episode_id=episode,
                                   success=success, success_from_step=from_step,
                                   labeled_by="tester")


def test_human_labels_pick_the_success_frames_of_the_episodes_people_labelled(
        tmp_path: Path) -> None:
    write_raw(tmp_path)
    episodes = samples.batch(ROBOT, 80, rng=0, robot_id="r1", experiment_id="exp-px",
                             episode_len=20).episode_id
    e0, e1, e2, _unlabelled = dict.fromkeys(episodes.tolist())
    labels = {("r1", e0): label(e0, True, from_step=15),  # steps 15-19 show success
              ("r1", e1): label(e1, True),                 # its last step (19) only
              ("r1", e2): label(e2, False)}
    frames, success, robots, eps = classifier.labelled_frames(tmp_path, "exp-px", labels,
                                                              "overhead")
    assert len(frames) == 60 and set(eps.tolist()) == {e0, e1, e2}  # the unlabelled left out
    steps = frames[:, 0, 0, 0].astype(int)
    assert sorted(steps[success].tolist()) == [15, 16, 17, 18, 19, 19]
    assert steps[success & (eps == e1)].tolist() == [19]
    assert not success[eps == e2].any() and set(robots.tolist()) == {"r1"}


def test_human_labels_of_one_kind_only_are_refused_with_the_reason(tmp_path: Path) -> None:
    write_raw(tmp_path)
    with pytest.raises(LookupError, match="needs both kinds"):
        classifier.labelled_frames(tmp_path, "exp-px", {("r1", "e"): label("e", True)},
                                   "overhead")


def test_a_label_event_is_keyed_by_its_episode_and_a_failure_has_no_success_step() -> None:
    event = label("ep-7", True, from_step=3)
    assert serde.key_for(catalog.LABELS, event) == "exp-px/r1/ep-7"
    with pytest.raises(ValueError, match="successful episodes only"):
        label("ep-8", False, from_step=3)
