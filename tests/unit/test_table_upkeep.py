"""Table upkeep (issue 17): compaction then vacuum keeps disk bounded, and every table the sink
writes stays readable by old Delta readers (protocol reader 1 / writer 2, no table features)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from deltalake import DeltaTable

from pipeline import delta_writer, rewards, tables
from pipeline.delta_writer import DeltaWriter
from schemas import events, samples
from topics import tables as contract

SPEC = samples.robot_spec(obs_dim=3, act_dim=2, cameras=("front",), info={"ee_pos": 3,
                                                                          "goal_pos": 3})


def _writer(root: Path, table: str, topic: str) -> DeltaWriter:
    return DeltaWriter(tables.table_path(root, table), topic,
                       lambda p: contract.app_id("sink", topic, p),
                       dedupe=table in contract.STEP_TABLES)


def _fill(root: Path, commits: int = 4) -> dict[str, str]:
    """Every sunk table, written in several small commits, as the sink writes them."""
    fn = rewards.lookup("reach_dense@1")
    raw = _writer(root, tables.TRANSITIONS_RAW, "transitions.raw")
    rewarded = _writer(root, tables.TRANSITIONS, "transitions")
    episodes = _writer(root, tables.EPISODES, "episodes")
    for w in (raw, rewarded, episodes):
        w.assign([0])
    for i in range(commits):
        b = samples.batch(SPEC, 8, first_step=8 * i, episode_len=8, rng=i)
        raw.add(0, i, b)
        rewarded.add(0, i, rewards.apply(fn, b))
        episodes.add(0, i, events.EpisodeStartedV1(
            site="lab-a", robot_id="r1", experiment_id="exp-1",
            episode_id=f"ep-{uuid.uuid4().hex[:6]}", policy_version=i))
        for w in (raw, rewarded, episodes):
            assert w.commit() == {}
    return {name: w.path for name, w in (("raw", raw), ("rewarded", rewarded),
                                         ("episodes", episodes))}


def _data_files(path: str) -> set[Path]:
    return {p for p in Path(path).rglob("*.parquet")}


def test_every_table_stays_at_reader_1_writer_2_without_table_features(tmp_path: Path) -> None:
    paths = _fill(tmp_path)
    for path in paths.values():
        delta_writer.compact(path)
        delta_writer.vacuum(path, 0)
        protocol = DeltaTable(path).protocol()
        assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2), path
        assert not protocol.reader_features and not protocol.writer_features, path


def test_vacuum_after_compaction_deletes_the_replaced_files_and_keeps_every_row(
        tmp_path: Path) -> None:
    path = _fill(tmp_path, commits=6)["raw"]
    before = DeltaTable(path).to_pyarrow_table().sort_by("seq")
    assert delta_writer.compact(path) is not None
    on_disk = _data_files(path)
    live = {Path(u.removeprefix("file://")) for u in DeltaTable(path).file_uris()}
    assert len(on_disk) > len(live), "compaction leaves the small files behind"
    assert delta_writer.vacuum(path, retention_h=24) == [], "too young to delete"
    removed = delta_writer.vacuum(path, retention_h=0)
    assert len(removed) == len(on_disk) - len(live)
    assert _data_files(path) == live
    after = DeltaTable(path).to_pyarrow_table().sort_by("seq")
    assert np.array_equal(after.column("seq").to_numpy(), before.column("seq").to_numpy())
    assert after.num_rows == before.num_rows == 48
