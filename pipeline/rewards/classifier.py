"""Learned rewards: a binary success classifier on one camera's frames (issue 12).

``userctl rewards train NAME --experiment E`` trains it on the Delta history (frames of
``E``'s steps, labels from the ``success`` column a reward function already wrote, e.g.
``reach_dense@1`` which reads ``info`` — or, with ``--labels human``, from people's
``EpisodeLabeledV1`` events on the ``labels`` topic, `userctl labels add`, over the raw
steps of the episodes they labelled), and registers it as ``NAME@VERSION``: the
directory ``<USER_HOME>/rewards/NAME/VERSION/`` holds ``model.safetensors`` (weights, no
pickle) and ``record.json`` (camera, frame size, threshold, where the data came from, and
precision/recall on held-out episodes).  Every reward lookup registers what is there, so
it runs as a reward job like any other (``userctl rewards run NAME@VERSION``) and
back-fills history (``userctl replay E --reward NAME@VERSION``).

Scoring is batched (``INFERENCE_BATCH`` frames a forward pass).  A batch without the
camera, or with frames of another size, raises :class:`RewardError` — a ``SchemaError``,
so the stream job dead-letters the record.  ``torch`` is imported only when a learned
reward is trained or first scores a batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.rewards._registry import RewardError, Rewards, register
from schemas import events
from schemas.transitions import TransitionBatch
from topics import catalog, tables
from topics.settings import KafkaSettings

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

INFERENCE_BATCH = 256
MODEL_FILE = "model.safetensors"
RECORD_FILE = "record.json"


@dataclass(frozen=True)
class Record:
    """What a learned reward version is: its input, its data, its held-out quality."""

    name: str
    version: str
    camera: str
    image_size: tuple[int, int]
    channels: int
    threshold: float
    experiment: str
    labels: str
    """the reward function whose ``success`` column gave the labels, or ``human``."""
    train_frames: int
    heldout_frames: int
    heldout_episodes: int
    precision: float
    recall: float
    trained_at: str
    head: str = "maxpool"
    """the network's head (:func:`_net`); records written before it existed are
    ``flatten``."""

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


def rewards_dir(home: Path | None = None) -> Path:
    return (home or tables.user_home()) / "rewards"


# ---------------------------------------------------------------------------- network


def _net(channels: int, image_size: tuple[int, int], head: str = "maxpool") -> nn.Module:
    """The classifier.  ``maxpool``: a global max over the conv features, so "the hand is
    on the goal" is one detector wherever it happens in the frame (reach frames: held-out
    precision/recall 0.99 after 400 minibatches, where ``flatten`` — a linear layer over
    every position, the first versions' head, still loaded for them — had 0.69/0.36
    after 1,250)."""
    import torch
    from torch import nn

    if head == "maxpool":
        return nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(2 * channels, 64), nn.ReLU(), nn.Linear(64, 1))
    if head != "flatten":
        raise ValueError(f"unknown classifier head {head!r} (maxpool or flatten)")
    convs = nn.Sequential(
        nn.Conv2d(3, channels, 3, stride=2), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, stride=2), nn.ReLU(),
        nn.Conv2d(2 * channels, 2 * channels, 3, stride=2), nn.ReLU(), nn.Flatten())
    with torch.no_grad():
        flat = convs(torch.zeros(1, 3, *image_size)).shape[1]
    return nn.Sequential(convs, nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, 1))


def _logits(net: nn.Module, frames: npt.NDArray[np.uint8]) -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return net(x.div_(255.0).sub_(0.5)).squeeze(1)


def probabilities(net: nn.Module, frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Success probability of each frame, ``INFERENCE_BATCH`` frames a forward pass."""
    import torch

    out = np.empty(len(frames), np.float32)
    with torch.inference_mode():
        for start in range(0, len(frames), INFERENCE_BATCH):
            part = frames[start:start + INFERENCE_BATCH]
            out[start:start + len(part)] = torch.sigmoid(_logits(net, part)).numpy()
    return out


# ---------------------------------------------------------------------------- training


