"""Serde: every event round-trips through its topic's wire form, with schema headers."""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import events, samples, transitions
from schemas.events import RejectReason, SchemaError
from tests.unit.test_schemas_events import examples
from topics import catalog, serde
from topics.settings import SiteMap

TOPIC_OF = {
    name: catalog.spec(topic) for topic, names in serde.TOPIC_SCHEMAS.items() for name in names
}


def assert_same_batch(a: serde.Payload, b: transitions.AnyBatch) -> None:
    assert isinstance(a, transitions.TransitionBatch | transitions.RewardedTransitionBatch)
    assert type(a) is type(b)
    assert a.event == b.event
    for f, col in transitions.columns(type(a)):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        elif col.where == "intervention":
            np.testing.assert_array_equal(x[a.intervention], y[b.intervention])
        else:
            np.testing.assert_array_equal(x, y)
            # String width is an artefact of how the array was built; the kind is the type.
            assert (x.dtype.kind == y.dtype.kind == "U") or x.dtype == y.dtype, f.name


CONTROL_EVENTS = [e for e in examples() if TOPIC_OF[e.schema_name].value != catalog.Value.ARROW]


@pytest.mark.parametrize("event", CONTROL_EVENTS, ids=lambda e: e.schema_name)
def test_every_control_event_round_trips_through_its_topic(event: events.Envelope) -> None:
    spec = TOPIC_OF[event.schema_name]
    rec = serde.encode(spec, event)
    headers = dict(rec.headers)
    assert headers[serde.HEADER_SCHEMA] == event.schema_name.encode()
    assert headers[serde.HEADER_VERSION] == b"1"
    assert headers[serde.HEADER_CONTENT_TYPE] == serde.CONTENT_TYPES[spec.value].encode()
    assert serde.decode(spec, rec.value, rec.headers) == event


def test_control_events_are_plain_json_text() -> None:
    hb = events.HeartbeatV1(site="lab-a", robot_id="r1", seq=1, state="idle")
    rec = serde.encode(catalog.HEARTBEATS, hb)
    assert rec.value.decode().startswith("{") and b'"schema_name":"heartbeat"' in rec.value
    assert rec.key == b"r1"


def test_json_without_headers_is_read_from_the_body() -> None:
    hb = events.HeartbeatV1(site="lab-a", robot_id="r1", seq=1, state="idle")
    assert serde.decode(catalog.HEARTBEATS, hb.model_dump_json().encode(), None) == hb


def test_keys_and_site_partitions_follow_the_topic_spec() -> None:
    sites = SiteMap(sites={"lab-a": (0, 1), "lab-b": (2, 3)})
    batch = samples.batch(samples.robot_spec(), 3, site="lab-b", robot_id="arm7")
    rec = serde.encode(catalog.TRANSITIONS_RAW, batch, sites=sites)
    assert rec.key == b"lab-b/arm7"
    assert rec.partition == sites.partition_for("lab-b", "arm7")
    assert rec.partition in (2, 3)
    chunk = next(e for e in examples() if isinstance(e, events.WeightsChunkV1))
    assert serde.encode(catalog.WEIGHTS, chunk, sites=sites).key == b"e1/2"


def test_an_event_is_refused_on_a_topic_it_does_not_belong_to() -> None:
    hb = events.HeartbeatV1(site="lab-a", robot_id="r1", seq=1, state="idle")
    with pytest.raises(SchemaError) as err:
        serde.encode(catalog.COMMANDS, hb)
    assert err.value.reason is RejectReason.WRONG_TOPIC


def test_a_batch_too_big_for_its_topic_is_refused_at_the_producer() -> None:
    big = samples.batch(samples.robot_spec(cameras=("a", "b")), 1500)
    with pytest.raises(ValueError, match="fewer steps"):
        serde.encode(catalog.TRANSITIONS_RAW, big,
                      settings=serde.SerdeSettings(arrow_compression="none"))


def test_the_arrow_schema_is_derived_from_the_robot_spec() -> None:
    spec = samples.robot_spec(obs_dim=7, act_dim=2, cameras=("front",), info={"goal": 3})
    schema = transitions.arrow_schema(transitions.TransitionBatch, spec)
    assert schema.field("observation").type == pa.list_(pa.float32(), 7)
    assert schema.field("action").type == pa.list_(pa.float32(), 2)
    assert schema.field("images").type.field("front").type == pa.list_(pa.uint8(), 84 * 84 * 3)
    assert schema.field("info").type.field("goal").type == pa.list_(pa.float32(), 3)
    rewarded = transitions.arrow_schema(transitions.RewardedTransitionBatch, spec)
    assert set(rewarded.names) - set(schema.names) == {"reward_fn", "reward", "success",
                                                        "terminated"}
    batch = samples.batch(spec, 5)
    assert transitions.to_arrow(batch).schema.remove_metadata() == schema


