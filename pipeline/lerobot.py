"""LeRobotDataset v3.0 on disk, read and written with pyarrow (hop: a LeRobot dataset's
episodes <-> :class:`Episode`, one episode's columns as numpy).

Why not the ``lerobot`` package: LeRobot 0.6 needs Python >= 3.12 (USER's virtualenv is
3.11, and MuJoCo, torch and faust are pinned there), and the standalone
``lerobot-dataset`` wheel pins numpy 2.2, datasets < 4.2 and an older fsspec, which would
downgrade ours.  The v3.0 layout is a published, simple one (the ``LeRobotDataset:v3.0``
release notes and ``lerobot/datasets/utils.py``), so it is written here by that spec::

    meta/info.json                                    codebase_version "v3.0", fps,
                                                      features, path templates, totals
    meta/stats.json                                   mean/std/min/max/count per feature
    meta/tasks.parquet                                task (str) -> task_index
    meta/episodes/chunk-000/file-000.parquet          one row per episode: length, tasks,
                                                      data/chunk_index, data/file_index,
                                                      dataset_from_index, dataset_to_index
    data/chunk-000/file-000.parquet                   one row per frame, many episodes a file

Frame columns: ``observation.state`` and ``action`` (float32 lists), ``next.reward``,
``next.done``, ``next.success``, ``complementary_info.is_intervention`` (the operator chose
this action; HIL-SERL's name), ``info.<key>`` (privileged task state, so USER's reward
functions can score imported demos), ``observation.images.<camera>`` (dtype ``image``:
PNG bytes in ``struct<bytes, path>``, the way LeRobot embeds images in parquet), and the
defaults ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``.
Video features (``dtype: video``, mp4 under ``videos/``) are not read or written: they
need an ffmpeg binding (PyAV) this project does not carry; such a dataset is refused with
a message saying so.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["CODEBASE_VERSION", "Dataset", "Episode", "LeRobotError", "read", "write"]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_MB = 100
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
STATE = "observation.state"
ACTION = "action"
IMAGES = "observation.images."
INFO = "info."
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"
INTERVENTION = "complementary_info.is_intervention"
_DEFAULTS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class LeRobotError(ValueError):
    """A dataset this module cannot read or write; the message says what to do."""


@dataclass(frozen=True)
class Episode:
    """One episode's frames (hop: LeRobot dataset <-> USER's demo episodes).

    ``done[-1]`` ends the episode; ``success`` says the task was solved at that frame.
    """

    observation: npt.NDArray[np.float32]
    """(T, obs_dim) ``observation.state``."""
    action: npt.NDArray[np.float32]
    """(T, act_dim) the executed action."""
    task: str = ""
    reward: npt.NDArray[np.float32] | None = None
    """(T,) ``next.reward`` (None: not recorded)."""
    success: npt.NDArray[np.bool_] | None = None
    """(T,) ``next.success`` (None: not recorded)."""
    intervention: npt.NDArray[np.bool_] | None = None
    """(T,) an operator chose the action (None: not recorded)."""
    info: Mapping[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    """key -> (T, *shape) privileged task state after the action."""
    images: Mapping[str, npt.NDArray[np.uint8]] = field(default_factory=dict)
    """camera -> (T, H, W, 3) uint8, seen with ``observation``."""

    def __len__(self) -> int:
        return int(self.observation.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A whole dataset: ``info.json`` and its episodes in order."""

    fps: int
    robot_type: str
    episodes: list[Episode]
    info: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------- write


def _png(image: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG")
    return out.getvalue()


def _unpng(data: bytes) -> npt.NDArray[np.uint8]:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.uint8)


def _vectors(values: npt.NDArray[np.generic]) -> pa.Array:
    flat = np.ascontiguousarray(values, np.float32).reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])


def _feature(dtype: str, shape: Iterable[int], names: object = None) -> dict[str, object]:
    return {"dtype": dtype, "shape": list(shape), "names": names}


def _stats(values: npt.NDArray[np.floating]) -> dict[str, list[float] | list[int]]:
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [len(v)]}


