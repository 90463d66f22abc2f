"""A sink whose group consumer falls out of its group for good, while the broker answers,
rebuilds it and goes on writing every step to Delta exactly once.

librdkafka 2.16 can leave a consumer out of its group after the group coordinator
restarts (pipeline.sink.Membership); here the consumer is taken out of its group with
``unsubscribe()``, after which librdkafka never rejoins on its own either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import sink, tables
from tests.integration.test_sink import Namespace, assert_exactly_once, wait_for
from topics import catalog
from topics.settings import KafkaSettings


@pytest.fixture
def ns(kafka: KafkaSettings, unique: str, tmp_path: Path) -> Iterator[Namespace]:
    space = Namespace(kafka, unique, tmp_path / "delta")
    yield space
    space.producer.flush()


def test_a_consumer_left_out_of_its_group_is_rebuilt_and_delta_stays_exact(
        ns: Namespace) -> None:
    settings = sink.SinkSettings(
        name=ns.sink_name, root=ns.root, topics=("transitions.raw",),
        topic_suffix=ns.suffix, flush_rows=40, flush_interval_s=0.3, compact_interval_s=0,
        rejoin_after_s=3.0)
    delta_sink = sink.DeltaSink(ns.kafka, settings)
    # The consumer leaves its group on the sink's own thread (a librdkafka consumer is not
    # to be driven from two threads: unsubscribe() beside the sink's consume() can block).
    leave = threading.Event()
    watch = delta_sink._watch_membership

    def leave_then_watch() -> None:
        if leave.is_set():
            leave.clear()
            delta_sink._consumer.unsubscribe()
        watch()

    delta_sink._watch_membership = leave_then_watch  # type: ignore[method-assign]
    runner = threading.Thread(target=delta_sink.run, name="sink", daemon=True)
    runner.start()
    try:
        first = ns.produce_steps(robots=("r1", "r2"), batches=3)
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 90,
                 "the sink to write the first steps")

        # Out of the group, and librdkafka will not join again by itself.
        stuck = delta_sink._consumer
        leave.set()
        wait_for(lambda: delta_sink.rebuilds == 1, 60, "the sink to rebuild its consumer")
        assert delta_sink._consumer is not stuck

        later = ns.produce_steps(robots=("r1", "r2"), batches=3, first_batch=3)
        wait_for(lambda: ns.caught_up(catalog.TRANSITIONS_RAW, tables.TRANSITIONS_RAW), 90,
                 "the rebuilt consumer to write the later steps")
    finally:
        delta_sink.stop()
        runner.join(timeout=60)
    assert not runner.is_alive(), "the sink did not stop"
    assert delta_sink.rebuilds == 1, "a consumer in its group was rebuilt"
    assert_exactly_once(ns.table(tables.TRANSITIONS_RAW), first + later)