def heldout_episode(robot_id: npt.NDArray[Any], episode_id: npt.NDArray[Any],
                    fraction: float = 0.2) -> npt.NDArray[np.bool_]:
    """Whether each row's episode is held out (a stable hash of robot and episode)."""
    keys = np.char.add(np.char.add(robot_id.astype(str), "/"), episode_id.astype(str))
    return np.array([zlib.crc32(k.encode()) % 1000 < fraction * 1000 for k in keys.tolist()],
                    dtype=bool)


def train(frames: npt.NDArray[np.uint8], labels: npt.NDArray[np.bool_],
          heldout: npt.NDArray[np.bool_], *, channels: int = 16, epochs: int = 10,
          seed: int = 0, threshold: float = 0.5, head: str = "maxpool"
          ) -> tuple[nn.Module, dict[str, float]]:
    """Train on the rows not ``heldout`` (positives up-weighted to balance the classes);
    returns the network and held-out ``precision``/``recall``."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    net = _net(channels, (frames.shape[1], frames.shape[2]), head)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train_idx = np.flatnonzero(~heldout)
    y = torch.from_numpy(labels.astype(np.float32))
    positives = max(1, int(labels[train_idx].sum()))
    pos_weight = torch.tensor((len(train_idx) - positives) / positives)
    rng = np.random.default_rng(seed)
    for _ in range(max(1, epochs * len(train_idx) // 128)):  # minibatches of 128
        idx = train_idx[rng.integers(0, len(train_idx), 128)]
        loss = F.binary_cross_entropy_with_logits(
            _logits(net, frames[idx]), y[idx], pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    net.eval()
    test = np.flatnonzero(heldout)
    predicted = probabilities(net, frames[test]) >= threshold
    truth = labels[test]
    tp = int((predicted & truth).sum())
    precision = tp / max(1, int(predicted.sum()))
    recall = tp / max(1, int(truth.sum()))
    return net, {"precision": precision, "recall": recall}


def training_frames(root: Path | str, experiment: str, labels: str, camera: str,
                    max_frames: int = 20_000, seed: int = 0
                    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_],
                               npt.NDArray[Any], npt.NDArray[Any]]:
    """Frames of ``camera`` and success labels of ``experiment``'s rows scored by
    ``labels``, streamed from Delta a record batch at a time: every success frame and a
    random share of the others, at most ``max_frames`` in all. Returns frames, labels,
    robot ids, episode ids. Raises ``LookupError`` when there is nothing to learn from."""
    from deltalake import DeltaTable

    dataset = DeltaTable(str(tables.table_path(root, tables.TRANSITIONS))).to_pyarrow_dataset()
    if "images" not in dataset.schema.names:
        raise LookupError(f"the {tables.TRANSITIONS} table holds no camera frames")
    where = (pc.field(tables.PARTITION_COLUMN) == experiment) & (pc.field("reward_fn") == labels)
    counts = dataset.to_table(columns=["success"], filter=where).column("success")
    n, positives = len(counts), int(pc.sum(counts).as_py() or 0)
    if n == 0 or positives == 0:
        raise LookupError(f"experiment {experiment!r} has {n} steps scored by {labels} and "
                          f"{positives} successes: nothing to learn a success classifier from")
    keep_negative = min(1.0, max(0.0, (max_frames - positives) / max(1, n - positives)))
    rng = np.random.default_rng(seed)

    def label(rb: pa.RecordBatch) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        success = np.asarray(rb.column("success").to_numpy(zero_copy_only=False), bool)
        return success, success | (rng.random(len(success)) < keep_negative)

    return _frames(dataset, where, ["success"], label, camera, experiment)


LabelFn = Callable[[pa.RecordBatch], tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]]
"""A record batch -> (success label, rows to take) per row."""


def _frames(dataset: Any, where: Any, columns: list[str], label: LabelFn, camera: str,
            experiment: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_],
                                      npt.NDArray[Any], npt.NDArray[Any]]:
    """``camera``'s frames of the rows ``label`` takes, streamed a record batch at a time."""
    frames, ys, robots, episodes = [], [], [], []
    shape: tuple[int, ...] | None = None
    for rb in dataset.to_batches(columns=["robot_id", "episode_id", *columns, "images",
                                          "layout"], filter=where, batch_size=2048):
        if shape is None and rb.num_rows:  # the frame shape the sink recorded
            cams = json.loads(rb.column("layout")[0].as_py()).get("cameras", {})
            shape = tuple(cams[camera]) if camera in cams else None
        success, take = label(rb)
        images = rb.column("images")
        if camera not in {f.name for f in images.type}:
            continue
        cam = pc.struct_field(images, camera)
        valid = np.asarray(cam.is_valid().to_numpy(zero_copy_only=False), bool)
        take &= valid
        if not take.any():
            continue
        picked = cam.filter(pa.array(take))
        data = np.frombuffer(b"".join(picked.to_pylist()), np.uint8)
        frames.append(data.reshape(int(take.sum()), -1))
        ys.append(success[take])
        robots.append(np.asarray(rb.column("robot_id").to_numpy(zero_copy_only=False))[take])
        episodes.append(np.asarray(rb.column("episode_id").to_numpy(zero_copy_only=False))[take])
    if not frames:
        raise LookupError(f"no {camera!r} frames in experiment {experiment!r}")
    flat = np.concatenate(frames)
    if shape is None or int(np.prod(shape)) != flat.shape[1]:
        raise LookupError(f"{camera!r} frames of {flat.shape[1]} bytes do not match the "
                          f"recorded layout {shape}")
    return (flat.reshape(-1, *shape), np.concatenate(ys), np.concatenate(robots),
            np.concatenate(episodes))


