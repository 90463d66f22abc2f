"""Gap detection (issue 10, deliverable 4): which expected offsets no longer exist."""

from __future__ import annotations

import pytest

from schemas import events
from topics import catalog, gaps, serde


def test_nothing_is_missing_when_the_expected_offset_still_exists() -> None:
    assert gaps.missing(expected=10, low_watermark=0) is None
    assert gaps.missing(expected=10, low_watermark=10) is None
    assert gaps.missing(expected=10, low_watermark=3, received=10) is None


def test_offsets_below_the_low_watermark_that_were_expected_are_missing() -> None:
    assert gaps.missing(expected=10, low_watermark=25) == (10, 24)
    assert gaps.missing(expected=10, low_watermark=25, received=25) == (10, 24)


def test_a_jump_over_offsets_that_still_exist_is_not_a_gap() -> None:
    # Transaction markers and aborted records take offsets the consumer never sees.
    assert gaps.missing(expected=10, low_watermark=0, received=12) is None


def test_a_watermark_that_moved_past_the_received_record_counts_only_up_to_it() -> None:
    assert gaps.missing(expected=10, low_watermark=40, received=30) == (10, 29)


def test_no_expectation_means_no_gap() -> None:
    assert gaps.missing(expected=-1, low_watermark=40) is None


def test_expected_asks_for_the_watermark_only_when_the_offset_jumps() -> None:
    asked: list[int] = []

    def low() -> int:
        asked.append(1)
        return 20

    expected = gaps.Expected()
    assert expected.received(0, 5, low) is None  # no expectation yet: it sets one
    assert expected.received(0, 6, low) is None
    assert not asked
    assert expected.received(0, 20, low) == (7, 19)
    assert len(asked) == 1
    expected.expect(1, 100)
    assert expected.received(1, 100, low) is None
    expected.forget(1)
    assert expected.received(1, 500, low) is None
    assert len(asked) == 1


def test_a_gap_event_is_keyed_by_topic_and_partition_and_counts_its_offsets() -> None:
    event = events.GapDetectedV1(consumer="sink", topic="transitions", partition=2,
                                 first_missing=10, last_missing=19)
    assert event.missing == 10
    assert serde.key_for(catalog.GAPS, event) == "transitions/2"
    encoded = serde.encode(catalog.GAPS, event)
    assert serde.decode(catalog.GAPS, encoded.value, tuple(encoded.headers)) == event


def test_a_gap_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before first_missing"):
        events.GapDetectedV1(consumer="sink", topic="t", partition=0, first_missing=5,
                             last_missing=4)
