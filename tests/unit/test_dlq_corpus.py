"""Bad input never stops a consumer: a corpus of bad records, each refused with its reason.

The corpus is built from well-formed records (``good_*``) by breaking one thing each,
so every case fails for the reason it names and no other.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from confluent_kafka import Message, TopicPartition

from schemas import events, samples, transitions
from schemas.events import RejectReason
from topics import catalog, serde, validation
from topics.consumer import EventConsumer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Record, Rejected, Rules

SPEC = samples.robot_spec(cameras=("front",), image_hw=(8, 8), info={"goal": 3})
RULES = Rules(robots={"r1": SPEC})
HB = events.HeartbeatV1(site="lab-a", robot_id="r1", seq=1, state="running")


def hb_headers(name: str = "heartbeat", version: str = "1",
               ctype: str = "application/json") -> tuple[tuple[str, bytes | None], ...]:
    return ((serde.HEADER_SCHEMA, name.encode()), (serde.HEADER_VERSION, version.encode()),
            (serde.HEADER_CONTENT_TYPE, ctype.encode()))


def json_record(body: object, *, key: bytes | None = b"r1", topic: str = "heartbeats",
                headers: tuple[tuple[str, bytes | None], ...] | None = None,
                raw: bytes | None = None) -> Record:
    value = raw if raw is not None else json.dumps(body).encode()
    return Record(topic=topic, partition=0, offset=42, value=value, key=key,
                  headers=hb_headers() if headers is None else headers)


def hb_body(**change: object) -> dict[str, object]:
    body = HB.model_dump(mode="json")
    body.update(change)
    return body


def good_batch(n: int = 12) -> transitions.TransitionBatch:
    return samples.batch(SPEC, n, episode_len=5)


def batch_record(batch: transitions.AnyBatch | None = None, *, rb: pa.RecordBatch | None = None,
                 raw: bytes | None = None, topic: str = "transitions.raw") -> Record:
    spec = catalog.spec(topic)
    if raw is None:
        if rb is None:
            assert batch is not None
            rb = transitions.to_arrow(batch)
        raw = serde.arrow_ipc(rb)
    version = (rb.schema.metadata or {}).get(transitions.META_VERSION, b"2") if rb else b"2"
    name = "transition_batch" if topic == "transitions.raw" else "rewarded_transition_batch"
    headers = ((serde.HEADER_SCHEMA, name.encode()), (serde.HEADER_VERSION, version),
               (serde.HEADER_CONTENT_TYPE, serde.CONTENT_TYPES[spec.value].encode()))
    return Record(topic=topic, partition=1, offset=7, value=raw, key=b"lab-a/r1",
                  headers=headers)


def with_column(rb: pa.RecordBatch, name: str, arr: pa.Array | None) -> pa.RecordBatch:
    i = rb.schema.get_field_index(name)
    if arr is None:
        return rb.drop_columns([name])
    return rb.set_column(i, pa.field(name, arr.type), arr)


def replaced(batch: transitions.TransitionBatch, **arrays: object) -> transitions.TransitionBatch:
    fields = {f.name: getattr(batch, f.name) for f, _ in transitions.columns(type(batch))}
    fields.update(arrays)
    return transitions.TransitionBatch(event=batch.event, **fields)


def rewarded(reward: np.ndarray) -> transitions.RewardedTransitionBatch:
    raw = good_batch()
    n = len(raw)
    return transitions.RewardedTransitionBatch.from_raw(
        raw, reward_fn="reach@1", reward=reward, success=np.zeros(n), terminated=np.zeros(n))


def chunk_record(data: bytes, *, header: bool = True, sha: str | None = None) -> Record:
    digest = sha or hashlib.sha256(b"the real bytes").hexdigest()
    meta = {"schema_name": "weights.chunk", "schema_version": 1, "experiment_id": "e1",
            "version": 3, "index": 0, "n_chunks": 1, "sha256": digest}
    headers: list[tuple[str, bytes | None]] = [
        (serde.HEADER_SCHEMA, b"weights.chunk"), (serde.HEADER_VERSION, b"1")]
    if header:
        headers.append((serde.HEADER_EVENT, json.dumps(meta).encode()))
    return Record(topic="weights", partition=0, offset=3, value=data, key=b"e1/3",
                  headers=tuple(headers))


def rb_of(batch: transitions.AnyBatch) -> pa.RecordBatch:
    return transitions.to_arrow(batch)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Record]
    reason: RejectReason
    rules: Rules = RULES


def _steps_going_back() -> transitions.TransitionBatch:
    b = good_batch()
    step = b.step.copy()
    step[1] = 0
    return replaced(b, step=step)


def _nan_at(name: str) -> transitions.TransitionBatch:
    b = good_batch()
    arr = getattr(b, name).copy()
    arr[3, 0] = np.nan if name == "observation" else np.inf
    return replaced(b, **{name: arr})


CORPUS: list[Case] = [
    Case("empty value", lambda: json_record(None, raw=b""), RejectReason.EMPTY),
    Case("value over the topic's limit",
         lambda: json_record(None, raw=b" " * (catalog.HEARTBEATS.max_message_bytes + 1)),
         RejectReason.OVERSIZE),
    Case("unreadable version header",
         lambda: json_record(hb_body(), headers=hb_headers(version="one")),
         RejectReason.BAD_HEADERS),
    Case("wrong content type",
         lambda: json_record(hb_body(), headers=hb_headers(ctype="text/plain")),
         RejectReason.CONTENT_TYPE),
    Case("bytes that are not UTF-8", lambda: json_record(None, raw=b"\xff\xfe\x00garbage"),
         RejectReason.NOT_UTF8),
    Case("text that is not JSON", lambda: json_record(None, raw=b"robot r1 is fine"),
         RejectReason.NOT_JSON),
    Case("JSON that is not an object", lambda: json_record([1, 2, 3]), RejectReason.NOT_OBJECT),
    Case("no schema in headers or body",
         lambda: json_record({"seq": 1}, headers=()), RejectReason.NO_SCHEMA),
    Case("unknown schema name",
         lambda: json_record(hb_body(schema_name="telemetry"),
                             headers=hb_headers(name="telemetry")),
         RejectReason.UNKNOWN_SCHEMA),
    Case("a version from the future",
         lambda: json_record(hb_body(schema_version=99), headers=hb_headers(version="99")),
         RejectReason.UNKNOWN_VERSION),
    Case("headers and body disagree",
         lambda: json_record(hb_body(), headers=hb_headers(name="command")),
         RejectReason.HEADER_MISMATCH),
    Case("an event on the wrong topic",
         lambda: json_record(events.CommandV1(robot_id="r1", command="stop")
                             .model_dump(mode="json"), headers=hb_headers(name="command")),
         RejectReason.WRONG_TOPIC),
    Case("a topic outside the catalog",
         lambda: json_record(hb_body(), topic="not-a-topic"), RejectReason.WRONG_TOPIC),
    Case("a missing field",
         lambda: json_record({k: v for k, v in hb_body().items() if k != "seq"}),
         RejectReason.MISSING_FIELD),
    Case("an unknown field", lambda: json_record(hb_body(colour="red")),
         RejectReason.EXTRA_FIELD),
    Case("a field of the wrong type", lambda: json_record(hb_body(seq="many")),
         RejectReason.INVALID_FIELD),
    Case("an enum value nobody knows", lambda: json_record(hb_body(state="dancing")),
         RejectReason.INVALID_FIELD),
    Case("NaN in a JSON event",
         lambda: json_record(None, raw=json.dumps(hb_body(uptime_s=float("nan"))).encode()),
         RejectReason.NON_FINITE),
    Case("key differs from the event", lambda: json_record(hb_body(), key=b"r2"),
         RejectReason.KEY_MISMATCH),
    Case("no key", lambda: json_record(hb_body(), key=None), RejectReason.KEY_MISMATCH),
    Case("garbage on a transitions topic",
         lambda: batch_record(raw=b"\x00\x01 definitely not arrow"), RejectReason.NOT_ARROW),
    Case("a truncated Arrow stream",
         lambda: batch_record(raw=serde.arrow_ipc(rb_of(good_batch()))[:-700]),
         RejectReason.NOT_ARROW),
    Case("Arrow without the event header",
         lambda: batch_record(rb=rb_of(good_batch()).replace_schema_metadata({})),
         RejectReason.NO_SCHEMA),
    Case("Arrow stream with a schema but no batch",
         lambda: batch_record(raw=_schema_only()), RejectReason.EMPTY_BATCH),
    Case("a missing column",
         lambda: batch_record(rb=with_column(rb_of(good_batch()), "action", None)),
         RejectReason.ARROW_SCHEMA),
    Case("float64 observations",
         lambda: batch_record(rb=with_column(rb_of(good_batch()), "observation",
                                             pa.FixedSizeListArray.from_arrays(
                                                 pa.array(np.zeros(12 * 32)), 32))),
         RejectReason.ARROW_SCHEMA),
    Case("nulls in a required column",
         lambda: batch_record(rb=with_column(rb_of(good_batch()), "step",
                                             pa.array([None, *list(range(11))], pa.int32()))),
         RejectReason.NULL_VALUES),
    Case("header step count differs from the rows",
         lambda: batch_record(rb=rb_of(good_batch()).slice(0, 5)),
         RejectReason.LENGTH_MISMATCH),
    Case("robot column differs from the header",
         lambda: batch_record(rb=with_column(rb_of(good_batch()), "robot_id",
                                             pa.array(["r9"] * 12).dictionary_encode())),
         RejectReason.INCONSISTENT),
    Case("steps running backwards", lambda: batch_record(_steps_going_back()),
         RejectReason.INCONSISTENT),
    Case("NaN in an observation", lambda: batch_record(_nan_at("observation")),
         RejectReason.NON_FINITE),
    Case("inf in an action", lambda: batch_record(_nan_at("action")), RejectReason.NON_FINITE),
    Case("NaN in a reward",
         lambda: batch_record(rewarded(np.where(np.arange(12) == 4, np.nan, 0.0)),
                              topic="transitions"),
         RejectReason.NON_FINITE),
    Case("observation shape contradicts the announced spec",
         lambda: batch_record(samples.batch(
             SPEC.model_copy(update={"observation": SPEC.observation.model_copy(
                 update={"shape": (31,)})}), 12)),
         RejectReason.SPEC_MISMATCH),
    Case("a camera the robot never announced",
         lambda: batch_record(samples.batch(
             SPEC.model_copy(update={"cameras": ()}), 12)),
         RejectReason.SPEC_MISMATCH),
    Case("action outside the announced bounds",
         lambda: batch_record(replaced(good_batch(), action=np.full((12, 4), 3.0))),
         RejectReason.OUT_OF_BOUNDS),
    Case("a robot that never announced itself",
         lambda: batch_record(good_batch()), RejectReason.UNKNOWN_ROBOT,
         Rules(require_announced=True)),
    Case("more steps than a decoder takes",
         lambda: batch_record(good_batch(30)), RejectReason.OVERSIZE,
         Rules(robots={"r1": SPEC}, serde=serde.SerdeSettings(max_steps=20))),
    Case("weight chunk whose bytes do not match its hash",
         lambda: chunk_record(b"tampered bytes"), RejectReason.HASH_MISMATCH),
    Case("weight chunk without its event header",
         lambda: chunk_record(b"the real bytes", header=False), RejectReason.NO_SCHEMA),
]


def _schema_only() -> bytes:
    rb = rb_of(good_batch())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rb.schema):
        pass
    return bytes(sink.getvalue())


def test_the_corpus_covers_at_least_twenty_kinds_of_bad_record() -> None:
    assert len({c.name for c in CORPUS}) == len(CORPUS) >= 20
    assert len({c.reason for c in CORPUS}) >= 20


def test_the_good_records_the_corpus_breaks_are_accepted() -> None:
    goods = [json_record(hb_body()), batch_record(good_batch()),
             batch_record(rewarded(np.zeros(12)), topic="transitions"),
             chunk_record(b"the real bytes")]
    for rec in goods:
        result = validation.validate(rec, RULES)
        assert isinstance(result, Accepted), result


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_each_bad_record_is_refused_with_its_reason(case: Case) -> None:
    rec = case.make()
    result = validation.validate(rec, case.rules)
    assert isinstance(result, Rejected)
    assert result.reason is case.reason, result.detail
    assert result.detail and "\n" not in result.detail
    letter = validation.dead_letter(result, consumer="test")
    assert letter.reason is case.reason
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        rec.topic, rec.partition, rec.offset)
    assert letter.original_value() == (rec.value or b"")
    assert letter.original_key() == rec.key
    assert len(letter.model_dump_json()) < catalog.DLQ.max_message_bytes


def test_a_dead_letter_too_big_for_dlq_keeps_a_prefix() -> None:
    huge = b"x" * (catalog.DLQ.max_message_bytes)
    letter = validation.dead_letter(Rejected(Record("transitions.raw", 0, 1, huge),
                                             RejectReason.OVERSIZE, "too big"))
    assert letter.truncated and letter.value_size == len(huge)
    assert len(letter.model_dump_json()) < catalog.DLQ.max_message_bytes
    assert huge.startswith(base64.b64decode(letter.value_b64))


# -- the consumer shell carries on ------------------------------------------------------


class FakeClient:
    """Hands out prepared messages once, records commits."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.commits: list[list[TopicPartition]] = []
        self.closed = False

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        out, self.messages = self.messages[:num_messages], self.messages[num_messages:]
        return out

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool
               ) -> list[TopicPartition]:
        self.commits.append(offsets)
        return offsets

    def close(self) -> None:
        self.closed = True


