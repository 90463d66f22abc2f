"""The sink's Delta writer, without Kafka: the exactly-once rules in milliseconds.

Each record is handed over as ``(partition, offset, payload)``, as the Kafka runner does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipeline import delta_writer, tables
from pipeline.delta_writer import DeltaWriter
from schemas import samples, transitions
from topics import tables as contract

TOPIC = "transitions.raw.test"
SPEC = samples.robot_spec(obs_dim=3, act_dim=2)


def writer(root: Path, name: str = "sink") -> DeltaWriter:
    return DeltaWriter(tables.table_path(root, tables.TRANSITIONS_RAW), TOPIC,
                       lambda p: contract.app_id(name, TOPIC, p), dedupe=True)


def batch(first: int, n: int = 10, *, robot: str = "r1", incarnation: str = "inc-a",
          clock_shift_s: float = 0.0) -> transitions.TransitionBatch:
    b = samples.batch(SPEC, n, first_step=first, robot_id=robot, incarnation=incarnation,
                      episode_len=50, rng=first)
    if clock_shift_s:
        shift = np.int64(clock_shift_s * 1e9)
        cols = {f.name: getattr(b, f.name) for f, _ in transitions.columns(type(b))}
        cols["observed_ns"] = b.observed_ns + shift
        cols["acted_ns"] = b.acted_ns + shift
        b = transitions.TransitionBatch(event=b.event, **cols)
    return b


def rows(root: Path) -> pa.Table:
    return DeltaTable(tables.table_path(root, tables.TRANSITIONS_RAW)).to_pyarrow_table()


def ids(root: Path) -> list[tuple[str, str, int]]:
    t = rows(root)
    return sorted(zip(*(t.column(c).to_pylist() for c in contract.STEP_ID), strict=True))


def version(root: Path, name: str, partition: int) -> int | None:
    dt = DeltaTable(tables.table_path(root, tables.TRANSITIONS_RAW))
    return dt.transaction_version(contract.app_id(name, TOPIC, partition))


def test_a_fresh_partition_is_read_from_its_beginning_then_after_its_last_commit(
        tmp_path: Path) -> None:
    w = writer(tmp_path)
    assert w.assign([0, 1]) == {0: None, 1: None}
    w.add(0, 0, batch(0))
    w.add(0, 1, batch(10))
    assert w.commit() == {}
    assert writer(tmp_path).assign([0, 1]) == {0: 2, 1: None}
    assert version(tmp_path, "sink", 0) == 1


def test_a_retried_batch_is_written_once(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([0])
    assert w.add(0, 0, batch(0))
    assert not w.add(0, 0, batch(0)), "the same offset twice is a retry"
    w.commit()
    # A restarted writer is handed the same offsets again (the runner re-read them).
    again = writer(tmp_path)
    start = again.assign([0])
    assert start == {0: 1}
    assert not again.add(0, 0, batch(0))
    again.add(0, 1, batch(10))
    again.commit()
    assert ids(tmp_path) == sorted(("r1", "inc-a", s) for s in range(20))


def test_two_writers_of_one_partition_write_each_row_once(tmp_path: Path) -> None:
    a, b = writer(tmp_path), writer(tmp_path)
    a.assign([0])
    b.assign([0])
    for w in (a, b):
        w.add(0, 0, batch(0))
        w.add(0, 1, batch(10))
    assert a.commit() == {}
    # The loser re-reads the app transactions: its rows are dropped, it reads on after them.
    assert b.commit() == {0: 2}
    assert not b.buffer
    assert not b.add(0, 1, batch(10))
    b.add(0, 2, batch(20))
    assert b.commit() == {}
    assert ids(tmp_path) == sorted(("r1", "inc-a", s) for s in range(30))
    assert version(tmp_path, "sink", 0) == 2


def test_a_writer_losing_the_race_inside_the_commit_drops_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = writer(tmp_path), writer(tmp_path)
    a.assign([0])
    a.add(0, 0, batch(0))
    a.commit()
    b.assign([0])
    b.add(0, 1, batch(10))
    a.add(0, 1, batch(10))
    # b checks the table, then a commits before b's write lands: Delta refuses b's commit.
    snapshot = delta_writer.open_table(b.path)
    real = delta_writer.open_table

    def stale_then_real(path: str) -> DeltaTable | None:
        monkeypatch.setattr(delta_writer, "open_table", real)
        assert a.commit() == {}
        return snapshot

    monkeypatch.setattr(delta_writer, "open_table", stale_then_real)
    assert b.commit() == {0: 2}
    assert ids(tmp_path) == sorted(("r1", "inc-a", s) for s in range(20))


def test_a_fenced_zombie_never_commits_stale_rows(tmp_path: Path) -> None:
    zombie = writer(tmp_path)
    zombie.assign([0])
    zombie.add(0, 0, batch(0))
    zombie.commit()
    zombie.add(0, 1, batch(10))  # buffered when it lost the partition without noticing
    owner = writer(tmp_path)
    assert owner.assign([0]) == {0: 1}
    owner.add(0, 1, batch(10))
    owner.add(0, 2, batch(20))
    owner.commit()
    assert zombie.commit() == {0: 3}, "the zombie's version is behind the table's"
    assert ids(tmp_path) == sorted(("r1", "inc-a", s) for s in range(30))
    assert version(tmp_path, "sink", 0) == 2


def test_a_refused_record_moves_the_partition_without_rows(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([0])
    w.add(0, 0, None, size=9)
    w.commit()
    assert version(tmp_path, "sink", 0) == 0
    assert writer(tmp_path).assign([0]) == {0: 1}


def test_steps_sent_again_at_new_offsets_are_dropped_by_step_identity(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([0])
    w.add(0, 0, batch(0))
    w.add(0, 1, batch(10))
    w.add(0, 2, batch(0))  # an agent re-sends its spool: same steps, a new record
    w.commit()
    assert w.repeated == 10
    # A restarted writer knows the steps from Delta.
    again = writer(tmp_path)
    again.assign([0])
    again.add(0, 3, batch(10))
    again.add(0, 4, batch(20))
    again.commit()
    assert again.repeated == 10
    assert ids(tmp_path) == sorted(("r1", "inc-a", s) for s in range(30))


def test_a_clock_stepped_back_loses_no_step(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([0])
    for i in range(5):
        w.add(0, i, batch(i * 10))
    for i in range(5, 10):  # NTP stepped the robot's clock back 600 s
        w.add(0, i, batch(i * 10, clock_shift_s=-600))
    w.commit()
    assert ids(tmp_path) == sorted(("r1", "inc-a", s) for s in range(100))


def test_two_incarnations_of_one_robot_are_kept_apart(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([0])
    offset = 0
    for episode in range(2):  # two agents claimed r2 and interleave their episodes
        for inc in ("inc-a", "inc-b"):
            for first in range(episode * 50, episode * 50 + 50, 25):
                w.add(0, offset, batch(first, 25, robot="r2", incarnation=inc))
                offset += 1
    w.commit()
    got = ids(tmp_path)
    assert len(got) == 200
    assert got == sorted(("r2", inc, s) for inc in ("inc-a", "inc-b") for s in range(100))


def test_rows_written_before_step_identity_read_as_their_v1_upcast(tmp_path: Path) -> None:
    legacy = tables.batch_rows(batch(0), tables.Source(TOPIC, 0, 0)).drop_columns(
        ["incarnation", "seq"])
    write_deltalake(tables.table_path(tmp_path, tables.TRANSITIONS_RAW), legacy,
                    partition_by=list(tables.PARTITION_BY))
    marks = contract.HighWater()
    marks.load(rows(tmp_path))
    observed = legacy.column("observed_ns").to_pylist()
    assert marks.get(("exp-1", "r1", contract.LEGACY_INCARNATION, "")) == max(observed)
