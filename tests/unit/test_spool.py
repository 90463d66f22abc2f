"""The agent's on-disk spool keeps records in order, bounded, across crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.spool import Spool, SpooledRecord, SpoolFull


def rec(i: int, size: int = 10) -> SpooledRecord:
    return SpooledRecord(topic="transitions.raw", key=f"lab-a/r{i % 3}".encode(),
                         value=bytes([i % 256]) * size, headers=(("schema", b"x"),),
                         partition=i % 4)


def test_records_come_back_in_order_with_every_field(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(50):
        spool.append(rec(i))
    assert len(spool) == 50
    assert spool.peek(100) == [rec(i) for i in range(50)]


def test_acknowledged_records_are_forgotten_and_the_rest_survive_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, segment_bytes=300)
    for i in range(40):
        spool.append(rec(i))
    first = spool.peek(15)
    spool.ack(15)
    assert first == [rec(i) for i in range(15)]
    spool.peek(5)  # peeked, not acknowledged: must come back after a crash
    spool.close()

    again = Spool(tmp_path, segment_bytes=300)
    assert len(again) == 25
    assert again.peek(100) == [rec(i) for i in range(15, 40)]


def test_fully_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    for i in range(30):
        spool.append(rec(i))
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    spool.ack(len(spool.peek(30)))
    assert len(list(tmp_path.glob("seg-*.log"))) == 1
    assert spool.pending_bytes == 0 and len(spool) == 0


def test_the_byte_budget_refuses_appends_until_records_are_acknowledged(
    tmp_path: Path,
) -> None:
    frame = len(rec(0, 100).frame())
    spool = Spool(tmp_path, max_bytes=frame * 3)
    for i in range(3):
        spool.append(rec(i, 100))
    with pytest.raises(SpoolFull, match="broker has been unreachable"):
        spool.append(rec(3, 100))
    spool.ack(len(spool.peek(1)))
    spool.append(rec(3, 100))
    assert [r.value[0] for r in spool.peek(10)] == [1, 2, 3]


def test_a_torn_tail_from_a_crash_mid_write_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(rec(i))
    spool.close()
    [segment] = tmp_path.glob("seg-*.log")
    torn = rec(5).frame()
    with segment.open("ab") as f:
        f.write(torn[: len(torn) // 2])
    again = Spool(tmp_path)
    assert len(again) == 5
    again.append(rec(6))
    assert again.peek(10) == [rec(i) for i in (0, 1, 2, 3, 4, 6)]


def test_rewind_hands_out_unacknowledged_records_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(4):
        spool.append(rec(i))
    spool.peek(3)
    spool.rewind()
    assert spool.peek(10) == [rec(i) for i in range(4)]


def test_ack_more_than_peeked_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(rec(0))
    with pytest.raises(ValueError, match="peeked"):
        spool.ack(1)