def test_decoded_arrays_are_numpy_views_not_python_objects() -> None:
    spec = samples.robot_spec(cameras=("front",))
    batch = samples.batch(spec, 64)
    rec = serde.encode(catalog.TRANSITIONS_RAW, batch,
                       settings=serde.SerdeSettings(arrow_compression="none"))
    out = serde.decode(catalog.TRANSITIONS_RAW, rec.value, rec.headers)
    assert isinstance(out, transitions.TransitionBatch)
    assert out.observation.dtype == np.float32 and out.observation.shape == (64, 32)
    assert out.images["front"].dtype == np.uint8 and out.images["front"].shape == (64, 84, 84, 3)
    assert out.episode_id.dtype.kind == "U"
    assert not out.observation.flags.writeable  # a view of the Arrow buffer


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_compression_is_a_setting(compression: str) -> None:
    spec = samples.robot_spec()
    batch = samples.batch(spec, 256)
    batch = transitions.TransitionBatch.build(
        batch.event, episode_id=batch.episode_id, step=batch.step, seq=batch.seq,
        observation=np.zeros_like(batch.observation), action=batch.action,
        policy_version=batch.policy_version, observed_ns=batch.observed_ns,
        truncated=batch.truncated, final_observation=batch.final_observation)
    cfg = serde.SerdeSettings(arrow_compression=compression)
    rec = serde.encode(catalog.TRANSITIONS_RAW, batch, settings=cfg)
    plain = serde.encode(catalog.TRANSITIONS_RAW, batch,
                         settings=serde.SerdeSettings(arrow_compression="none"))
    if compression != "none":
        assert len(rec.value) < len(plain.value)
    assert_same_batch(serde.decode(catalog.TRANSITIONS_RAW, rec.value, rec.headers), batch)


def test_rewarded_batches_round_trip_with_their_reward_function() -> None:
    raw = samples.batch(samples.robot_spec(cameras=("wrist",)), 120)
    n = len(raw)
    rewarded = transitions.RewardedTransitionBatch.from_raw(
        raw, reward_fn="reach_dense@2", reward=-np.linspace(0, 1, n), success=raw.step > 40,
        terminated=raw.step == 45)
    rec = serde.encode(catalog.TRANSITIONS, rewarded)
    back = serde.decode(catalog.TRANSITIONS, rec.value, rec.headers)
    assert isinstance(back, transitions.RewardedTransitionBatch)
    assert back.reward_fn == "reach_dense@2" and back.event.raw_event_id == raw.event.event_id
    assert_same_batch(back, rewarded)
    np.testing.assert_array_equal(back.cut_off, raw.truncated & ~(raw.step == 45))


def test_a_learner_gets_flat_columns() -> None:
    batch = samples.batch(samples.robot_spec(), 10)
    cols = batch.as_columns()
    assert cols["robot_id"].tolist() == ["r1"] * 10
    assert cols["observation"].shape == (10, 32)


@st.composite
def batches(draw: st.DrawFn) -> transitions.AnyBatch:
    obs = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    act = draw(st.integers(1, 6))
    cams = draw(st.lists(st.sampled_from(["front", "wrist", "top"]), unique=True, max_size=2))
    hw = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    info = draw(st.dictionaries(st.sampled_from(["goal", "ee_pos", "contact"]),
                                st.integers(1, 4), max_size=2))
    n = draw(st.integers(1, 40))
    spec = samples.robot_spec(obs_dim=1, act_dim=act, cameras=tuple(cams), image_hw=hw,
                              info=info)
    spec = spec.model_copy(update={"observation": spec.observation.model_copy(
        update={"shape": tuple(obs)})})
    episode_len = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    raw = samples.batch(spec, n, rng=seed, episode_len=episode_len,
                        first_step=draw(st.integers(0, 100)))
    if not draw(st.booleans()):
        return raw
    gen = np.random.default_rng(seed)
    return transitions.RewardedTransitionBatch.from_raw(
        raw, reward_fn="r@1", reward=gen.standard_normal(n), success=gen.random(n) < 0.5,
        terminated=gen.random(n) < 0.1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), compression=st.sampled_from(["zstd", "none"]))
def test_any_batch_round_trips_through_arrow_ipc(batch: transitions.AnyBatch,
                                                 compression: str) -> None:
    spec = (catalog.TRANSITIONS_RAW if isinstance(batch, transitions.TransitionBatch)
            else catalog.TRANSITIONS)
    cfg = serde.SerdeSettings(arrow_compression=compression)
    rec = serde.encode(spec, batch, settings=cfg)
    back = serde.decode(spec, rec.value, rec.headers)
    assert_same_batch(back, batch)
    assert not isinstance(back, events.Envelope)
    transitions.check_content(back)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises_anything_but_schema_error(data: bytes) -> None:
    for spec in catalog.CATALOG:
        with contextlib.suppress(SchemaError):
            serde.decode(spec, data, [(serde.HEADER_SCHEMA, b"heartbeat"),
                                      (serde.HEADER_VERSION, b"1")])
