"""Atomic checkpoints that resume training bit for bit."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from learners import checkpoint, core, policies, replay, sac
from learners.fakes import PointMassReach

torch.set_num_threads(1)

SPEC = PointMassReach.spec


def _buffer() -> replay.NumpyReplayBuffer:
    env = PointMassReach()
    buf = replay.NumpyReplayBuffer(replay.ReplayConfig((4,), (2,), 1 << 20))
    rng = torch.Generator().manual_seed(0)
    for _ in range(100):
        buf.add(env.step((2 * torch.rand(4, 2, generator=rng) - 1).numpy()))
    return buf


def _config() -> sac.SACConfig:
    return sac.SACConfig.rlpd(hidden_sizes=(32, 32), utd_ratio=2, num_critics=4)


def _params(algo: sac.SAC) -> dict[str, torch.Tensor]:
    return algo.state().tensors


def test_a_restored_learner_makes_the_bit_identical_next_update(tmp_path: Path) -> None:
    buf = _buffer()
    algo = sac.SAC(SPEC, _config())
    for _ in range(5):
        algo.update(buf.sample(64))
    positions: dict[str, core.JSON] = {
        "delta_version": 12,
        "kafka": {"transitions/0": 1041, "transitions/3": 77},
    }
    path = checkpoint.save(checkpoint.path_for(tmp_path, algo.update_step), algo, positions)

    batch = buf.sample(64)
    expected_stats = algo.update(batch)
    expected = _params(algo)

    resumed = sac.SAC(SPEC, dataclasses.replace(_config(), seed=99))  # other init
    assert checkpoint.load(path, resumed) == positions
    assert resumed.update_step == 5
    assert resumed.update(batch) == expected_stats
    got = _params(resumed)
    assert set(got) == set(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_a_checkpoint_holds_networks_targets_optimisers_temperature_and_step(
    tmp_path: Path,
) -> None:
    algo = sac.SAC(SPEC, _config())
    algo.update(_buffer().sample(64))
    state, positions = checkpoint.read(checkpoint.save(tmp_path / "c.safetensors", algo))
    prefixes = {name.split(".")[0].split("/")[0] for name in state.tensors}
    assert {"actor", "qf", "qf_target", "log_alpha", "generator", "optim"} <= prefixes
    assert state.meta["update_step"] == 1
    assert positions == {}


def test_saving_replaces_the_file_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    algo = sac.SAC(SPEC, _config())
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, algo, {"offset": 1})
    checkpoint.save(path, algo, {"offset": 2})
    assert checkpoint.read(path)[1] == {"offset": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_a_write_that_fails_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    algo = sac.SAC(SPEC, _config())
    path = checkpoint.save(tmp_path / "ckpt.safetensors", algo, {"offset": 1})

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, algo, {"offset": 2})
    assert checkpoint.read(path)[1] == {"offset": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_latest_finds_the_highest_step_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    assert checkpoint.latest(tmp_path / "missing") is None
    algo = sac.SAC(SPEC, _config())
    for step in (3, 100, 20):
        checkpoint.save(checkpoint.path_for(tmp_path, step), algo)
    assert checkpoint.latest(tmp_path) == checkpoint.path_for(tmp_path, 100)
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        checkpoint.path_for(tmp_path, 20).name,
        checkpoint.path_for(tmp_path, 100).name,
    ]


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(policies.to_safetensors({"w": torch.zeros(2).numpy()}))
    with pytest.raises(ValueError, match="not a learner checkpoint"):
        checkpoint.read(path)


def test_a_checkpoint_for_another_robot_spec_is_refused(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path / "c.safetensors", sac.SAC(SPEC, _config()))
    other = policies.PolicySpec(4, 2, (-2.0, -2.0), (2.0, 2.0))
    with pytest.raises(ValueError, match="spec"):
        checkpoint.load(path, sac.SAC(other, _config()))


def test_training_state_is_an_interface_type() -> None:
    assert isinstance(sac.SAC(SPEC, _config()).state(), core.TrainingState)