class ListSink:
    def __init__(self) -> None:
        self.letters: list[Rejected] = []
        self.flushed = 0

    def send(self, rejected: Rejected) -> None:
        self.letters.append(rejected)

    def flush(self) -> None:
        self.flushed = len(self.letters)


def message(rec: Record, offset: int) -> Message:
    return Message(topic=rec.topic, partition=rec.partition, offset=offset, key=rec.key,
                   value=rec.value, headers=list(rec.headers))


def test_the_consumer_dead_letters_every_bad_record_and_keeps_going() -> None:
    bad = [c.make() for c in CORPUS if c.rules is RULES and c.make().topic == "heartbeats"]
    good = [json_record(events.HeartbeatV1(site="lab-a", robot_id="r1", seq=i,
                                           state="running").model_dump(mode="json"))
            for i in range(len(bad))]
    interleaved = [r for pair in zip(good, bad, strict=True) for r in pair]
    client = FakeClient([message(r, i) for i, r in enumerate(interleaved)])
    sink = ListSink()
    consumer = EventConsumer(KafkaSettings(), [catalog.HEARTBEATS], group_id="g-test",
                             rules=RULES, dead_letters=sink, client=client)
    seen: list[int] = []
    for _ in range(10):
        for accepted in consumer.poll(0.0, max_records=7):
            assert isinstance(accepted.event, events.HeartbeatV1)
            seen.append(accepted.event.seq)
    assert seen == list(range(len(good)))
    assert [r.record.offset for r in sink.letters] == list(range(1, len(interleaved), 2))
    consumer.commit()
    assert sink.flushed == len(bad)  # dead letters durable before the offsets move
    (offsets,) = client.commits
    assert [(tp.topic, tp.partition, tp.offset) for tp in offsets] == [
        ("heartbeats", 0, len(interleaved))]
    consumer.close()
    assert client.closed


