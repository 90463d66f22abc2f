"""The demo's live numbers and report, from rewarded batches (no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from infra.progress import Progress, render, write_report
from schemas import events as ev
from schemas.experiment import StopSpec
from schemas.transitions import RewardedTransitionBatch, TransitionBatch


def rewarded(robot_type: str, successes_at_end: list[bool], experiment: str = "exp",
             steps_per_episode: int = 4) -> RewardedTransitionBatch:
    n = steps_per_episode * len(successes_at_end)
    truncated = np.zeros(n, np.bool_)
    truncated[steps_per_episode - 1::steps_per_episode] = True
    success = np.zeros(n, np.bool_)
    success[truncated] = successes_at_end
    raw = TransitionBatch.build(
        ev.TransitionBatchV2(site="lab-a", robot_id=f"{robot_type}-0", experiment_id=experiment,
                             robot_type=robot_type, n_steps=n, incarnation="i0"),
        episode_id=np.repeat([f"e{i}" for i in range(len(successes_at_end))],
                             steps_per_episode),
        step=np.tile(np.arange(steps_per_episode), len(successes_at_end)), seq=np.arange(n),
        observation=np.zeros((n, 3), np.float32), action=np.zeros((n, 2), np.float32),
        policy_version=np.zeros(n, np.int64), observed_ns=np.arange(n, dtype=np.int64),
        truncated=truncated, final_observation=np.zeros((int(truncated.sum()), 3), np.float32),
    )
    return RewardedTransitionBatch.from_raw(raw, reward_fn="reach_dense@1",
                                            reward=np.zeros(n), success=success,
                                            terminated=np.zeros(n, np.bool_))


def test_success_rate_is_per_robot_type_over_the_last_episodes() -> None:
    p = Progress("exp", window=4, started=0.0)
    p.on_rewarded(rewarded("reacher2d", [False, False, True, True, True, True]), now=10.0)
    p.on_rewarded(rewarded("arm7", [True, False]), now=11.0)
    p.on_rewarded(rewarded("arm7", [True], experiment="other"), now=12.0)
    assert p.types["reacher2d"].success_rate == 1.0  # the last four only
    assert p.types["reacher2d"].episodes == 6 and p.types["reacher2d"].steps == 24
    assert p.types["arm7"].success_rate == 0.5 and p.steps == 32


def test_stop_reasons() -> None:
    p = Progress("exp", window=4, started=0.0)
    stop = StopSpec(target_success=0.75, success_window=4, max_wall_s=100,
                    target_robot_types=("reacher2d",))
    assert p.stop_reason(stop, ("reacher2d", "arm7"), now=1.0) is None
    p.on_rewarded(rewarded("reacher2d", [True, True, True, False]), now=2.0)
    assert "target success" in (p.stop_reason(stop, ("reacher2d", "arm7"), now=3.0) or "")
    q = Progress("exp", window=4, started=0.0)
    assert "time bound" in (q.stop_reason(stop, ("reacher2d",), now=101.0) or "")
    every = StopSpec(target_success=0.5, success_window=2)
    q.on_rewarded(rewarded("reacher2d", [True, True]), now=1.0)
    assert q.stop_reason(every, ("reacher2d", "arm7"), now=2.0) is None  # arm7 not there


def test_the_report_has_curves_a_summary_and_a_page(tmp_path: Path) -> None:
    p = Progress("exp", window=4, started=0.0)
    p.on_rewarded(rewarded("reacher2d", [False, True, True]), now=5.0)
    p.on_metrics(ev.LearnerMetricsV1(experiment_id="exp.reacher2d", learner_step=10,
                                     policy_version=3, metrics={"replay/size": 12.0}))
    stop = StopSpec()
    out = write_report(p, tmp_path / "runs" / "exp", reason="time bound", stop=stop)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["robot_types"]["reacher2d"]["episodes"] == 3
    assert summary["policy_version"] == 3 and summary["stopped_because"] == "time bound"
    assert "reacher2d" in (out / "README.md").read_text()
    assert "policy version 3" in render(p, [], stop)


def _rows(episode: str, steps: list[int], success: list[bool], last: bool,
          took: list[bool] | None = None) -> RewardedTransitionBatch:
    n = len(steps)
    truncated = np.zeros(n, np.bool_)
    truncated[-1] = last
    raw = TransitionBatch.build(
        ev.TransitionBatchV2(site="lab-a", robot_id="r0", experiment_id="exp",
                             robot_type="reacher2d", n_steps=n, incarnation="i0"),
        episode_id=[episode] * n, step=steps, seq=steps, observation=np.zeros((n, 3), np.float32),
        action=np.zeros((n, 2), np.float32), policy_version=np.zeros(n, np.int64),
        observed_ns=np.array(steps, np.int64), truncated=truncated,
        final_observation=np.zeros((int(last), 3), np.float32),
        intervention=None if took is None else np.array(took),
        policy_action=None if took is None else np.zeros((n, 2), np.float32))
    return RewardedTransitionBatch.from_raw(raw, reward_fn="reach_dense@1",
                                            reward=np.zeros(n), success=success,
                                            terminated=np.zeros(n, np.bool_))


def test_an_episode_succeeds_if_any_of_its_steps_did_even_in_an_earlier_batch() -> None:
    p = Progress("exp", window=4, started=0.0)
    # e1 reaches the goal at step 1 and has left it when it ends in the next batch.
    p.on_rewarded(_rows("e1", [0, 1], [False, True], last=False), now=1.0)
    assert p.types["reacher2d"].episodes == 0
    p.on_rewarded(_rows("e1", [2, 3], [False, False], last=True), now=2.0)
    p.on_rewarded(_rows("e2", [0, 1, 2, 3], [False] * 4, last=True), now=3.0)
    assert list(p.types["reacher2d"].recent) == [True, False]


def test_an_episode_a_human_took_over_is_not_a_success_of_the_policy() -> None:
    """Rescued episodes count as failures: the curves and the stop measure the policy
    (failing input, session 5: with the scripted operator rescuing, a pick_place run
    showed 90 % success at version 0 and stopped before learning anything)."""
    p = Progress("exp", window=4, started=0.0)
    p.on_rewarded(_rows("e1", [0, 1], [False, True], last=False, took=[True, False]), now=1.0)
    p.on_rewarded(_rows("e1", [2, 3], [False, False], last=True), now=2.0)
    p.on_rewarded(_rows("e2", [0, 1, 2, 3], [False, False, False, True], last=True), now=3.0)
    assert list(p.types["reacher2d"].recent) == [False, True]


def test_each_type_is_marked_where_it_first_met_the_target_over_a_full_window(
        tmp_path: Path) -> None:
    p = Progress("exp", window=4, started=0.0)
    # 2 of 2 episodes at 10 s is 100 %, but not yet over a window of 4 episodes.
    p.on_rewarded(rewarded("reacher2d", [True, True]), now=10.0)
    p.on_rewarded(rewarded("reacher2d", [False, True]), now=20.0)  # 3/4 at 16 steps
    p.on_rewarded(rewarded("reacher2d", [True]), now=30.0)  # 3/4 at 20 steps
    p.on_rewarded(rewarded("panda", [False, False, False, False]), now=30.0)
    stop = StopSpec(target_success=0.75, success_window=4)
    assert p.reached(p.types["reacher2d"], stop) == (20.0, 16, 0.75)
    assert p.reached(p.types["panda"], stop) is None
    assert "at 16 steps, 20 s" in render(p, [], stop)
    out = write_report(p, tmp_path / "exp", reason="time bound", stop=stop)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["robot_types"]["reacher2d"]["target_reached"] == {"wall_s": 20.0,
                                                                    "env_steps": 16}
    assert summary["robot_types"]["panda"]["target_reached"] is None
    page = (out / "README.md").read_text()
    assert "| reacher2d | 20 | 5 | 75% | 16 env steps, 20 s |" in page
    assert "| panda | 16 | 4 | 0% | not reached |" in page
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0] == "robot_type,wall_s,env_steps,success_rate"
    assert len(rows) == 1 + 5 + 4 and "reacher2d,20.0,16,0.7500" in rows
