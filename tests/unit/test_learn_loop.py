"""The learner loop without Kafka or Delta: in-memory steps, real publishers on an
in-memory weights sink, checkpoints in a temporary directory."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from learners import checkpoint, loop, policies
from learners.loop import Learner, Steps
from learners.weights_sync import InMemoryWeightsSink, WeightsPublisher
from schemas import events, samples
from schemas.experiment import ExperimentSpec
from schemas.spaces import RobotSpec
from schemas.transitions import RewardedTransitionBatch

torch.set_num_threads(1)

REWARD = "reach_dense@1"
REACHER = samples.robot_spec(obs_dim=6, act_dim=2, robot_type="reacher2d")
ARM = samples.robot_spec(obs_dim=11, act_dim=7, robot_type="arm7")
ROBOT_SPECS = {s.robot_type: s for s in (REACHER, ARM)}


def experiment(**overrides: Any) -> ExperimentSpec:
    raw: dict[str, Any] = {
        "name": "exp-1",
        "robots": [{"robot_type": "reacher2d", "count": 2}],
        "algorithm": {"utd_ratio": 1.0, "batch_size": 16, "warmup_steps": 0},
        "policy": {"hidden": [8, 8]},
        "buffer": {"memory_budget_mb": 4},
        "weight_sync": {"every_updates": 5, "every_s": 3600},
        "stop": {"target_success": 1.0, "success_window": 1000},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw[key] = {**raw.get(key, {}), **value}
        else:
            raw[key] = value
    return ExperimentSpec.model_validate(raw)


def rewarded(spec: RobotSpec, batch: int, *, robot_id: str = "r1", experiment_id: str = "exp-1",
             steps: int = 10, reward_fn: str = REWARD) -> RewardedTransitionBatch:
    """Batch number ``batch`` of a robot: steps ``batch*steps …``, episodes of 25 steps."""
    raw = samples.batch(spec, steps, rng=batch, robot_id=robot_id, experiment_id=experiment_id,
                        first_step=batch * steps, episode_len=25)
    return RewardedTransitionBatch.from_raw(
        raw, reward_fn=reward_fn, reward=-np.abs(raw.observation[:, 0]),
        success=raw.step == 20, terminated=np.zeros(steps, bool))


class Publishers:
    """Real publishers on in-memory sinks, one per weights stream."""

    def __init__(self) -> None:
        self.sinks: dict[str, InMemoryWeightsSink] = {}
        self.publishers: list[WeightsPublisher] = []

    def __call__(self, stream: str) -> tuple[loop.Publisher, int]:
        sink = self.sinks.setdefault(stream, InMemoryWeightsSink())
        publisher = WeightsPublisher(sink, stream)
        publisher.start()
        self.publishers.append(publisher)
        return publisher, sink.latest_version(stream) or 0

    def close(self) -> None:
        for p in self.publishers:
            p.close(10.0)


class Source:
    """A StepSource over a list; ``wait`` counts how often the loop idled."""

    def __init__(self, items: list[Steps]) -> None:
        self.items = list(items)
        self.waits = 0
        self.drained = 0

    def drain(self, max_items: int) -> list[Steps]:
        out, self.items = self.items[:max_items], self.items[max_items:]
        self.drained += len(out)
        return out

    def wait(self, timeout_s: float) -> None:
        self.waits += 1

    def positions(self) -> dict[str, int]:
        return {"transitions:0": self.drained}


class Metrics:
    def __init__(self) -> None:
        self.events: list[events.LearnerMetricsV1] = []

    def send(self, event: events.LearnerMetricsV1) -> None:
        self.events.append(event)


@pytest.fixture
def publishers() -> Iterator[Publishers]:
    p = Publishers()
    yield p
    p.close()


def make(spec: ExperimentSpec, publishers: Publishers,
         known: dict[str, RobotSpec] | None = None) -> Learner:
    specs = ROBOT_SPECS if known is None else known

    def resolve(robot_type: str) -> policies.PolicySpec | None:
        s = specs.get(robot_type)
        return None if s is None else policies.PolicySpec.from_robot_spec(s)

    return Learner(spec, resolve, publishers)


def train_until_capped(learner: Learner) -> int:
    total = 0
    while done := learner.train_round():
        total += done
    return total


def keys(batches: list[RewardedTransitionBatch]) -> int:
    ids = np.concatenate([np.full(len(b), b.robot_id) for b in batches])
    episodes = np.concatenate([b.episode_id for b in batches])
    steps = np.concatenate([b.step for b in batches])
    return loop.fingerprint(ids, episodes, steps)


def test_updates_stop_at_utd_ratio_times_steps_after_warmup(publishers: Publishers) -> None:
    learner = make(experiment(algorithm={"utd_ratio": 0.5, "warmup_steps": 20}), publishers)
    for b in range(10):
        learner.add(Steps.of_batch(rewarded(REACHER, b)), "live")
    assert train_until_capped(learner) == (100 - 20) // 2
    learner.add(Steps.of_batch(rewarded(REACHER, 10)), "live")
    assert train_until_capped(learner) == 5
    assert learner.types["reacher2d"].update_step == 45


def test_no_update_before_warmup(publishers: Publishers) -> None:
    learner = make(experiment(algorithm={"warmup_steps": 50}), publishers)
    for b in range(5):
        learner.add(Steps.of_batch(rewarded(REACHER, b)), "live")
    assert train_until_capped(learner) == 0


def test_history_then_live_takes_every_step_once(publishers: Publishers) -> None:
    learner = make(experiment(), publishers)
    produced = [rewarded(REACHER, b, robot_id=r) for b in range(12) for r in ("r1", "r2")]
    for batch in produced[:16]:  # what Delta holds
        learner.add(Steps.of_batch(batch), "history")
    # Live reading repeats the last history records, and a reward job retried one batch.
    for batch in [*produced[12:], produced[18]]:
        learner.add(Steps.of_batch(batch), "live")
    t = learner.types["reacher2d"]
    assert t.counts["history"] == 160
    assert t.counts["live"] == 80
    assert t.env_steps == 240
    assert learner.duplicates == 4 * 10 + 10
    assert t.fingerprint == keys(produced)


def test_a_retried_batch_with_one_new_step_keeps_only_that_step(publishers: Publishers) -> None:
    learner = make(experiment(), publishers)
    learner.add(Steps.of_batch(rewarded(REACHER, 0, steps=10)), "live")
    assert learner.add(Steps.of_batch(rewarded(REACHER, 0, steps=11)), "live") == 1
    assert learner.types["reacher2d"].env_steps == 11


def test_other_experiments_and_unlisted_robot_types_are_ignored(publishers: Publishers) -> None:
    learner = make(experiment(), publishers)
    assert learner.add(Steps.of_batch(rewarded(REACHER, 0, experiment_id="other")), "live") == 0
    assert learner.add(Steps.of_batch(rewarded(ARM, 0)), "live") == 0
    assert learner.types == {}


def test_prior_experiment_rows_feed_the_prior_buffer_and_batches_mix_them(
        publishers: Publishers) -> None:
    learner = make(experiment(buffer={"prior_experiments": ["old"], "prior_ratio": 0.5}),
                   publishers)
    for b in range(5):
        learner.add(Steps.of_batch(rewarded(REACHER, b, experiment_id="old")), "history")
    learner.add(Steps.of_batch(rewarded(REACHER, 0)), "live")
    t = learner.types["reacher2d"]
    assert (t.counts["prior"], t.env_steps) == (50, 10)
    assert len(t.prior or []) > 0
    learner.train_round()
    assert t.last_stats["replay/prior_fraction"] == 0.5


def test_each_robot_type_trains_its_own_policy_on_its_own_stream(publishers: Publishers) -> None:
    spec = experiment(robots=[{"robot_type": "reacher2d"}, {"robot_type": "arm7"}])
    learner = make(spec, publishers)
    for b in range(3):
        learner.add(Steps.of_batch(rewarded(REACHER, b, robot_id="r1")), "live")
        learner.add(Steps.of_batch(rewarded(ARM, b, robot_id="a1")), "live")
    assert train_until_capped(learner) == 60
    assert {t: lt.update_step for t, lt in learner.types.items()} == {"reacher2d": 30, "arm7": 30}
    assert learner.types["arm7"].algorithm.spec.action_dim == 7
    for publisher in publishers.publishers:
        assert publisher.flush(10.0)
    streams = {policies.weights_stream("exp-1", t) for t in ("reacher2d", "arm7")}
    assert {s for s, sink in publishers.sinks.items() if sink.manifests} == streams
    assert {e.experiment_id for e in learner.metrics_events()} == streams


def test_steps_of_an_unannounced_robot_type_wait_for_its_spec(publishers: Publishers) -> None:
    known: dict[str, RobotSpec] = {}
    learner = make(experiment(), publishers, known)
    learner.add(Steps.of_batch(rewarded(REACHER, 0)), "history")
    assert learner.types == {}
    known["reacher2d"] = REACHER
    learner.retry_waiting()
    assert learner.types["reacher2d"].counts["history"] == 10


def test_success_rate_counts_episodes_that_saw_success(publishers: Publishers) -> None:
    learner = make(experiment(), publishers)
    for b in range(10):  # 100 steps: episodes 0-2 end at step 24 (truncated), all saw step 20
        learner.add(_took_over(Steps.of_batch(rewarded(REACHER, b)), ""), "live")
    t = learner.types["reacher2d"]
    assert (t.episodes, t.success_rate()) == (4, 1.0)


def _took_over(steps: Steps, episode: str, at: int = 10) -> Steps:
    """``steps`` with one takeover: step ``at`` of ``episode`` (the samples' random
    interventions cleared)."""
    s = steps.steps
    took = (s.episode_id == episode) & (s.step == at)
    return dataclasses.replace(steps, steps=dataclasses.replace(s, intervention=took))


def test_an_episode_a_human_took_over_does_not_count_toward_the_stop(
        publishers: Publishers) -> None:
    """The stop condition measures the policy: an episode the operator took over at any
    step is a failure even when it succeeded (failing input, session 5: imported demos
    and rescued episodes stopped a pick_place run after 54 s, before it learned)."""
    learner = make(experiment(), publishers)
    for b in range(10):  # episodes 0-3 succeed at step 20; a human held step 10 of episode 1
        learner.add(_took_over(Steps.of_batch(rewarded(REACHER, b)), "ep-0-1"), "live")
    t = learner.types["reacher2d"]
    assert (t.episodes, list(t.recent)) == (4, [True, False, True, True])


def test_a_resumed_learner_continues_at_its_update_step_with_its_networks(
        tmp_path: Path, publishers: Publishers) -> None:
    spec = experiment(robots=[{"robot_type": "reacher2d"}, {"robot_type": "arm7"}])
    produced = [rewarded(REACHER, b) for b in range(4)] + [rewarded(ARM, b, robot_id="a1")
                                                         for b in range(2)]
    first = make(spec, publishers)
    for batch in produced:
        first.add(Steps.of_batch(batch), "live")
    train_until_capped(first)
    checkpoints = loop.Checkpoints(tmp_path / "ckpt")
    path = checkpoints.save(first, {"delta_version": 3})

    second = make(spec, publishers, known={})  # specs come from the checkpoint
    assert checkpoints.resume(second, path)["delta_version"] == 3
    assert {t: lt.update_step for t, lt in second.types.items()} == {"reacher2d": 40, "arm7": 20}
    for robot_type in ("reacher2d", "arm7"):
        a = first.types[robot_type].algorithm.policy_weights()
        b = second.types[robot_type].algorithm.policy_weights()
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # Rebuilding the buffer from the same steps allows no extra update (the UTD cap holds).
    for batch in produced:
        second.add(Steps.of_batch(batch), "history")
    assert train_until_capped(second) == 0
    second.add(Steps.of_batch(rewarded(REACHER, 4)), "live")
    assert train_until_capped(second) == 10


def test_a_checkpoint_of_another_experiment_is_refused(tmp_path: Path,
                                                      publishers: Publishers) -> None:
    first = make(experiment(), publishers)
    first.add(Steps.of_batch(rewarded(REACHER, 0)), "live")
    path = loop.Checkpoints(tmp_path).save(first, {})
    other = make(experiment(name="exp-2"), publishers)
    with pytest.raises(ValueError, match="exp-1"):
        loop.Checkpoints(tmp_path).resume(other, path)


def test_the_loop_learns_while_data_flows_idles_at_the_cap_and_checkpoints_on_the_way_out(
        tmp_path: Path, publishers: Publishers) -> None:
    spec = experiment(stop={"max_env_steps": 200})
    learner = make(spec, publishers)
    source = Source([Steps.of_batch(rewarded(REACHER, b)) for b in range(20)])
    metrics = Metrics()
    checkpoints = loop.Checkpoints(tmp_path)
    report = loop.run(learner, source, metrics, checkpoints, threading.Event(),
                      loop.LoopSettings(metrics_s=0.0, checkpoint_s=3600, drain_items=1),
                      positions=lambda: {"delta_version": 7})
    t = learner.types["reacher2d"]
    assert "max_env_steps" in report.reason
    assert t.update_step == 200  # the run ends once the last steps' updates are done
    assert source.waits == 0  # data came faster than updates: never idle
    assert len(report.checkpoints) == 1 and checkpoints.latest() == report.checkpoints[0]
    assert metrics.events[-1].learner_step == t.update_step
    assert metrics.events[-1].metrics["charts/env_steps"] == 200
    publishers.publishers[0].flush(10.0)
    assert publishers.sinks[t.stream].manifests[-1].learner_step == t.update_step


def test_the_loop_waits_for_data_only_when_the_cap_is_reached(publishers: Publishers) -> None:
    learner = make(experiment(algorithm={"utd_ratio": 2.0}), publishers)
    source = Source([Steps.of_batch(rewarded(REACHER, 0))])
    stop = threading.Event()

    class Stopping(Source):
        def wait(self, timeout_s: float) -> None:
            super().wait(timeout_s)
            stop.set()

    stopping = Stopping(source.items)
    loop.run(learner, stopping, Metrics(), None, stop, loop.LoopSettings(metrics_s=3600))
    assert learner.types["reacher2d"].update_step == 20
    assert stopping.waits == 1


def test_fingerprints_add_up_and_notice_a_doubled_or_missing_step() -> None:
    ids = np.array(["r1"] * 4 + ["r2"] * 4)
    episodes = np.array(["e0", "e0", "e1", "e1"] * 2)
    steps = np.array([0, 1, 0, 1] * 2)
    whole = loop.fingerprint(ids, episodes, steps)
    halves = (loop.fingerprint(ids[:3], episodes[:3], steps[:3])
              + loop.fingerprint(ids[3:], episodes[3:], steps[3:])) & ((1 << 52) - 1)
    assert whole == halves
    doubled = np.r_[np.arange(7), 0]
    assert loop.fingerprint(ids[doubled], episodes[doubled], steps[doubled]) != whole
    other = steps.copy()
    other[3] = 2  # (r1, e1, 1) missing, (r1, e1, 2) instead
    assert loop.fingerprint(ids, episodes, other) != whole


# -- finite or nothing (issue 10, failing input 4) -------------------------------------------


def poisoned(batch: int, robot_id: str = "r1") -> Steps:
    """Rows whose observations hold 1e30: finite, but SAC's losses overflow on them."""
    steps = Steps.of_batch(rewarded(REACHER, batch, robot_id=robot_id))
    steps.steps.observation[:] = 1e30
    return steps