#: ``--labels`` value that trains on people's labels instead of a reward's success column.
HUMAN = "human"


def human_labels(kafka: KafkaSettings, experiment: str, timeout_s: float = 30.0
                 ) -> dict[tuple[str, str], events.EpisodeLabeledV1]:
    """The latest label of each of ``experiment``'s labelled episodes, keyed by (robot id,
    episode id), read from the compacted ``labels`` topic up to its end.  Raises
    ``LookupError`` when the topic cannot be read to its end in ``timeout_s``."""
    from topics.follow import Follower
    from topics.validation import Accepted

    follower = Follower(kafka, {catalog.LABELS: "beginning"}, role="rewards-train")
    try:
        items, complete = follower.read_to_end(timeout_s)
    finally:
        follower.close()
    if not complete:
        raise LookupError(f"could not read the {catalog.LABELS.name} topic to its end within "
                          f"{timeout_s:.0f} s (is the broker up?)")
    out: dict[tuple[str, str], events.EpisodeLabeledV1] = {}
    for item in items:  # one partition: log order, so a later label replaces an earlier one
        event = item.event if isinstance(item, Accepted) else None
        if isinstance(event, events.EpisodeLabeledV1) and event.experiment_id == experiment:
            out[(event.robot_id, event.episode_id)] = event
    return out


def labelled_frames(root: Path | str, experiment: str,
                    labels: Mapping[tuple[str, str], events.EpisodeLabeledV1], camera: str,
                    max_frames: int = 20_000, seed: int = 0
                    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_],
                               npt.NDArray[Any], npt.NDArray[Any]]:
    """Frames of ``camera`` from the raw steps (``transitions_raw``) of the episodes people
    labelled, with their labels: a successful episode's frames from ``success_from_step``
    on (or its last step's alone) are successes, every other frame of a labelled episode
    is not; unlabelled episodes are left out.  Every success frame and a random share of
    the others, at most ``max_frames``.  Raises ``LookupError`` when there is nothing to
    learn from."""
    from deltalake import DeltaTable

    if not any(e.success for e in labels.values()) or all(e.success for e in labels.values()):
        raise LookupError(f"experiment {experiment!r} has {len(labels)} labelled episodes, "
                          f"{sum(e.success for e in labels.values())} successful: a classifier "
                          "needs both kinds (userctl labels add)")
    dataset = DeltaTable(str(tables.table_path(root, tables.TRANSITIONS_RAW))
                         ).to_pyarrow_dataset()
    if "images" not in dataset.schema.names:
        raise LookupError(f"the {tables.TRANSITIONS_RAW} table holds no camera frames")
    where = pc.field(tables.PARTITION_COLUMN) == experiment
    keys = dataset.to_table(columns=["robot_id", "episode_id", "step"], filter=where)
    last: dict[tuple[str, str], int] = {}
    for r, e, t in zip(*(keys.column(c).to_pylist() for c in ("robot_id", "episode_id",
                                                             "step")), strict=True):
        if (r, e) in labels and t > last.get((r, e), -1):
            last[(r, e)] = t
    first_success = {k: (e.success_from_step if e.success_from_step is not None else last[k])
                     for k, e in labels.items() if e.success and k in last}
    n = sum(1 for r, e in zip(keys.column("robot_id").to_pylist(),
                              keys.column("episode_id").to_pylist(), strict=True)
            if (r, e) in last)
    positives = sum(last[k] - s + 1 for k, s in first_success.items() if s <= last[k])
    if n == 0 or positives == 0:
        raise LookupError(f"experiment {experiment!r}: none of the {len(labels)} labelled "
                          f"episodes has a {'success frame' if n else 'step'} in "
                          f"{tables.TRANSITIONS_RAW}")
    keep_negative = min(1.0, max(0.0, (max_frames - positives) / max(1, n - positives)))
    rng = np.random.default_rng(seed)

    def label(rb: pa.RecordBatch) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        pairs = zip(rb.column("robot_id").to_pylist(), rb.column("episode_id").to_pylist(),
                    strict=True)
        step = np.asarray(rb.column("step").to_numpy(zero_copy_only=False))
        labelled = np.zeros(rb.num_rows, bool)
        start = np.full(rb.num_rows, np.iinfo(np.int64).max)
        for i, key in enumerate(pairs):
            labelled[i] = key in last
            start[i] = first_success.get(key, start[i])
        success = labelled & (step >= start)
        return success, labelled & (success | (rng.random(rb.num_rows) < keep_negative))

    return _frames(dataset, where, ["step"], label, camera, experiment)