def test_the_consumer_learns_announced_specs_and_checks_batches_against_them() -> None:
    announce = events.RobotAnnouncedV1(site="lab-a", robot_id="r1", spec=SPEC)
    ann = serde.encode(catalog.ROBOTS, announce)
    wrong = samples.batch(SPEC.model_copy(update={"cameras": ()}), 6)
    records = [
        batch_record(wrong),
        Record("robots", 0, 0, ann.value, ann.key, tuple(ann.headers)),
        batch_record(wrong),
    ]
    sink = ListSink()
    consumer = EventConsumer(KafkaSettings(), [catalog.ROBOTS, catalog.TRANSITIONS_RAW],
                             group_id="g", dead_letters=sink,
                             client=FakeClient([message(r, i) for i, r in enumerate(records)]))
    accepted = consumer.poll(0.0)
    assert [type(a.event).__name__ for a in accepted] == ["TransitionBatch", "RobotAnnouncedV1"]
    assert [r.reason for r in sink.letters] == [RejectReason.SPEC_MISMATCH]
    assert consumer.robots == {"r1": SPEC}


# -- the intervention and episode-end contracts (issue 10, failing input 5) ----------------


def _policy_action_where(rb: pa.RecordBatch, rows: np.ndarray) -> pa.Array:
    """``rb``'s policy_action column, present on ``rows`` only."""
    col = rb.column("policy_action")
    return pa.FixedSizeListArray.from_arrays(col.values, type=col.type, mask=pa.array(~rows))


