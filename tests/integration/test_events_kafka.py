"""Events through a real broker: round trips, dead letters, and `userctl tail`."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from confluent_kafka import Producer

from infra import cmd_tail
from schemas import events, samples, transitions
from tests.unit.test_schemas_events import examples
from topics import catalog, serde
from topics.consumer import EventConsumer
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rules

pytestmark = pytest.mark.integration

SPEC = samples.robot_spec(cameras=("front",), image_hw=(16, 16), info={"goal": 3})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def poll_until(consumer: EventConsumer, done: Callable[[list[Accepted]], bool],
               timeout_s: float = 60.0) -> list[Accepted]:
    """Poll until ``done(accepted so far)``; fail after ``timeout_s``."""
    seen: list[Accepted] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.extend(consumer.poll(0.5))
        if done(seen):
            return seen
    raise AssertionError(f"gave up after {timeout_s}s with {len(seen)} accepted records")


def ids(accepted: list[Accepted]) -> set[uuid.UUID]:
    out = set()
    for a in accepted:
        e = a.event if isinstance(a.event, events.Envelope) else a.event.event
        out.add(e.event_id)
    return out


def test_events_and_batches_round_trip_through_the_broker(kafka: KafkaSettings) -> None:
    robot = unique("rt")
    raw = samples.batch(SPEC, 120, robot_id=robot, site="lab-b", episode_len=40)
    rewarded = transitions.RewardedTransitionBatch.from_raw(
        raw, reward_fn="reach@1", reward=np.linspace(-1, 0, 120), success=raw.step > 30,
        terminated=raw.step == 35)
    hb = events.HeartbeatV1(site="lab-b", robot_id=robot, seq=1, state="running")
    announce = events.RobotAnnouncedV1(site="lab-b", robot_id=robot, spec=SPEC)
    producer = EventProducer(kafka, role="test")
    producer.send(catalog.ROBOTS, announce)
    producer.send(catalog.HEARTBEATS, hb)
    producer.send(catalog.TRANSITIONS_RAW, raw)
    producer.send(catalog.TRANSITIONS, rewarded)
    producer.flush()
    wanted = {announce.event_id, hb.event_id, raw.event.event_id, rewarded.event.event_id}
    specs = [catalog.ROBOTS, catalog.HEARTBEATS, catalog.TRANSITIONS_RAW, catalog.TRANSITIONS]
    with EventConsumer(kafka, specs, group_id=unique("g-rt"),
                       rules=Rules(require_announced=False)) as consumer:
        got = poll_until(consumer, lambda seen: wanted <= ids(seen))
        consumer.commit()
    mine = {next(iter(ids([a]))): a for a in got}
    assert mine[hb.event_id].event == hb
    assert mine[announce.event_id].event == announce
    back = mine[raw.event.event_id]
    assert back.record.partition in kafka.sites.partitions_of("lab-b")
    assert back.record.key == f"lab-b/{robot}".encode()
    headers = dict(back.record.headers)
    assert headers[serde.HEADER_SCHEMA] == b"transition_batch"
    assert headers[serde.HEADER_CONTENT_TYPE] == serde.ContentType.ARROW.value.encode()
    batch = back.event
    assert isinstance(batch, transitions.TransitionBatch)
    np.testing.assert_array_equal(batch.observation, raw.observation)
    np.testing.assert_array_equal(batch.images["front"], raw.images["front"])
    np.testing.assert_array_equal(batch.final_images["front"], raw.final_images["front"])
    r = mine[rewarded.event.event_id].event
    assert isinstance(r, transitions.RewardedTransitionBatch)
    np.testing.assert_array_equal(r.reward, rewarded.reward)


def test_bad_records_land_on_dlq_and_the_consumer_carries_on(kafka: KafkaSettings) -> None:
    robot = unique("dlq")
    group = unique("g-dlq")
    good = [events.HeartbeatV1(site="lab-a", robot_id=robot, seq=i, state="idle")
            for i in range(3)]
    nan_batch = samples.batch(SPEC, 8, robot_id=robot)
    obs = nan_batch.observation.copy()
    obs[2, 5] = np.nan
    nan_batch = transitions.TransitionBatch(
        event=nan_batch.event,
        **{f.name: getattr(nan_batch, f.name) for f, _ in transitions.columns(
            transitions.TransitionBatch) if f.name != "observation"},
        observation=obs)
    nan_rec = serde.encode(catalog.TRANSITIONS_RAW, nan_batch, sites=kafka.sites)
    raw = Producer(kafka.producer_config(role="test-raw"))
    key = robot.encode()
    raw.produce(catalog.HEARTBEATS.name, b"\xff\x00 not json", key)
    raw.produce(catalog.HEARTBEATS.name,
                good[0].model_dump_json().replace('"idle"', '"dancing"').encode(), key)
    raw.produce(catalog.HEARTBEATS.name, good[1].model_dump_json().encode(), b"someone-else")
    assert nan_rec.partition is not None
    raw.produce(nan_rec.topic, nan_rec.value, nan_rec.key, partition=nan_rec.partition,
                headers=list(nan_rec.headers))
    assert raw.flush(30) == 0
    producer = EventProducer(kafka, role="test")
    for hb in good:
        producer.send(catalog.HEARTBEATS, hb)
    producer.flush()

    dlq = Follower(kafka, {catalog.DLQ: "end"}, role="test-dlq")  # only what comes next
    with EventConsumer(kafka, [catalog.HEARTBEATS, catalog.TRANSITIONS_RAW],
                       group_id=group) as consumer:
        got = poll_until(consumer, lambda seen: {h.event_id for h in good} <= ids(seen))
        assert [a.event.seq for a in got if isinstance(a.event, events.HeartbeatV1)
                and a.event.robot_id == robot] == [0, 1, 2]
        consumer.commit()  # flushes the dead letters first

    letters: dict[str, events.DeadLetterV1] = {}
    deadline = time.monotonic() + 60
    try:
        while len(letters) < 4 and time.monotonic() < deadline:
            for result in dlq.poll(0.5):
                # Only this test's records: a group reading from the beginning of a
                # shared broker also refuses bad records other runs left there.
                if (isinstance(result, Accepted)
                        and isinstance(result.event, events.DeadLetterV1)
                        and result.event.consumer == group
                        and robot.encode() in (result.event.original_key() or b"")
                        + result.event.original_value()):
                    letters[result.event.reason.value] = result.event
    finally:
        dlq.close()
    assert set(letters) == {"not_utf8", "invalid_field", "key_mismatch", "non_finite"}
    assert letters["not_utf8"].original_value() == b"\xff\x00 not json"
    assert letters["not_utf8"].source_topic == catalog.HEARTBEATS.name
    assert letters["non_finite"].source_topic == catalog.TRANSITIONS_RAW.name
    assert letters["non_finite"].source_partition == nan_rec.partition
    assert letters["non_finite"].original_value() == nan_rec.value
    assert "observation" in letters["non_finite"].detail


def run_tail(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="userctl")
    cmd_tail.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tail", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_tail_decodes_every_catalog_topic(kafka: KafkaSettings,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    producer = EventProducer(kafka, role="test")
    sent: dict[str, uuid.UUID] = {}
    robot = unique("tail")
    for event in examples():
        spec = catalog.spec(next(t for t, names in serde.TOPIC_SCHEMAS.items()
                                 if event.schema_name in names))
        if spec.value == catalog.Value.ARROW:
            continue
        producer.send(spec, event)
        sent[spec.name] = event.event_id
    raw = samples.batch(SPEC, 6, robot_id=robot, episode_len=4)
    rewarded = transitions.RewardedTransitionBatch.from_raw(
        raw, reward_fn="reach@1", reward=np.full(6, -0.25), success=np.zeros(6),
        terminated=np.zeros(6))
    producer.send(catalog.TRANSITIONS_RAW, raw)
    producer.send(catalog.TRANSITIONS, rewarded)
    sent[catalog.TRANSITIONS_RAW.name] = raw.event.event_id
    sent[catalog.TRANSITIONS.name] = rewarded.event.event_id
    producer.flush()
    assert set(sent) == {s.name for s in catalog.CATALOG}

    for topic, event_id in sent.items():
        rc, out = run_tail(capsys, topic, "--json")
        assert rc == 0
        lines = [json.loads(line) for line in out.splitlines()]
        assert any(line.get("event", {}).get("event_id") == str(event_id) for line in lines), (
            topic, out[-2000:])

    rc, out = run_tail(capsys, catalog.TRANSITIONS.name, "--robot", robot)
    assert rc == 0
    assert "EPISODE" in out and "REWARD" in out and "reward_fn=reach@1" in out
    assert out.count("-0.2500") == 6
    rc, out = run_tail(capsys, catalog.TRANSITIONS_RAW.name, "--robot", robot, "--json",
                       "--limit", "1")
    (line,) = out.splitlines()
    steps = json.loads(line)["steps"]
    assert [s["step"] for s in steps] == raw.step.tolist()
    assert steps[0]["images.front"]["shape"] == [16, 16, 3]


def test_tail_shows_records_it_cannot_decode(kafka: KafkaSettings,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    raw = Producer(kafka.producer_config(role="test-raw"))
    raw.produce(catalog.COMMANDS.name, b"stop everything!", b"r1")
    assert raw.flush(30) == 0
    rc, out = run_tail(capsys, catalog.COMMANDS.name, "--limit", "50")
    assert rc == 0
    assert "REJECTED not_json" in out


def test_tail_names_an_unknown_site(kafka: KafkaSettings,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="userctl")
    cmd_tail.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tail", catalog.HEARTBEATS.name, "--site", "mars"])
    assert args.func(args) == 2
    assert "mars" in capsys.readouterr().err