def save(net: nn.Module, record: Record, home: Path | None = None) -> Path:
    """Write ``record``'s version (weights as safetensors, record as JSON); returns its
    directory.  Written to a temporary directory, then renamed: a version is whole."""
    import safetensors.torch

    final = rewards_dir(home) / record.name / record.version
    tmp = final.with_name(f".{record.version}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                                str(tmp / MODEL_FILE))
    (tmp / RECORD_FILE).write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    tmp.rename(final)
    return final


def next_version(name: str, home: Path | None = None) -> str:
    base = rewards_dir(home) / name
    taken = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.exists() else []
    return str(max(taken, default=0) + 1)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- serving


def reward_fn(record: Record, directory: Path) -> Callable[[TransitionBatch], Rewards]:
    """The pure function of a learned version: frames -> success (reward 1, else 0).
    Loads the weights on first use."""
    net: list[nn.Module] = []
    h, w = record.image_size

    def score(batch: TransitionBatch) -> Rewards:
        frames = batch.images.get(record.camera)
        if frames is None or tuple(frames.shape[1:]) != (h, w, 3):
            got = "no such camera" if frames is None else f"frames {tuple(frames.shape[1:])}"
            raise RewardError(f"{record.id} reads camera {record.camera!r} at {h}x{w}x3; robot "
                              f"{batch.robot_id} sends {got} (cameras: {sorted(batch.images)})")
        if not net:
            import safetensors.torch

            model = _net(record.channels, record.image_size, record.head)
            model.load_state_dict(safetensors.torch.load_file(str(directory / MODEL_FILE)))
            net.append(model.eval())
        success = probabilities(net[0], frames) >= record.threshold
        return Rewards(reward=success.astype(np.float32), success=success,
                       terminated=np.zeros(len(batch), bool))

    score.__doc__ = (f"learned success classifier on {record.camera} ({record.experiment}, "
                     f"held-out precision {record.precision:.2f} recall {record.recall:.2f})")
    return score


def records(home: Path | None = None) -> Iterator[tuple[Record, Path]]:
    """Every learned reward version under ``<home>/rewards``."""
    base = rewards_dir(home)
    if not base.exists():
        return
    for path in sorted(base.glob(f"*/*/{RECORD_FILE}")):
        try:
            raw = json.loads(path.read_text())
            raw["image_size"] = tuple(raw["image_size"])
            raw.setdefault("head", "flatten")  # versions trained before heads were named
            yield Record(**raw), path.parent
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("learned reward %s skipped: %s", path.parent, exc)


_registered: set[str] = set()


def register_learned(home: Path | None = None) -> None:
    """Register every learned reward version found (once each)."""
    for record, directory in records(home):
        if record.id in _registered:
            continue
        register(record.name, record.version)(reward_fn(record, directory))
        _registered.add(record.id)