def test_a_rewarded_batch_with_takeovers_but_no_policy_proposal_is_refused() -> None:
    batch = rewarded(np.zeros(12))
    assert batch.intervention.sum() == 2  # rows 3 and 10: a human overrode the policy
    rb = rb_of(batch)
    rb = with_column(rb, "policy_action", _policy_action_where(rb, np.zeros(12, bool)))
    rec = batch_record(rb=rb, topic="transitions")
    result = validation.validate(rec, RULES)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.CONTRACT, result.detail
    assert "policy_action" in result.detail
    assert validation.dead_letter(result).reason is RejectReason.CONTRACT


def test_a_policy_proposal_on_a_step_nobody_took_over_is_refused() -> None:
    batch = good_batch()
    rb = rb_of(batch)
    rb = with_column(rb, "policy_action", _policy_action_where(rb, batch.intervention | True))
    result = validation.validate(batch_record(rb=rb), RULES)
    assert isinstance(result, Rejected) and result.reason is RejectReason.CONTRACT


def test_a_non_finite_policy_proposal_is_refused() -> None:
    batch = good_batch()
    bad = batch.policy_action.copy()
    bad[3, 0] = np.nan
    result = validation.validate(batch_record(replaced(batch, policy_action=bad)), RULES)
    assert isinstance(result, Rejected) and result.reason is RejectReason.NON_FINITE