def write(path: Path | str, dataset: Dataset) -> Path:
    """Write ``dataset`` as a LeRobotDataset v3.0 under ``path`` (created; must be empty
    or absent).  All frames go to one data file and one episodes file: a demo set of this
    project stays far below LeRobot's 100 MB file size.  Raises :class:`LeRobotError`."""
    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise LeRobotError(f"{root} is not empty; export into a new directory")
    episodes = dataset.episodes
    if not episodes:
        raise LeRobotError("no episodes to write")
    first = episodes[0]
    tasks = list(dict.fromkeys(e.task for e in episodes))
    n = sum(len(e) for e in episodes)
    ep_index = np.concatenate([np.full(len(e), i, np.int64) for i, e in enumerate(episodes)])
    frame = np.concatenate([np.arange(len(e), dtype=np.int64) for e in episodes])
    cols: dict[str, pa.Array] = {
        STATE: _vectors(np.concatenate([e.observation for e in episodes])),
        ACTION: _vectors(np.concatenate([e.action for e in episodes])),
    }
    features: dict[str, dict[str, object]] = {
        STATE: _feature("float32", first.observation.shape[1:]),
        ACTION: _feature("float32", first.action.shape[1:]),
    }
    stats = {STATE: _stats(cols[STATE].flatten().to_numpy().reshape(n, -1)),
             ACTION: _stats(cols[ACTION].flatten().to_numpy().reshape(n, -1))}
    done = np.concatenate([np.arange(len(e)) == len(e) - 1 for e in episodes])
    scalars: dict[str, tuple[str, npt.NDArray[np.generic]]] = {DONE: ("bool", done)}
    if all(e.reward is not None for e in episodes):
        scalars[REWARD] = ("float32", np.concatenate([np.asarray(e.reward) for e in episodes]))
    if all(e.success is not None for e in episodes):
        scalars[SUCCESS] = ("bool", np.concatenate([np.asarray(e.success) for e in episodes]))
    if all(e.intervention is not None for e in episodes):
        scalars[INTERVENTION] = ("bool", np.concatenate(
            [np.asarray(e.intervention) for e in episodes]))
    for name, (dtype, values) in scalars.items():
        cols[name] = pa.array(values.astype(np.bool_ if dtype == "bool" else np.float32))
        features[name] = _feature(dtype, (1,))
        stats[name] = _stats(values.astype(np.float64))
    for key in first.info:
        values = np.concatenate([np.asarray(e.info[key], np.float32) for e in episodes])
        cols[INFO + key] = _vectors(values)
        features[INFO + key] = _feature("float32", values.shape[1:])
    for camera in first.images:
        frames = np.concatenate([e.images[camera] for e in episodes])
        struct = pa.StructArray.from_arrays(
            [pa.array([_png(f) for f in frames], pa.binary()),
             pa.array([f"frame_{i:06d}.png" for i in range(n)], pa.string())],
            names=["bytes", "path"])
        cols[IMAGES + camera] = struct
        features[IMAGES + camera] = _feature("image", frames.shape[1:],
                                             ["height", "width", "channels"])
    fps = dataset.fps
    task_of = {t: i for i, t in enumerate(tasks)}
    cols["timestamp"] = pa.array((frame / fps).astype(np.float32))
    cols["frame_index"] = pa.array(frame)
    cols["episode_index"] = pa.array(ep_index)
    cols["index"] = pa.array(np.arange(n, dtype=np.int64))
    cols["task_index"] = pa.array(np.concatenate(
        [np.full(len(e), task_of[e.task], np.int64) for e in episodes]))
    for name, dtype in zip(_DEFAULTS, ("float32", "int64", "int64", "int64", "int64"),
                           strict=True):
        features[name] = _feature(dtype, (1,))
    data_path = root / DATA_PATH.format(chunk_index=0, file_index=0)
    data_path.parent.mkdir(parents=True)
    pq.write_table(pa.table(cols), data_path)

    lengths = np.array([len(e) for e in episodes], np.int64)
    ends = np.cumsum(lengths)
    meta = pa.table({
        "episode_index": pa.array(np.arange(len(episodes), dtype=np.int64)),
        "tasks": pa.array([[e.task] for e in episodes], pa.list_(pa.string())),
        "length": pa.array(lengths),
        "data/chunk_index": pa.array(np.zeros(len(episodes), np.int64)),
        "data/file_index": pa.array(np.zeros(len(episodes), np.int64)),
        "dataset_from_index": pa.array(ends - lengths),
        "dataset_to_index": pa.array(ends),
        "meta/episodes/chunk_index": pa.array(np.zeros(len(episodes), np.int64)),
        "meta/episodes/file_index": pa.array(np.zeros(len(episodes), np.int64)),
    })
    episodes_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True)
    pq.write_table(meta, episodes_path)
    pq.write_table(pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)),
                             "task": pa.array(tasks, pa.string())}),
                   root / "meta" / "tasks.parquet")
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": dataset.robot_type,
        "total_episodes": len(episodes),
        "total_frames": n,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_MB,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
        **{k: v for k, v in dataset.info.items() if k.startswith("user_")},
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4) + "\n")
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4) + "\n")
    return root


