"""Reward plug-ins: pure functions of a batch, looked up by name@version."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import rewards
from pipeline.rewards import reach
from schemas import samples, transitions
from schemas.events import SchemaError


def reach_batch(ee: list[list[float]], goal: list[list[float]]) -> transitions.TransitionBatch:
    spec = samples.robot_spec(obs_dim=4, act_dim=2, info={"ee_pos": 3, "goal_pos": 3})
    base = samples.batch(spec, len(ee))
    return transitions.TransitionBatch.build(
        base.event, episode_id=base.episode_id, step=base.step, seq=base.seq,
        observation=base.observation, action=base.action,
        policy_version=base.policy_version, observed_ns=base.observed_ns,
        info={"ee_pos": np.asarray(ee, np.float32), "goal_pos": np.asarray(goal, np.float32)})


def test_builtins_are_registered_by_name_at_version() -> None:
    known = rewards.available()
    assert {"reach_dense@1", "reach_sparse@1"} <= set(known)
    assert known["reach_dense@1"].doc


def test_dense_reach_is_minus_the_distance_to_the_goal() -> None:
    batch = reach_batch([[0, 0, 0], [0.3, 0, 0], [0.1, 0.1, 0]], [[0, 0, 0.04]] * 3)
    out = rewards.lookup("reach_dense@1")(batch)
    want = -np.linalg.norm(batch.info["goal_pos"] - batch.info["ee_pos"], axis=1)
    np.testing.assert_allclose(out.reward, want, rtol=1e-6)
    assert out.reward.dtype == np.float32
    assert out.success.tolist() == [True, False, False]
    assert not out.terminated.any()


def test_sparse_reach_pays_one_only_within_the_success_radius() -> None:
    r = reach.SUCCESS_RADIUS
    batch = reach_batch([[0, 0, 0]] * 3, [[r * 0.99, 0, 0], [r * 1.01, 0, 0], [0, 0, 0]])
    out = rewards.lookup("reach_sparse@1")(batch)
    assert out.reward.tolist() == [1.0, 0.0, 1.0]
    assert out.success.tolist() == [True, False, True]


def test_apply_builds_a_rewarded_batch_naming_its_function_and_raw_batch() -> None:
    batch = reach_batch([[0, 0, 0]] * 4, [[0.1, 0, 0]] * 4)
    fn = rewards.lookup("reach_dense@1")
    rewarded = rewards.apply(fn, batch)
    assert rewarded.reward_fn == "reach_dense@1"
    assert rewarded.event.raw_event_id == batch.event.event_id
    np.testing.assert_array_equal(rewarded.step, batch.step)
    # The rewarded batch survives its wire form.
    back = transitions.from_arrow(transitions.to_arrow(rewarded))
    np.testing.assert_array_equal(back.reward, rewarded.reward)  # type: ignore[union-attr]


def test_a_batch_without_the_needed_info_is_a_schema_error_for_the_dlq() -> None:
    spec = samples.robot_spec(obs_dim=4, act_dim=2)
    with pytest.raises(SchemaError, match="needs info"):
        rewards.lookup("reach_dense@1")(samples.batch(spec, 3))


def test_unknown_reward_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="reach_dense@1"):
        rewards.lookup("reach_dense@99")


def test_a_second_function_under_an_existing_id_is_refused() -> None:
    def other(batch: transitions.TransitionBatch) -> rewards.Rewards:
        raise AssertionError

    with pytest.raises(ValueError, match="registered twice"):
        rewards.register("reach_dense", "1")(other)


def test_rewards_refuse_non_finite_values_and_ragged_shapes() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rewards.Rewards(np.array([np.nan]), np.array([False]), np.array([False]))
    with pytest.raises(ValueError, match=r"\(n,\)"):
        rewards.Rewards(np.zeros(2), np.zeros(3, bool), np.zeros(2, bool))


def test_a_plugin_registered_in_a_new_version_sits_beside_the_old() -> None:
    @rewards.register("test_constant", "2")
    def constant_v2(batch: transitions.TransitionBatch) -> rewards.Rewards:
        n = len(batch)
        return rewards.Rewards(np.full(n, 2.0), np.zeros(n, bool), np.zeros(n, bool))

    batch = reach_batch([[0, 0, 0]], [[0, 0, 0]])
    assert rewards.lookup("test_constant@2")(batch).reward.tolist() == [2.0]
    assert rewards.lookup("reach_dense@1")(batch).reward.tolist() == [0.0]


def test_a_rewarded_batch_keeps_the_raw_steps_identity_and_intervention_contract() -> None:
    spec = samples.robot_spec(obs_dim=4, act_dim=2, info={"ee_pos": 3, "goal_pos": 3})
    raw = samples.batch(spec, 20, first_step=40, incarnation="abc123")
    out = rewards.apply(rewards.lookup("reach_dense@1"), raw)
    assert (out.event.robot_id, out.event.incarnation) == (raw.robot_id, "abc123")
    np.testing.assert_array_equal(out.seq, np.arange(40, 60))
    np.testing.assert_array_equal(out.intervention, raw.intervention)
    np.testing.assert_array_equal(out.action, raw.action)
    np.testing.assert_array_equal(out.policy_action[out.intervention],
                                  raw.policy_action[raw.intervention])
    np.testing.assert_array_equal(out.end_reason, raw.end_reason)