def published_tensors(publishers: Publishers, stream: str) -> list[dict[str, np.ndarray]]:
    for p in publishers.publishers:
        p.flush(10.0)
    sink = publishers.sinks[stream]
    return [policies.from_safetensors(b"".join(sink.chunks[o].data for o in m.chunk_offsets))
            for m in sink.manifests]


def test_non_finite_updates_are_skipped_counted_and_never_reach_the_weights(
        publishers: Publishers, caplog: pytest.LogCaptureFixture) -> None:
    learner = make(experiment(), publishers)
    for b in range(3):
        learner.add(poisoned(b), "live")
    for _ in range(5):
        assert learner.train_round() == 1  # an update was tried, and skipped
    t = learner.types["reacher2d"]
    assert t.update_step == 0 and t.skipped_updates == 5 and t.divergences == 5
    assert sum("update skipped" in r.message for r in caplog.records
               if r.levelname == "WARNING") == 1  # the first of a run; the rest at DEBUG
    learner.publish_all()
    (metrics,) = learner.metrics_events()
    assert metrics.metrics["charts/skipped_updates"] == 5
    for tensors in published_tensors(publishers, t.stream):
        assert policies.non_finite(tensors) is None


def test_a_non_finite_policy_is_neither_published_nor_checkpointed(
        tmp_path: Path, publishers: Publishers, caplog: pytest.LogCaptureFixture) -> None:
    learner = make(experiment(), publishers)
    learner.add(Steps.of_batch(rewarded(REACHER, 0)), "live")
    train_until_capped(learner)
    learner.publish_all()
    t = learner.types["reacher2d"]
    versions = len(published_tensors(publishers, t.stream))
    assert versions >= 1
    with torch.no_grad():  # a divergence that got past the update's own guard
        next(t.algorithm.actor.parameters()).fill_(float("nan"))
    learner.add(Steps.of_batch(rewarded(REACHER, 1)), "live")
    t.algorithm.update_step += 1  # pretend one more update ran, so a publish is due
    learner.publish_all()
    assert len(published_tensors(publishers, t.stream)) == versions  # nothing new went out
    assert t.refused_snapshots == 1 and t.divergences == 1
    assert any("not publishing" in r.message for r in caplog.records)
    with pytest.raises(checkpoint.NonFiniteCheckpoint, match="non-finite"):
        loop.Checkpoints(tmp_path).save(learner, {})
    assert loop.Checkpoints(tmp_path).latest() is None


