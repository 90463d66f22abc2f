"""Event models: frozen, strict, versioned; the registry upcasts old versions."""

from __future__ import annotations

import hashlib
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from schemas import events, registry, samples
from schemas.events import RejectReason, SchemaError

ident = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,15}", fullmatch=True)
finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)


def examples() -> list[events.Envelope]:
    """One valid instance of every event model (V1 and V2)."""
    data = b"weights" * 10
    sha = hashlib.sha256(data).hexdigest()
    where = {"site": "lab-a", "robot_id": "r1"}
    return [
        events.RobotAnnouncedV1(**where, spec=samples.robot_spec(cameras=("front",),
                                                                  info={"goal": 3})),
        events.RobotStateChangedV1(**where, state=events.RobotState.LOST,
                                   previous=events.RobotState.RUNNING, reason="no heartbeat"),
        events.HeartbeatV1(**where, seq=3, state=events.RobotState.RUNNING, uptime_s=1.5),
        events.ExperimentSubmittedV1(experiment_id="e1",
                                     spec={"robots": [{"type": "reacher", "count": 2}]}),
        events.ExperimentStatusV1(experiment_id="e1", state=events.ExperimentState.RUNNING,
                                  robots=("r1",)),
        events.LeaseGrantedV1(**where, experiment_id="e1", lease_id="l1"),
        events.LeaseReleasedV1(**where, experiment_id="e1", lease_id="l1",
                               reason=events.LeaseReleaseReason.ROBOT_LOST),
        events.TransitionBatchV1(**where, experiment_id="e1", robot_type="reacher", n_steps=4),
        events.RewardedTransitionBatchV1(**where, experiment_id="e1", robot_type="reacher",
                                         n_steps=4, reward_fn="reach_dense@1"),
        events.TransitionBatchV2(**where, experiment_id="e1", robot_type="reacher", n_steps=4,
                                 incarnation="0123abcd"),
        events.RewardedTransitionBatchV2(**where, experiment_id="e1", robot_type="reacher",
                                         n_steps=4, incarnation="0123abcd",
                                         reward_fn="reach_dense@1"),
        events.EpisodeStartedV1(**where, experiment_id="e1", episode_id="ep1", policy_version=0),
        events.EpisodeEndedV1(**where, experiment_id="e1", episode_id="ep1", steps=100,
                              reason=events.EpisodeEndReason.TIME_LIMIT, duration_s=5.0,
                              first_policy_version=0, last_policy_version=2),
        events.EpisodeLabeledV1(robot_id="r1", experiment_id="e1", episode_id="ep1",
                                success=True, success_from_step=40, labeled_by="ana"),
        events.WeightsManifestV1(experiment_id="e1", version=2, learner_step=1000,
                                 policy="mlp_gaussian", total_bytes=len(data), sha256=sha,
                                 chunk_bytes=1 << 20, chunk_sha256=(sha,), chunk_offsets=(17,),
                                 tensors=(events.TensorInfo(name="w", dtype="float32",
                                                            shape=(2, 5), begin=0, end=40),)),
        events.WeightsChunkV1(experiment_id="e1", version=2, index=0, n_chunks=1, sha256=sha,
                              data=data),
        events.CommandV1(robot_id="r1", command=events.CommandKind.ESTOP, reason="test"),
        events.LearnerMetricsV1(experiment_id="e1", learner_step=5, policy_version=1,
                                metrics={"losses/critic": 0.5, "losses/actor": None}),
        events.DeadLetterV1(source_topic="heartbeats", source_partition=0, source_offset=9,
                            reason=RejectReason.NOT_JSON, detail="x", value_b64="eHl6",
                            value_size=3),
        events.GapDetectedV1(consumer="sink", topic="transitions", partition=1,
                             first_missing=10, last_missing=19),
        events.HostAnnouncedV1(host_id="h1", site="cloud", cpus=8, memory_mb=1024,
                               gpus=(events.GpuInfo(index=0, name="H100", memory_mb=81920),)),
        events.HostHeartbeatV1(host_id="h1", site="cloud", seq=0, running=("e1.learner.0",)),
        events.PlacementGrantedV1(placement_id="e1.learner.0", experiment_id="e1",
                                  host_id="h1", role=events.WorkloadRole.LEARNER, index=0,
                                  gpus=(0,)),
        events.PlacementReleasedV1(placement_id="e1.learner.0", experiment_id="e1",
                                   host_id="h1",
                                   reason=events.PlacementReleaseReason.HOST_LOST),
        events.InferenceRequestV1(site="lab-a", robot_id="r1", experiment_id="e1",
                                  request_seq=0, step=3, sent_ns=1, observation=(0.5, 1.0)),
        events.ActionChunkV1(site="lab-a", robot_id="r1", experiment_id="e1", request_seq=0,
                             step=3, sent_ns=1, actions=((0.1, 0.2), (0.3, 0.4))),
    ]


