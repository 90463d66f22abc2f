"""push_dense@2 (shaped like the scripted expert) and the manipulators bench's knobs
(``--device``, ``--reward``, ``--set``) on the CPU path."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from infra.bench import manipulators as bench
from pipeline import rewards
from schemas import tasks as rules


@dataclasses.dataclass
class InfoBatch:
    """What a reward function reads of a ``TransitionBatch``: ``info`` and its length."""

    info: dict[str, npt.NDArray[np.float32]]

    def __len__(self) -> int:
        return len(next(iter(self.info.values())))


def _batch(ee: list[list[float]], cube: list[list[float]], goal: list[list[float]]) -> InfoBatch:
    return InfoBatch({rules.EE_POS: np.array(ee, np.float32),
                      rules.CUBE_POS: np.array(cube, np.float32),
                      rules.GOAL_POS: np.array(goal, np.float32)})


def test_v2_rewards_the_hand_behind_the_cube_over_the_hand_on_the_targets_side() -> None:
    # The target is +x of the cube. Row 0: hand 6 cm behind (-x); row 1: 6 cm in front (+x),
    # both at push height. v1 scores them alike; v2 prefers the side a push starts from.
    cube, goal = [0.5, 0.0, rules.CUBE_HALF], [0.7, 0.0, 0.0]
    h = rules.CUBE_HALF + 0.012
    batch = _batch([[0.44, 0.0, h], [0.56, 0.0, h]], [cube, cube], [goal, goal])
    v1 = rewards.lookup("push_dense@1").fn(batch)  # type: ignore[arg-type]
    v2 = rewards.lookup("push_dense@2").fn(batch)  # type: ignore[arg-type]
    assert v1.reward[0] == pytest.approx(v1.reward[1])
    assert v2.reward[0] > v2.reward[1] + 0.05


def test_v2_agrees_with_the_success_rule_and_pays_for_moving_the_cube_closer() -> None:
    # Row 0: cube 20 cm from the target; row 1: 10 cm; row 2: 2 cm (success); row 3: 2 cm but
    # lifted (no success). The hand sits at the push point in every row.
    goal = [0.7, 0.0, 0.0]
    xs = (0.5, 0.6, 0.68, 0.68)
    zs = (rules.CUBE_HALF, rules.CUBE_HALF, rules.CUBE_HALF, 0.1)
    cubes = [[x, 0.0, z] for x, z in zip(xs, zs, strict=True)]
    hands = [[x - rules.CUBE_HALF - 0.02, 0.0, rules.CUBE_HALF + 0.012] for x in xs]
    batch = _batch(hands, cubes, [goal] * 4)
    out = rewards.lookup("push_dense@2").fn(batch)  # type: ignore[arg-type]
    rule = rules.push_success({k: v for k, v in batch.info.items()})
    assert out.success.tolist() == rule.tolist() == [False, False, True, False]
    assert out.reward[0] < out.reward[1] < out.reward[2]
    assert out.reward[2] == pytest.approx(1.0 - 5 * 0.02, abs=1e-3)  # the success bonus
    assert not out.terminated.any()
    assert rewards.lookup("push_dense@2").needs == rules.INFO_KEYS["push"]


def test_bench_overrides_reach_the_experiment_spec() -> None:
    spec = bench.experiment("push-panda", bench.RUNS["push-panda"], 3,
                            ["algorithm.utd_ratio=2", "algorithm.batch_size=512",
                             "reward=push_dense@2"])
    assert (spec.algorithm.utd_ratio, spec.algorithm.batch_size) == (2.0, 512)
    assert spec.algorithm.seed == 3
    assert str(spec.reward) == "push_dense@2"
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        bench.experiment("push-panda", bench.RUNS["push-panda"], 0, ["algorithm.utd_ratio"])


def test_bench_cpu_run_with_overrides_trains_and_saves_its_reward(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    args = bench_args(["--runs", "reach-arm7", "--max-steps", "300", "--round-steps", "100",
                       "--window", "2", "--device", "cpu", "--reward", "reach_sparse@1",
                       "--set", "algorithm.warmup_steps=100", "--set", "algorithm.batch_size=32",
                       "--set", "policy.hidden=[32,32]", "--json", str(out), "--no-write"])
    assert bench.run(args) == 0
    saved = json.loads(out.read_text())
    (result,) = saved["results"]
    assert result["reward"] == "reach_sparse@1"
    assert result["env_steps"] >= 300 and result["updates"] > 0
    command = next(line for line in saved["machine"] if line.startswith("- command:"))
    assert "--reward reach_sparse@1" in command and "--set algorithm.batch_size=32" in command
    assert result["variant"] == ("algorithm.warmup_steps=100; algorithm.batch_size=32; "
                                 "policy.hidden=[32,32]")
    merged = bench._of_json(result)
    assert merged.run.reward == "reach_sparse@1" and merged.run.task == "reach"
    assert merged.variant == result["variant"]


def bench_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)
