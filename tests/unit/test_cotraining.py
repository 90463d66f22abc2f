"""Heterogeneous co-training: one policy shared across robot types (issue 11 §5)."""

from __future__ import annotations

import numpy as np
import pytest

from learners import policies
from learners.core import StepBatch
from learners.loop import SHARED, Learner, Steps
from learners.policies import PolicySpec, shared
from learners.weights_sync import PublisherStats, Snapshot
from schemas.experiment import ExperimentSpec

EE = PolicySpec(0, 4, (-1.0,) * 4, (1.0,) * 4)  # the manipulators' EE delta + gripper
SPECS = {"panda": PolicySpec(13, 4, EE.action_low, EE.action_high),
         "ur5e": PolicySpec(11, 4, EE.action_low, EE.action_high)}


class Recorder:
    """A publisher that keeps what it was given."""

    def __init__(self) -> None:
        self.stats = PublisherStats()
        self.snapshots: list[Snapshot] = []

    @property
    def published_version(self) -> int:
        return len(self.snapshots)

    def publish(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


def experiment(shared: bool) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "name": "cotrain", "robots": [{"robot_type": "panda"}, {"robot_type": "ur5e"}],
        "algorithm": {"batch_size": 16, "warmup_steps": 20},
        "policy": {"hidden": [8, 8], "shared_across_types": shared},
        "buffer": {"memory_budget_mb": 4},
    })


def steps(robot_type: str, n: int, rng: np.random.Generator) -> Steps:
    dim = SPECS[robot_type].observation_dim
    truncated = np.zeros(n, bool)
    truncated[-1] = True
    batch = StepBatch(
        robot_id=np.full(n, f"{robot_type}-1"), episode_id=np.full(n, "e1"),
        step=np.arange(n), observation=rng.normal(size=(n, dim)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
        reward=rng.normal(size=n).astype(np.float32), terminated=np.zeros(n, bool),
        policy_version=np.zeros(n, np.int64), truncated=truncated,
        next_observation=rng.normal(size=(n, dim)).astype(np.float32),
    )
    return Steps("cotrain", robot_type, batch, np.full(n, "inc"), np.arange(n, dtype=np.int64),
                 np.zeros(n, bool))


def test_a_shared_policy_learner_trains_one_network_on_two_types_and_serves_both() -> None:
    publishers: dict[str, Recorder] = {}

    def publisher_for(stream: str) -> tuple[Recorder, int]:
        return publishers.setdefault(stream, Recorder()), 0

    learner = Learner(experiment(shared=True), SPECS.get, publisher_for)
    learner.open_known()
    assert list(learner.types) == [SHARED]
    assert learner.types[SHARED].policy_spec.observation_dim == 13 + 2  # padded + one-hot
    rng = np.random.default_rng(0)
    assert learner.add(steps("panda", 30, rng), "live") == 30
    assert learner.add(steps("ur5e", 30, rng), "live") == 30
    while learner.train_round():
        pass
    assert learner.update_step == 60 - 20  # one network, both types' steps behind its UTD cap
    learner.publish_all()
    assert sorted(publishers) == ["cotrain.panda", "cotrain.ur5e"]
    weights = [p.snapshots[-1].tensors for p in publishers.values()]
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    for robot_type, spec in SPECS.items():
        snapshot = publishers[f"cotrain.{robot_type}"].snapshots[-1]
        assert snapshot.spec == spec
        # A robot builds the policy from its own spec and the published options…
        policy = policies.build(snapshot.kind, spec, dict(snapshot.options))
        policy.load_weights(snapshot.tensors)
        obs = rng.normal(size=(3, spec.observation_dim)).astype(np.float32)
        action = policy.act(obs, deterministic=True)
        assert action.shape == (3, 4) and np.all(np.abs(action) <= 1.0)


def test_per_type_mode_keeps_one_policy_per_type() -> None:
    learner = Learner(experiment(shared=False), SPECS.get, lambda s: (Recorder(), 0))
    learner.open_known()
    assert sorted(learner.types) == ["panda", "ur5e"]


def test_types_without_a_common_action_space_cannot_share_a_policy() -> None:
    planar = PolicySpec(6, 2, (-1.0, -1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="common"):
        shared.shared_spec({"panda": SPECS["panda"], "reacher2d": planar})


def test_shared_encoding_pads_and_marks_the_robot_type() -> None:
    obs = np.array([[1.0, 2.0]], np.float32)
    out = shared.encode(obs, "b", ["a", "b"], 4)
    assert out.tolist() == [[1.0, 2.0, 0.0, 0.0, 0.0, 1.0]]


def test_submit_refuses_a_shared_policy_for_types_without_a_common_action_space() -> None:
    from infra import cmd_fleet

    def spec(types: list[str]) -> ExperimentSpec:
        return ExperimentSpec.model_validate({
            "name": "x", "robots": [{"robot_type": t} for t in types],
            "policy": {"shared_across_types": True}})

    assert cmd_fleet.task_problems(spec(["panda", "ur5e"])) == []
    problems = cmd_fleet.task_problems(spec(["panda", "arm7"]))
    assert len(problems) == 1 and problems[0].startswith("policy.shared_across_types:")