def test_every_event_model_has_an_example_and_a_registry_entry() -> None:
    shown = {type(e) for e in examples()}
    assert shown == set(events.ALL_V1) | set(events.ALL_V2)
    for model in shown:
        name, version = events.schema_id(model)
        assert registry.REGISTRY.model(name, version) is model


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.schema_name)
def test_every_event_survives_its_json_form(event: events.Envelope) -> None:
    payload = event.model_dump(mode="json")
    if isinstance(event, events.WeightsChunkV1):
        payload["data"] = event.data  # the chunk's bytes travel as the record value
    loaded = registry.REGISTRY.load(event.schema_name, event.schema_version, payload)
    if isinstance(event, events.TransitionBatchV1 | events.RewardedTransitionBatchV1):
        # Read as V2: the same header, its steps in the V1 incarnation, the experiment's
        # default instruction (none was recorded).
        assert isinstance(loaded, events.TransitionBatchV2 | events.RewardedTransitionBatchV2)
        assert (loaded.schema_version, loaded.incarnation, loaded.instruction) == (
            2, events.V1_INCARNATION, "")
        assert (loaded.model_dump(exclude={"schema_version", "incarnation", "instruction"})
                == event.model_dump(exclude={"schema_version"}))
    else:
        assert loaded == event


def test_events_are_frozen_and_refuse_unknown_fields() -> None:
    hb = examples()[2]
    with pytest.raises(ValidationError):
        setattr(hb, "seq", 4)  # noqa: B010 — what a careless caller would do
    with pytest.raises(ValidationError, match="extra"):
        events.HeartbeatV1.model_validate(
            {"site": "a", "robot_id": "r", "seq": 1, "state": "idle", "colour": "red"})


def test_an_event_cannot_claim_another_schema() -> None:
    with pytest.raises(ValidationError):
        events.HeartbeatV1(site="a", robot_id="r", seq=1, state="idle",
                           schema_name="command")


def test_json_has_no_nan_so_events_refuse_it() -> None:
    with pytest.raises(ValidationError):
        events.HeartbeatV1(site="a", robot_id="r", seq=1, state="idle", uptime_s=float("nan"))


def test_identifiers_cannot_contain_a_slash_because_keys_join_them() -> None:
    with pytest.raises(ValidationError):
        events.HeartbeatV1(site="lab/a", robot_id="r", seq=1, state="idle")


def test_a_weights_chunk_must_match_its_hash() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        events.WeightsChunkV1(experiment_id="e", version=1, index=0, n_chunks=1,
                              sha256="0" * 64, data=b"abc")


@settings(max_examples=40, deadline=None)
@given(robot=ident, site=ident, seq=st.integers(0, 2**40), uptime=finite,
       state=st.sampled_from(list(events.RobotState)),
       version=st.none() | st.integers(0, 2**31))
