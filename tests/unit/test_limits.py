"""Records cut to fit a topic's size limit, and refused records kept out of the logs
(no broker: the real splitting and dead-lettering code on encoded records)."""

from __future__ import annotations

import logging

import pytest

from agents.agent import _Mailbox
from agents.outbox import MemoryOutbox, OutboxDeadLetters
from pipeline.controller import Controller
from schemas import events as ev
from schemas import samples
from schemas.transitions import TransitionBatch
from topics import catalog, limits, serde, validation
from topics.settings import KafkaSettings

SITES = KafkaSettings().sites


def encoded_batch(n: int) -> tuple[TransitionBatch, serde.Encoded]:
    batch = samples.batch(samples.robot_spec(obs_dim=6, act_dim=2), n, robot_id="r1",
                          experiment_id="exp-1")
    return batch, serde.encode(catalog.TRANSITIONS_RAW, batch, sites=SITES)


def test_a_batch_too_large_is_cut_into_parts_that_fit_with_every_row_once_in_order() -> None:
    batch, rec = encoded_batch(40)
    assert limits.record_bytes(rec) > 4096
    parts, unsendable = limits.split_to_fit(rec, 4096)
    assert unsendable == [] and len(parts) > 1
    assert all(limits.record_bytes(p) <= 4096 for p in parts)
    rows = []
    ids = set()
    for part in parts:
        assert (part.topic, part.key, part.partition) == (rec.topic, rec.key, rec.partition)
        got = serde.decode(catalog.TRANSITIONS_RAW, part.value, part.headers)
        assert isinstance(got, TransitionBatch) and len(got) == got.event.n_steps
        ids.add(got.event.event_id)
        rows += list(zip(got.episode_id.tolist(), got.step.tolist(), strict=True))
    assert rows == list(zip(batch.episode_id.tolist(), batch.step.tolist(), strict=True))
    assert len(ids) == len(parts) and batch.event.event_id not in ids
    again, _ = limits.split_to_fit(rec, 4096)  # a restart re-splits to the same parts
    assert [p.value for p in again] == [p.value for p in parts]


def test_what_cannot_be_cut_to_fit_comes_back_unsendable() -> None:
    _, rec = encoded_batch(3)
    parts, unsendable = limits.split_to_fit(rec, 1000)  # not even one step fits
    assert parts == [] and len(unsendable) == 3
    opaque = serde.Encoded("t", b"k", b"x" * 20_000, [], None)
    assert limits.split_to_fit(opaque, 4096) == ([], [opaque])
    small = serde.Encoded("t", b"k", b"x" * 100, [], None)
    assert limits.split_to_fit(small, 4096) == ([small], [])


def test_a_record_over_the_catalog_limit_is_handed_back_encoded() -> None:
    batch, rec = encoded_batch(40)
    tiny = catalog.TRANSITIONS_RAW.model_copy(update={"max_message_bytes": 4096})
    with pytest.raises(serde.RecordTooLarge) as caught:
        serde.encode(tiny, batch, sites=SITES)
    assert caught.value.record.value == rec.value


def bad_record(topic: str, key: bytes | None) -> validation.Rejected:
    record = validation.Record(topic=topic, partition=0, offset=7, value=b"\x00" * 5000,
                               key=key)
    result = validation.validate(record)
    assert isinstance(result, validation.Rejected)
    return result


def test_log_excerpts_never_carry_more_than_200_bytes() -> None:
    assert validation.excerpt("short") == "short"
    for text in ("x" * 5000, b"\xff" * 5000, "é" * 5000):
        assert len(validation.excerpt(text).encode()) <= validation.LOG_EXCERPT_BYTES


def test_an_agent_dead_letters_an_unreadable_command_for_its_robot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = MemoryOutbox()
    mailbox = _Mailbox(["r1"], OutboxDeadLetters(outbox, consumer="agent-r1"))
    with caplog.at_level(logging.INFO):
        mailbox.take(bad_record(catalog.COMMANDS.name, b"r1"))
        mailbox.take(bad_record(catalog.COMMANDS.name, b"r7"))  # another agent's robot
    [(spec, letter)] = outbox.sent
    assert spec is catalog.DLQ and isinstance(letter, ev.DeadLetterV1)
    assert letter.source_topic == catalog.COMMANDS.name and letter.source_offset == 7
    assert letter.original_value() == b"\x00" * 5000 and letter.consumer == "agent-r1"
    assert all(len(r.getMessage().encode()) < 400 for r in caplog.records)


class Letters:
    def __init__(self) -> None:
        self.sent: list[validation.Rejected] = []

    def send(self, rejected: validation.Rejected) -> None:
        self.sent.append(rejected)

    def flush(self) -> None:
        pass


def test_the_controller_dead_letters_what_it_cannot_read() -> None:
    controller = Controller(KafkaSettings())
    letters = Letters()
    controller._dead_letters = letters
    rejected = bad_record(catalog.EXPERIMENTS.name, b"exp-1")
    controller._apply(rejected, 0.0)
    assert letters.sent == [rejected]
