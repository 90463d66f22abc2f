"""The policy registry and the safetensors weight format agents load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from learners import policies
from learners.core import JSON
from schemas import spaces

torch.set_num_threads(1)

SPEC = policies.PolicySpec(4, 2, (-1.0, -1.0), (1.0, 1.0))
OBS = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)


def test_mlp_gaussian_is_registered_and_unknown_kinds_name_the_known_ones() -> None:
    assert "mlp_gaussian" in policies.kinds()
    with pytest.raises(KeyError, match="mlp_gaussian"):
        policies.build("transformer_xl", SPEC)


def test_weights_round_trip_through_bytes_gives_identical_actions() -> None:
    source = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": [16, 16], "seed": 1})
    data = policies.to_safetensors(source.export_weights())
    target = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": [16, 16], "seed": 1})
    target.load_weights(policies.from_safetensors(data))
    np.testing.assert_array_equal(
        target.act(OBS, deterministic=True), source.act(OBS, deterministic=True)
    )
    # Same seed, same weights: exploration noise matches too.
    np.testing.assert_array_equal(target.act(OBS), source.act(OBS))
    assert policies.to_safetensors(target.export_weights()) == data


def test_self_describing_bytes_rebuild_the_policy_kind_and_options() -> None:
    options: dict[str, JSON] = {"hidden_sizes": [8, 8, 8]}
    source = policies.build("mlp_gaussian", SPEC, options)
    data = policies.to_safetensors(
        source.export_weights(), policies.weights_metadata("mlp_gaussian", options)
    )
    loaded = policies.load(SPEC, data)
    np.testing.assert_array_equal(
        loaded.act(OBS, deterministic=True), source.act(OBS, deterministic=True)
    )


def test_sha256_is_the_hex_digest_of_the_exact_bytes() -> None:
    data = policies.to_safetensors(policies.build("mlp_gaussian", SPEC).export_weights())
    digest = policies.sha256_hex(data)
    assert len(digest) == 64 and digest == policies.sha256_hex(bytes(data))
    assert policies.sha256_hex(data[:-1] + bytes([data[-1] ^ 1])) != digest


def test_torch_state_dicts_round_trip_through_bytes() -> None:
    state = {"w": torch.randn(3, 4), "step": torch.tensor(7.0), "g": torch.Generator().get_state()}
    back = policies.bytes_to_state_dict(policies.state_dict_to_bytes(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_weights_of_the_wrong_shape_are_refused_and_the_policy_keeps_its_own() -> None:
    policy = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": [16, 16]})
    before = policy.act(OBS, deterministic=True)
    other = policies.build("mlp_gaussian", SPEC, {"hidden_sizes": [32, 32]}).export_weights()
    with pytest.raises(ValueError, match="shape"):
        policy.load_weights(other)
    with pytest.raises(ValueError, match="missing"):
        policy.load_weights({})
    np.testing.assert_array_equal(policy.act(OBS, deterministic=True), before)


def test_malformed_bytes_raise_value_error() -> None:
    data = policies.to_safetensors(policies.build("mlp_gaussian", SPEC).export_weights())
    for bad in (b"", b"\x00" * 3, data[: len(data) // 2], b"\xff" * 8 + data[8:]):
        with pytest.raises(ValueError):
            policies.from_safetensors(bad)
    with pytest.raises(ValueError, match="policy_kind"):
        policies.load(SPEC, data)  # no metadata


def test_a_policy_spec_comes_from_a_robot_spec() -> None:
    robot = spaces.RobotSpec(
        robot_type="reacher",
        observation=spaces.ArraySpec(shape=(10,)),
        action=spaces.ArraySpec(shape=(2,), low=-1.0, high=(1.0, 0.5)),
    )
    spec = policies.PolicySpec.from_robot_spec(robot)
    assert spec == policies.PolicySpec(10, 2, (-1.0, -1.0), (1.0, 0.5))
    unbounded = robot.model_copy(update={"action": spaces.ArraySpec(shape=(2,))})
    with pytest.raises(ValueError, match="unbounded"):
        policies.PolicySpec.from_robot_spec(unbounded)


def test_observations_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        policies.build("mlp_gaussian", SPEC).act(np.zeros((1, 5), np.float32))


def test_importing_policies_pulls_in_no_training_code_and_no_other_layer() -> None:
    code = (
        "import sys, learners.policies\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('agents', 'pipeline', 'infra', 'topics') or m in "
        "('learners.sac', 'learners.replay', 'learners.checkpoint')]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
