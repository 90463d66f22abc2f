"""The learner's Delta adapter on a table written with the sink's own row format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import CommitProperties, Transaction, write_deltalake

from learners import _history, service
from learners.loop import Steps
from pipeline import sink
from pipeline import tables as sink_tables
from schemas.transitions import RewardedTransitionBatch
from tests.unit.test_learn_loop import REACHER, REWARD, rewarded
from topics import tables

SINK = "delta-sink"
TOPIC = "transitions"


def commit(root: Path, batches: list[tuple[RewardedTransitionBatch, int, int]],
           txns: dict[int, int]) -> None:
    """Rows of ``(batch, partition, offset)`` and app transactions, in one commit."""
    rows = pa.concat_tables(
        [sink_tables.batch_rows(b, sink_tables.Source(TOPIC, p, o)) for b, p, o in batches],
        promote_options="permissive")
    write_deltalake(tables.table_path(root, tables.TRANSITIONS), rows, mode="append",
                    schema_mode="merge", partition_by=[tables.PARTITION_COLUMN],
                    commit_properties=CommitProperties(app_transactions=[
                        Transaction(tables.app_id(SINK, TOPIC, p), o) for p, o in txns.items()]))


def test_history_holds_the_experiments_rows_of_its_reward_fn_and_where_they_end(
        tmp_path: Path) -> None:
    r1 = [rewarded(REACHER, b, robot_id="r1") for b in range(6)]
    r2 = [rewarded(REACHER, b, robot_id="r2") for b in range(3)]
    prior = [rewarded(REACHER, b, robot_id="p1", experiment_id="old") for b in range(2)]
    noise = [rewarded(REACHER, 0, robot_id="x", experiment_id="other"),
             rewarded(REACHER, 0, robot_id="r1", reward_fn="sparse@2")]
    commit(tmp_path, [(b, 0, i) for i, b in enumerate(r1[:3])] + [(b, 2, i) for i, b in
                                                                  enumerate(r2)], {0: 2, 2: 2})
    commit(tmp_path, [(b, 0, 3 + i) for i, b in enumerate(r1[3:])]
           + [(b, 1, i) for i, b in enumerate(prior + noise)], {0: 5, 1: 3})

    history = _history.read(tmp_path, experiments=("exp-1", "old"), reward_fn=REWARD,
                            topic=TOPIC, partitions=[0, 1, 2, 3], sink_name=SINK)

    assert history.version == 1
    assert history.offsets == {0: 5, 1: 3, 2: 2}
    assert history.rows == 90 + 20
    chunks = list(history.steps(chunk_rows=25))
    mine = [c for c in chunks if c.experiment_id == "exp-1"]
    assert sum(len(c) for c in mine) == 90
    assert {c.robot_type for c in chunks} == {"reacher2d"}
    assert sum(len(c) for c in chunks if c.experiment_id == "old") == 20
    for c in mine:  # each stream's steps come in the order they were taken
        key = np.char.add(np.char.add(c.steps.robot_id.astype(str), "/"), c.incarnation)
        same = key[1:] == key[:-1]
        assert (np.diff(c.seq)[same] > 0).all()

    # Row for row what the live path makes of the same batch.
    got = [c for c in chunks if c.experiment_id == "exp-1"]
    rows = {(str(r), str(e), int(s)): (c, i) for c in got for i, (r, e, s) in enumerate(
        zip(c.steps.robot_id, c.steps.episode_id, c.steps.step, strict=True))}
    for batch in (r1[2], r2[2]):  # r1[2] holds a truncated step (24) with a final obs
        want = Steps.of_batch(batch)
        for i in range(len(want)):
            c, j = rows[(batch.robot_id, str(want.steps.episode_id[i]), int(want.steps.step[i]))]
            for name in ("observation", "action", "reward", "terminated", "truncated",
                         "policy_version", "next_observation", "intervention"):
                a, b = getattr(want.steps, name)[i], getattr(c.steps, name)[j]
                if name == "next_observation" and not np.asarray(want.steps.truncated)[i]:
                    continue
                np.testing.assert_array_equal(a, b, err_msg=name)
            assert want.success[i] == c.success[j]
            assert (want.incarnation[i], want.seq[i]) == (c.incarnation[j], c.seq[j])
    assert np.asarray(Steps.of_batch(r1[2]).steps.truncated).any()


def test_no_table_yet_means_no_history(tmp_path: Path) -> None:
    history = _history.read(tmp_path, experiments=("exp-1",), reward_fn=REWARD, topic=TOPIC,
                            partitions=[0], sink_name=SINK)
    assert (history.version, history.offsets, history.rows) == (None, {}, 0)
    assert list(history.steps()) == []


def test_the_learner_reads_where_the_sink_writes_by_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("USER_SINK_ROOT", "USER_SINK_NAME", "USER_LEARN_DELTA_ROOT",
                 "USER_LEARN_SINK_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert service.LearnSettings().delta_root == sink.SinkSettings().root
    assert service.LearnSettings().sink_name == sink.SinkSettings().name
    monkeypatch.setenv("USER_SINK_ROOT", str(tmp_path))
    assert service.LearnSettings().delta_root == sink.SinkSettings().root == tmp_path


def test_fresh_moves_earlier_checkpoints_aside_so_a_resume_cannot_pick_them(
        tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "checkpoint-000000000500.safetensors").write_bytes(b"old")
    service._move_aside(directory)
    assert not directory.exists()
    (aside,) = tmp_path.glob("checkpoints.before-*")
    assert (aside / "checkpoint-000000000500.safetensors").read_bytes() == b"old"