# ---------------------------------------------------------------------------- read


def _dense(column: pa.ChunkedArray, n: int) -> npt.NDArray[np.float32]:
    values = column.combine_chunks()
    if pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) \
            or pa.types.is_large_list(values.type):
        return np.asarray(values.flatten().to_numpy(zero_copy_only=False),
                          np.float32).reshape(n, -1)
    return np.asarray(values.to_numpy(zero_copy_only=False), np.float32).reshape(n, -1)


def _tasks(root: Path) -> dict[int, str]:
    path = root / "meta" / "tasks.parquet"
    if path.exists():
        table = pq.read_table(path)
        # pandas writes the task strings as the index ("task" or "__index_level_0__").
        name = next((c for c in ("task", "__index_level_0__") if c in table.column_names),
                    None)
        if name is not None:
            return dict(zip(table.column("task_index").to_pylist(),
                            table.column(name).to_pylist(), strict=True))
    legacy = root / "meta" / "tasks.jsonl"
    if legacy.exists():
        rows = [json.loads(line) for line in legacy.read_text().splitlines() if line]
        return {int(r["task_index"]): str(r["task"]) for r in rows}
    return {}


def read(path: Path | str) -> Dataset:
    """The dataset under ``path``.  Raises :class:`LeRobotError` for a version or feature
    this module does not read (the message says which)."""
    root = Path(path)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise LeRobotError(f"{root} is not a LeRobotDataset: no meta/info.json")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise LeRobotError(f"{root} is LeRobotDataset {version or '(unknown version)'}; "
                           "convert it to v3.0 first (lerobot's "
                           "convert_dataset_v21_to_v30)")
    features: dict[str, dict[str, object]] = info["features"]
    videos = [k for k, f in features.items() if f.get("dtype") == "video"]
    if videos:
        raise LeRobotError(f"{root}: video features {', '.join(videos)} need PyAV/ffmpeg, "
                           "which USER does not carry; re-export the dataset with "
                           "image features, or drop the cameras")
    for needed in (STATE, ACTION):
        if needed not in features:
            raise LeRobotError(f"{root}: no {needed!r} feature; USER's demos need state "
                               "observations and actions")
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotError(f"{root}: no data/chunk-*/file-*.parquet")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    table = table.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])
    tasks = _tasks(root)
    ep = table.column("episode_index").to_numpy()
    episodes = []
    for index in np.unique(ep):
        rows = table.filter(pa.array(ep == index))
        n = rows.num_rows

        def scalar(name: str, rows: pa.Table = rows, n: int = n) -> npt.NDArray[np.float32] | None:
            return _dense(rows.column(name), n)[:, 0] if name in rows.column_names else None

        reward, success, took = scalar(REWARD), scalar(SUCCESS), scalar(INTERVENTION)
        task_index = int(rows.column("task_index")[0].as_py()) if "task_index" in \
            rows.column_names else 0
        episodes.append(Episode(
            observation=_dense(rows.column(STATE), n),
            action=_dense(rows.column(ACTION), n),
            task=tasks.get(task_index, ""),
            reward=reward,
            success=None if success is None else success.astype(bool),
            intervention=None if took is None else took.astype(bool),
            info={k[len(INFO):]: _dense(rows.column(k), n)
                  for k in rows.column_names if k.startswith(INFO)},
            images={k[len(IMAGES):]: np.stack([_unpng(cell["bytes"])
                                               for cell in rows.column(k).to_pylist()])
                    for k in rows.column_names if k.startswith(IMAGES)},
        ))
    return Dataset(fps=int(info.get("fps", 20)), robot_type=str(info.get("robot_type", "")),
                   episodes=episodes, info=info)