@pytest.mark.parametrize(("row", "reason"), [(0, "time_limit"), (4, "no such reason")])
def test_an_end_reason_that_breaks_the_episode_end_contract_is_refused(
    row: int, reason: str,
) -> None:
    batch = good_batch()  # rows 4 and 9 end episodes (time_limit)
    ends = batch.end_reason.astype("U32").copy()
    ends[row] = reason
    result = validation.validate(batch_record(replaced(batch, end_reason=ends)), RULES)
    assert isinstance(result, Rejected) and result.reason is RejectReason.CONTRACT, result


def as_v1(batch: transitions.AnyBatch) -> pa.RecordBatch:
    """``batch`` as a V1 writer wrote it: ``action`` the policy's, ``human_action`` the
    executed one where intervention, no step identity, no end reasons."""
    rb = rb_of(batch)
    took = rb.column("intervention")
    typ = rb.column("action").type
    policy = pc.if_else(took, rb.column("policy_action"), rb.column("action"))
    human = pa.FixedSizeListArray.from_arrays(rb.column("action").values, type=typ,
                                              mask=pc.invert(took))
    rb = with_column(rb, "action", policy)
    rb = with_column(rb, "policy_action", human)
    rb = rb.rename_columns(["human_action" if c == "policy_action" else c
                            for c in rb.schema.names])
    rb = rb.drop_columns(["incarnation", "seq", "end_reason"])
    header = batch.event.model_dump(mode="json")
    del header["incarnation"]
    header["schema_version"] = 1
    return rb.replace_schema_metadata({
        transitions.META_SCHEMA: batch.event.schema_name.encode(),
        transitions.META_VERSION: b"1",
        transitions.META_EVENT: json.dumps(header).encode(),
    })


def test_a_v1_rewarded_batch_with_human_actions_is_read_under_the_new_contract() -> None:
    batch = rewarded(np.linspace(0, 1, 12))
    took = batch.intervention
    result = validation.validate(batch_record(rb=as_v1(batch), topic="transitions"), RULES)
    assert isinstance(result, Accepted), result
    v2 = result.event
    assert isinstance(v2, transitions.RewardedTransitionBatch)
    assert v2.event.schema_version == 2 and v2.event.incarnation == events.V1_INCARNATION
    # V1's only identity was the observation time: it becomes the sequence number.
    np.testing.assert_array_equal(v2.seq, batch.observed_ns)
    # The executed action (V1 human_action) is `action`; the policy's is kept beside it.
    np.testing.assert_array_equal(v2.intervention, took)
    np.testing.assert_array_equal(v2.action, batch.action)
    np.testing.assert_array_equal(v2.policy_action[took], batch.policy_action[took])
    assert not np.array_equal(v2.action[took], v2.policy_action[took])
    assert (v2.end_reason == "").all()
    np.testing.assert_array_equal(v2.reward, batch.reward)
