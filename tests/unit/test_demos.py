"""Demos in LeRobot's dataset format: a v3.0 dataset written by the test (with pyarrow, by
the published layout) imports into a real Delta history as demo episodes and exports back
to the same frames; the intervention audit reads the flags back per robot and version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import demos, history, lerobot, tables

TASK = "reach the green sphere"


def _fsl(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def make_dataset(root: Path, lengths: tuple[int, ...] = (5, 7, 6)) -> dict[str, np.ndarray]:
    """A tiny LeRobotDataset v3.0 as LeRobot lays it out; returns its frame columns."""
    rng = np.random.default_rng(0)
    n = sum(lengths)
    cols = {
        "observation.state": rng.normal(size=(n, 6)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
        "info.ee_pos": rng.uniform(0, 0.5, size=(n, 3)).astype(np.float32),
        "info.goal_pos": rng.uniform(0, 0.5, size=(n, 3)).astype(np.float32),
        "complementary_info.is_intervention": rng.uniform(size=n) < 0.5,
        "image": rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8),
    }
    episode = np.repeat(np.arange(len(lengths)), lengths)
    frame = np.concatenate([np.arange(k) for k in lengths])
    import io

    from PIL import Image

    def png(a: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(a).save(out, format="PNG")
        return out.getvalue()

    data = pa.table({
        "observation.state": _fsl(cols["observation.state"]),
        "action": _fsl(cols["action"]),
        "info.ee_pos": _fsl(cols["info.ee_pos"]),
        "info.goal_pos": _fsl(cols["info.goal_pos"]),
        "complementary_info.is_intervention": pa.array(cols["complementary_info.is_intervention"]),
        "observation.images.front": pa.StructArray.from_arrays(
            [pa.array([png(a) for a in cols["image"]], pa.binary()),
             pa.array([None] * n, pa.string())], names=["bytes", "path"]),
        "timestamp": pa.array((frame / 20).astype(np.float32)),
        "frame_index": pa.array(frame.astype(np.int64)),
        "episode_index": pa.array(episode.astype(np.int64)),
        "index": pa.array(np.arange(n, dtype=np.int64)),
        "task_index": pa.array(np.zeros(n, np.int64)),
    })
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(data, root / "data" / "chunk-000" / "file-000.parquet")
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    ends = np.cumsum(lengths)
    pq.write_table(pa.table({"episode_index": list(range(len(lengths))),
                             "tasks": [[TASK]] * len(lengths), "length": list(lengths),
                             "dataset_from_index": (ends - np.array(lengths)).tolist(),
                             "dataset_to_index": ends.tolist()}),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    # pandas (LeRobot's writer) keeps the task strings as the index named "task".
    pq.write_table(pa.table({"task_index": [0], "task": [TASK]}),
                   root / "meta" / "tasks.parquet")

    def feature(dtype: str, shape: list[int]) -> dict[str, object]:
        return {"dtype": dtype, "shape": shape, "names": None}

    info = {"codebase_version": "v3.0", "robot_type": "panda", "fps": 20,
            "total_episodes": len(lengths), "total_frames": n, "total_tasks": 1,
            "chunks_size": 1000, "data_path": lerobot.DATA_PATH, "video_path": None,
            "features": {"observation.state": feature("float32", [6]),
                         "action": feature("float32", [4]),
                         "info.ee_pos": feature("float32", [3]),
                         "info.goal_pos": feature("float32", [3]),
                         "complementary_info.is_intervention": feature("bool", [1]),
                         "observation.images.front": feature("image", [8, 8, 3]),
                         **{k: feature("int64", [1]) for k in
                            ("frame_index", "episode_index", "index", "task_index")},
                         "timestamp": feature("float32", [1])}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return cols


def test_a_lerobot_dataset_round_trips_through_the_delta_history(tmp_path: Path) -> None:
    cols = make_dataset(tmp_path / "in")
    delta = tmp_path / "delta"
    dataset = lerobot.read(tmp_path / "in")
    report = demos.import_episodes(delta, dataset, experiment="exp-demo", robot_type="panda",
                                   source=str(tmp_path / "in"), reward="reach_dense@1")
    assert (report.episodes, report.steps, report.rewarded) == (3, 18, 18)
    assert report.incarnation.startswith(demos.DEMO_PREFIX)
    # Importing the same source again writes nothing.
    again = demos.import_episodes(delta, dataset, experiment="exp-demo", robot_type="panda",
                                  source=str(tmp_path / "in"), reward="reach_dense@1")
    assert again.already and again.rewarded == 0
    raw = history.experiment_rows(delta, tables.TRANSITIONS_RAW, "exp-demo")
    assert raw.num_rows == 18
    assert sorted(raw.column("seq").to_pylist()) == list(range(18))
    ended = history.sql(delta, "SELECT count(*) AS n FROM episodes WHERE steps IS NOT NULL")
    assert ended.column("n")[0].as_py() == 3

    robot_type, episodes = demos.export_episodes(delta, "exp-demo", reward="reach_dense@1")
    out = lerobot.write(tmp_path / "out", lerobot.Dataset(20, robot_type, episodes))
    back = lerobot.read(out)
    assert back.robot_type == "panda" and len(back.episodes) == 3
    assert [e.task for e in back.episodes] == [TASK] * 3
    np.testing.assert_array_equal(np.concatenate([e.observation for e in back.episodes]),
                                  cols["observation.state"])
    np.testing.assert_array_equal(np.concatenate([e.action for e in back.episodes]),
                                  cols["action"])
    np.testing.assert_array_equal(
        np.concatenate([e.intervention for e in back.episodes]),  # type: ignore[misc]
        cols["complementary_info.is_intervention"])
    for key in ("ee_pos", "goal_pos"):
        np.testing.assert_array_equal(np.concatenate([e.info[key] for e in back.episodes]),
                                      cols[f"info.{key}"])
    np.testing.assert_array_equal(np.concatenate([e.images["front"] for e in back.episodes]),
                                  cols["image"])
    # Rewards come from the named reward function: negative distance, so never positive.
    rewards = np.concatenate([e.reward for e in back.episodes])  # type: ignore[misc]
    assert rewards.shape == (18,) and (rewards <= 0).all()
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 18
    assert info["features"]["observation.images.front"]["dtype"] == "image"


def test_the_intervention_audit_leaves_demos_out_and_counts_per_version(
        tmp_path: Path) -> None:
    make_dataset(tmp_path / "in")
    delta = tmp_path / "delta"
    demos.import_episodes(delta, lerobot.read(tmp_path / "in"), experiment="exp-a",
                          robot_type="panda", source="x")
    audit = history.sql(delta, history.INTERVENTIONS_BY_ROBOT_AND_VERSION,
                        {"experiment": "exp-a", "demo_prefix": demos.DEMO_PREFIX})
    assert audit.num_rows == 0  # only demos so far
    audit = history.sql(delta, history.INTERVENTIONS_BY_ROBOT_AND_VERSION,
                        {"experiment": "exp-a", "demo_prefix": "no-such-prefix"})
    assert audit.column("steps").to_pylist() == [18]


@pytest.mark.parametrize("bucket_s", [1, 60, 3600])
def test_the_intervention_rate_over_time_buckets_by_seconds(tmp_path: Path, bucket_s: int
                                                           ) -> None:
    """``userctl history interventions --over-time`` (its default bucket is 60 s): failing
    input, session 5 — ``$bucket_s * 1000000000`` overflowed DuckDB's INT32 for any bucket
    of 3 s or more."""
    make_dataset(tmp_path / "in")
    delta = tmp_path / "delta"
    demos.import_episodes(delta, lerobot.read(tmp_path / "in"), experiment="exp-a",
                          robot_type="panda", source="x")
    rate = history.sql(delta, history.INTERVENTIONS_OVER_TIME,
                       {"experiment": "exp-a", "demo_prefix": "no-such-prefix",
                        "bucket_s": bucket_s})
    assert sum(rate.column("steps").to_pylist()) == 18
    assert rate.column("from_s").to_pylist()[0] == 0


def test_a_video_dataset_is_refused_with_what_to_do(tmp_path: Path) -> None:
    make_dataset(tmp_path / "in")
    info_path = tmp_path / "in" / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.front"]["dtype"] = "video"
    info_path.write_text(json.dumps(info))
    with pytest.raises(lerobot.LeRobotError, match="PyAV"):
        lerobot.read(tmp_path / "in")


def test_the_report_plots_the_intervention_rate_when_someone_took_over(
        tmp_path: Path) -> None:
    from infra.progress import Progress, write_report
    from schemas.experiment import StopSpec
    from tests.unit.test_learn_loop import REACHER, rewarded

    progress = Progress("exp-1", started=0.0)
    for b in range(6):  # samples mark every 7th step a takeover
        progress.on_rewarded(rewarded(REACHER, b), now=float(b))
    stats = progress.types["reacher2d"]
    assert stats.interventions == sum(int(rewarded(REACHER, b).intervention.sum())
                                      for b in range(6)) > 0
    assert 0 < stats.intervention_rate() < 0.5  # type: ignore[operator]
    out = write_report(progress, tmp_path / "run", reason="test", stop=StopSpec())
    assert (out / "interventions.png").stat().st_size > 0
    assert "interventions.png" in (out / "README.md").read_text()
