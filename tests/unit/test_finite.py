"""Finite or nothing, at validation (issue 10, failing input 4): a batch outside the bounds
its robot announced is dead-lettered with the column and the bound, before any learner
sees it.  (The learner's and the agents' own guards: test_learners_sac, test_learn_loop,
test_weights_sync.)"""

from __future__ import annotations

import numpy as np
import pytest

from agents import registry
from schemas import samples, transitions
from schemas.events import RejectReason
from schemas.spaces import ArraySpec
from topics import catalog, serde, validation

BOUNDED = samples.robot_spec(obs_dim=6, act_dim=2, info={"ee_pos": 3}).model_copy(update={
    "observation": ArraySpec(shape=(6,), low=-10.0, high=10.0),
    "info": {"ee_pos": ArraySpec(shape=(3,), low=-2.0, high=2.0)},
})
RULES = validation.Rules(robots={"r1": BOUNDED})


def record(batch: transitions.TransitionBatch) -> validation.Record:
    enc = serde.encode(catalog.TRANSITIONS_RAW, batch)
    return validation.Record(topic=enc.topic, partition=0, offset=5, value=enc.value,
                             key=enc.key, headers=tuple(enc.headers))


def good() -> transitions.TransitionBatch:
    batch = samples.batch(BOUNDED, 12, episode_len=5)
    batch.info["ee_pos"][:] = np.clip(batch.info["ee_pos"], -1.0, 1.0)
    return batch


def test_a_batch_inside_its_announced_bounds_is_accepted() -> None:
    assert isinstance(validation.validate(record(good()), RULES), validation.Accepted)


def test_an_observation_of_1e30_is_dead_lettered_naming_the_column_and_the_bound() -> None:
    batch = good()
    batch.observation[3, 1] = 1e30  # finite, so check_content alone lets it through
    result = validation.validate(record(batch), RULES)
    assert isinstance(result, validation.Rejected)
    assert result.reason == RejectReason.OUT_OF_BOUNDS
    assert "observation[3, 1] = 1e+30" in result.detail
    assert "high bound 10" in result.detail
    letter = validation.dead_letter(result, consumer="learner-exp-1")
    assert letter.reason == RejectReason.OUT_OF_BOUNDS and letter.source_offset == 5
    # Without the robot's announcement there is no bound to hold it to.
    assert isinstance(validation.validate(record(batch)), validation.Accepted)


@pytest.mark.parametrize("column", ["final_observation", "info"])
def test_final_observations_and_info_arrays_are_held_to_their_bounds(column: str) -> None:
    batch = good()
    if column == "final_observation":
        batch.final_observation[0, 2] = -11.0
        want = "final_observation[0, 2] = -11 is outside the announced low bound -10"
    else:
        batch.info["ee_pos"][4, 0] = 2.5
        want = "info['ee_pos'][4, 0] = 2.5 is outside the announced high bound 2"
    result = validation.validate(record(batch), RULES)
    assert isinstance(result, validation.Rejected)
    assert result.reason == RejectReason.OUT_OF_BOUNDS
    assert want in result.detail


def test_values_within_the_tolerance_of_a_bound_are_accepted() -> None:
    batch = good()
    batch.observation[0, 0] = 10.0 + transitions.BOUNDS_TOLERANCE / 2
    assert isinstance(validation.validate(record(batch), RULES), validation.Accepted)


def test_the_simulated_arm_announces_observation_bounds_its_own_steps_keep() -> None:
    robot = registry.make_robot("reacher2d", seed=3)
    try:
        spec = robot.spec.observation
        assert spec.low is not None and spec.high is not None
        low, high = np.asarray(spec.low), np.asarray(spec.high)
        rng = np.random.default_rng(0)
        step = robot.reset()
        for _ in range(40):
            assert np.all(step.observation >= low) and np.all(step.observation <= high)
            step = robot.step(rng.uniform(-1, 1, robot.spec.action.shape))
    finally:
        robot.close()