def test_repeated_divergence_reloads_the_last_good_checkpoint_and_says_so(
        tmp_path: Path, publishers: Publishers, caplog: pytest.LogCaptureFixture) -> None:
    learner = make(experiment(), publishers)
    learner.add(Steps.of_batch(rewarded(REACHER, 0)), "live")
    train_until_capped(learner)
    t = learner.types["reacher2d"]
    good_step = t.update_step
    good = t.algorithm.policy_weights()
    checkpoints = loop.Checkpoints(tmp_path)
    checkpoints.save(learner, {})
    stop = threading.Event()

    class StopAfterReload(Metrics):
        def send(self, event: events.LearnerMetricsV1) -> None:
            super().send(event)
            if (event.metrics.get("charts/divergence_reloads") or 0) >= 2:
                stop.set()

    metrics = StopAfterReload()
    # 100 poisoned batches for 1 clean one: every sampled batch holds a poisoned row.
    source = Source([poisoned(b, robot_id="r2") for b in range(100)])
    loop.run(learner, source, metrics, checkpoints, stop,
             loop.LoopSettings(metrics_s=0.0, checkpoint_s=3600, drain_items=100,
                               reload_after_divergences=3))
    last = metrics.events[-1].metrics
    assert last["charts/divergence_reloads"] == 2
    assert last["charts/skipped_updates"] == 6  # 3 in a row, twice
    assert t.update_step == good_step  # back where the good checkpoint was
    now = t.algorithm.policy_weights()
    assert all(np.array_equal(now[k], good[k]) for k in good)
    reloads = [r for r in caplog.records if r.levelname == "WARNING"
               and "reloaded the last good checkpoint" in r.message]
    assert len(reloads) == 2
    assert "{'reacher2d': 3} non-finite updates in a row" in reloads[0].getMessage()
    for tensors in published_tensors(publishers, t.stream):
        assert policies.non_finite(tensors) is None


def test_an_algorithms_offline_updates_are_granted_at_once_after_warmup(
        publishers: Publishers) -> None:
    # DSRL/FQL pre-train on demos for thousands of updates: robots should not have to run
    # the unfitted policy for thousands / utd_ratio env steps to pay for them.
    learner = make(experiment(algorithm={"utd_ratio": 0.5, "warmup_steps": 20}), publishers)
    learner.add(Steps.of_batch(rewarded(REACHER, 0)), "live")  # 10 steps: before warm-up
    learner.types["reacher2d"].algorithm.offline_updates = 30
    assert train_until_capped(learner) == 0
    for b in range(1, 3):
        learner.add(Steps.of_batch(rewarded(REACHER, b)), "live")
    assert train_until_capped(learner) == 30 + (30 - 20) // 2