def test_heartbeats_round_trip_through_json(robot: str, site: str, seq: int, uptime: float,
                                            state: events.RobotState,
                                            version: int | None) -> None:
    hb = events.HeartbeatV1(site=site, robot_id=robot, seq=seq, state=state, uptime_s=uptime,
                            policy_version=version)
    assert events.HeartbeatV1.model_validate_json(hb.model_dump_json()) == hb


@settings(max_examples=30, deadline=None)
@given(metrics=st.dictionaries(st.from_regex(r"[a-z]+/[a-z_]+", fullmatch=True),
                               st.none() | st.floats(allow_nan=False, allow_infinity=False),
                               max_size=8))
def test_learner_metrics_round_trip_through_json(metrics: dict[str, float | None]) -> None:
    m = events.LearnerMetricsV1(experiment_id="e", learner_step=1, policy_version=0,
                                metrics=metrics)
    assert events.LearnerMetricsV1.model_validate_json(m.model_dump_json()) == m


# -- evolution: a test-only V2 of the heartbeat ------------------------------------------


class HeartbeatV2(events.Envelope):
    """V2 splits the robot state into a coarse state and adds battery charge."""

    schema_name: Literal["heartbeat"] = "heartbeat"
    schema_version: Literal[2] = 2
    site: events.Ident
    robot_id: events.Ident
    seq: int = Field(ge=0)
    state: events.RobotState
    policy_version: int | None = None
    steps_total: int = 0
    uptime_ms: int = Field(ge=0)
    battery: float | None = None


def heartbeat_v1_to_v2(payload: dict[str, object]) -> dict[str, object]:
    # This made-up V2 keeps only the V1 fields it names (V1 has grown optional ones since).
    out = {k: v for k, v in payload.items() if k in HeartbeatV2.model_fields or k == "uptime_s"}
    uptime = out.pop("uptime_s", 0.0)
    assert isinstance(uptime, int | float)
    out["uptime_ms"] = round(uptime * 1000)
    out["battery"] = None
    return out


@pytest.fixture
def registry_v2() -> registry.Registry:
    reg = registry.REGISTRY.copy()
    reg.register(HeartbeatV2, upcast_from_previous=heartbeat_v1_to_v2)
    return reg


def test_a_v1_record_is_read_as_v2_through_its_upcaster(registry_v2: registry.Registry) -> None:
    v1 = events.HeartbeatV1(site="lab-a", robot_id="r1", seq=7, state="running", uptime_s=2.5)
    loaded = registry_v2.load("heartbeat", 1, v1.model_dump(mode="json"))
    assert isinstance(loaded, HeartbeatV2)
    assert (loaded.uptime_ms, loaded.battery, loaded.seq) == (2500, None, 7)
    assert loaded.event_id == v1.event_id and loaded.schema_version == 2


def test_a_v2_record_is_read_as_is(registry_v2: registry.Registry) -> None:
    v2 = HeartbeatV2(site="lab-a", robot_id="r1", seq=1, state="idle", uptime_ms=5, battery=0.9)
    assert registry_v2.load("heartbeat", 2, v2.model_dump(mode="json")) == v2


def test_a_reader_that_knows_only_v1_refuses_v2_rather_than_guess() -> None:
    with pytest.raises(SchemaError) as err:
        registry.REGISTRY.load("heartbeat", 2, {"seq": 1})
    assert err.value.reason is RejectReason.UNKNOWN_VERSION


def test_registering_v2_without_an_upcaster_is_refused() -> None:
    reg = registry.REGISTRY.copy()
    with pytest.raises(ValueError, match="upcaster"):
        reg.register(HeartbeatV2)


def test_a_failing_upcaster_is_a_rejection_not_a_crash() -> None:
    reg = registry.REGISTRY.copy()

    def broken(payload: dict[str, object]) -> dict[str, object]:
        raise KeyError("uptime_s")

    reg.register(HeartbeatV2, upcast_from_previous=broken)
    with pytest.raises(SchemaError) as err:
        reg.load("heartbeat", 1, {"seq": 1})
    assert err.value.reason is RejectReason.UPCAST_FAILED
