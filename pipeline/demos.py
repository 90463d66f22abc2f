"""Demonstrations in the Delta history: LeRobot datasets in and out (``pipeline.lerobot``).

* :func:`import_episodes` writes episodes as raw steps (``transitions_raw``) and episode
  events (``episodes``) of an experiment, as if an agent had recorded them: one robot id,
  and one **demo incarnation** (``demo-`` + a digest of the source) whose ``seq`` counts
  the frames, so step identity holds, a second import of the same source is a no-op (an
  app transaction per source), and readers can tell demos from robot steps
  (:data:`DEMO_PREFIX`).  Every step is flagged ``intervention`` unless the dataset says
  otherwise (an operator chose the action); ``policy_action`` repeats the action (no
  policy proposed anything).  With a reward function, the steps are scored into
  ``transitions`` at once (``pipeline.history.backfill``), so learners see them.
* :func:`export_episodes` reads an experiment's steps back as LeRobot episodes, rewards and
  success from a reward function when one is named.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline import lerobot, rewards, tables
from schemas import events as ev
from schemas.transitions import TransitionBatch

__all__ = ["DEMO_PREFIX", "ImportReport", "export_episodes", "import_episodes",
           "to_batches"]

log = logging.getLogger(__name__)

#: Incarnations of imported or recorded demos start with this.
DEMO_PREFIX = "demo-"

#: Wall clock of imported steps: the dataset's own timestamps from this origin (ns).
_EPOCH_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class ImportReport:
    experiment: str
    incarnation: str
    episodes: int
    steps: int
    already: bool = False
    rewarded: int = 0


def demo_incarnation(source: str) -> str:
    """The demo incarnation of a source (a dataset path, a recording run)."""
    return DEMO_PREFIX + hashlib.sha256(source.encode()).hexdigest()[:11]


def to_batches(dataset: lerobot.Dataset, *, experiment: str, robot_type: str,
               robot_id: str, site: str, incarnation: str
               ) -> tuple[list[TransitionBatch], list[ev.Envelope]]:
    """One raw batch per episode, and its started/ended events (hop: LeRobot episodes ->
    the ``transitions.raw`` shape)."""
    batches: list[TransitionBatch] = []
    events: list[ev.Envelope] = []
    seq = 0
    dt_ns = int(1e9 / max(dataset.fps, 1))
    for i, episode in enumerate(dataset.episodes):
        n = len(episode)
        episode_id = f"{robot_id}.{incarnation}.{i:06d}"
        took = (np.ones(n, bool) if episode.intervention is None
                else np.asarray(episode.intervention, bool))
        success = bool(episode.success is not None and episode.success.any())
        reason = ev.EpisodeEndReason.TASK_DONE if success else ev.EpisodeEndReason.TIME_LIMIT
        end_reason = np.full(n, "", dtype=object)
        end_reason[-1] = reason.value
        observed = _EPOCH_NS + (seq + np.arange(n, dtype=np.int64)) * dt_ns
        truncated = np.zeros(n, bool)
        truncated[-1] = True
        batches.append(TransitionBatch.build(
            ev.TransitionBatchV2(site=site, robot_id=robot_id, experiment_id=experiment,
                                 robot_type=robot_type, n_steps=n, incarnation=incarnation),
            episode_id=np.full(n, episode_id), step=np.arange(n, dtype=np.int64),
            seq=np.arange(seq, seq + n, dtype=np.int64),
            observation=episode.observation, action=episode.action,
            policy_version=np.zeros(n, np.int64), observed_ns=observed,
            intervention=took, policy_action=np.where(took[:, None], episode.action, 0),
            truncated=truncated,
            # LeRobot keeps no observation after the last frame: the last one stands in.
            final_observation=episode.observation[-1:],
            end_reason=end_reason.astype(np.str_),
            images=dict(episode.images) or None,
            final_images={k: v[-1:] for k, v in episode.images.items()} or None,
            info={k: np.asarray(v, np.float32) for k, v in episode.info.items()} or None,
        ))
        events += [
            ev.EpisodeStartedV1(site=site, robot_id=robot_id, experiment_id=experiment,
                                episode_id=episode_id, policy_version=0,
                                task=episode.task[:1000]),
            ev.EpisodeEndedV1(site=site, robot_id=robot_id, experiment_id=experiment,
                              episode_id=episode_id, steps=n, reason=reason,
                              detail="demonstration", duration_s=n / max(dataset.fps, 1),
                              interventions=int(took.sum()), takeovers=int(took.any()),
                              first_policy_version=0, last_policy_version=0,
                              success=success if episode.success is not None else None),
        ]
        seq += n
    return batches, events


def _app_id(experiment: str, incarnation: str) -> str:
    return f"user-demos-{experiment}-{incarnation}"


def import_episodes(root: Path | str, dataset: lerobot.Dataset, *, experiment: str,
                    robot_type: str, source: str, robot_id: str | None = None,
                    site: str = "demos", reward: str | None = None) -> ImportReport:
    """Write ``dataset`` into ``experiment``'s history (module docstring).  Idempotent per
    ``source``: a second import of it writes nothing (``already``)."""
    # Delta only here: to_batches runs where deltalake is not installed (device benches).
    from deltalake import CommitProperties, Transaction, write_deltalake

    from pipeline import history
    from pipeline.delta_writer import open_table

    incarnation = demo_incarnation(f"{experiment}\n{source}")
    robot_id = robot_id or f"demo-{robot_type}"
    raw_path = tables.table_path(root, tables.TRANSITIONS_RAW)
    app_id = _app_id(experiment, incarnation)
    dt = open_table(raw_path)
    already = dt is not None and (dt.transaction_version(app_id) or 0) > 0
    steps = sum(len(e) for e in dataset.episodes)
    if not already:
        batches, events = to_batches(dataset, experiment=experiment, robot_type=robot_type,
                                     robot_id=robot_id, site=site, incarnation=incarnation)
        source_of = tables.Source("demos", 0, -1)
        raw = pa.concat_tables([tables.batch_rows(b, source_of) for b in batches],
                               promote_options="permissive")
        episode_rows = pa.concat_tables([tables.event_rows(e, source_of) for e in events],
                                        promote_options="permissive")
        ep_path = tables.table_path(root, tables.EPISODES)
        ep_dt = open_table(ep_path)
        write_deltalake(ep_dt if ep_dt is not None else ep_path, episode_rows, mode="append",
                        schema_mode="merge", partition_by=list(tables.PARTITION_BY))
        # The raw rows last, with the app transaction: it marks the import done.
        write_deltalake(dt if dt is not None else raw_path, raw, mode="append",
                        schema_mode="merge", partition_by=list(tables.PARTITION_BY),
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(app_id, 1)]))
    rewarded = 0
    if reward is not None:
        rewarded = history.backfill(root, experiment, rewards.lookup(reward)).steps
    return ImportReport(experiment, incarnation, len(dataset.episodes), steps, already,
                        rewarded)


def export_episodes(root: Path | str, experiment: str, *, reward: str | None = None,
                    demos_only: bool = False) -> tuple[str, list[lerobot.Episode]]:
    """``experiment``'s episodes (robot type, episodes in step order).  With ``reward``,
    each frame carries that function's reward and success.  Raises
    ``history.HistoryError`` when there is nothing to export."""
    from pipeline import history

    raw = history.experiment_rows(root, tables.TRANSITIONS_RAW, experiment)
    if demos_only and raw.num_rows:
        raw = raw.filter(pa.array([str(x).startswith(DEMO_PREFIX) for x in
                                   raw.column("incarnation").to_pylist()]))
    if raw.num_rows == 0:
        raise history.HistoryError(f"experiment {experiment!r} has no steps to export")
    types = set(raw.column("robot_type").to_pylist())
    if len(types) > 1:
        raise history.HistoryError(f"experiment {experiment!r} has robot types "
                                   f"{', '.join(sorted(types))}; a LeRobot dataset holds one")
    fn = rewards.lookup(reward) if reward else None
    tasks = _episode_tasks(root, experiment)
    parts: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    order: list[str] = []
    for batch in tables.batches_from_rows(raw):
        scored = rewards.apply(fn, batch) if fn is not None else None
        ids = np.asarray(batch.episode_id).astype(str)
        for episode_id in dict.fromkeys(ids.tolist()):
            m = ids == episode_id
            if episode_id not in parts:
                order.append(episode_id)
            part: dict[str, np.ndarray] = {
                "observation": batch.observation[m].reshape(int(m.sum()), -1),
                "action": batch.action[m].reshape(int(m.sum()), -1),
                "intervention": np.asarray(batch.intervention[m], bool),
                **{f"info.{k}": v[m] for k, v in batch.info.items()},
                **{f"images.{k}": v[m] for k, v in batch.images.items()},
            }
            if scored is not None:
                part["reward"] = scored.reward[m]
                part["success"] = scored.success[m]
            parts[episode_id].append(part)
    episodes = []
    for episode_id in order:
        cols = {k: np.concatenate([p[k] for p in parts[episode_id]])
                for k in parts[episode_id][0]}
        episodes.append(lerobot.Episode(
            observation=cols["observation"].astype(np.float32),
            action=cols["action"].astype(np.float32),
            task=tasks.get(episode_id, ""),
            reward=cols.get("reward"), success=cols.get("success"),
            intervention=cols["intervention"],
            info={k[5:]: v for k, v in cols.items() if k.startswith("info.")},
            images={k[7:]: v for k, v in cols.items() if k.startswith("images.")},
        ))
    return types.pop(), episodes


def _episode_tasks(root: Path | str, experiment: str) -> dict[str, str]:
    from pipeline.delta_writer import open_table

    dt = open_table(tables.table_path(root, tables.EPISODES))
    if dt is None:
        return {}
    dataset = dt.to_pyarrow_dataset()
    if "task" not in dataset.schema.names:
        return {}
    rows = dataset.to_table(columns=["episode_id", "task"],
                            filter=(ds.field("experiment_id") == experiment)
                            & ds.field("task").is_valid())
    return dict(zip(rows.column("episode_id").to_pylist(), rows.column("task").to_pylist(),
                    strict=True))


def new_source_id() -> str:
    """A source id for a recording run (no file behind it)."""
    return f"record-{uuid.uuid4().hex}"
