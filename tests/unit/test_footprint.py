"""Roles that run no network import no torch (issue 17): the controller, the Delta sink and a
reward job start as `userctl <role> …` does, in a fresh interpreter each, and never load
torch (~0.7 GB of RSS they would not use).  Agents import the inference half only: an
agent applies and runs a learned ``mlp_gaussian`` with numpy, torch never loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from learners import policies
from schemas import events

#: Modules a role that runs no network must not load.
HEAVY = ("torch", "learners.policies", "learners.sac")
#: What an agent must not load: it runs learned policies through ``learners.policies``'
#: torch-free half (numpy inference of mlp_gaussian), never torch nor the training side.
AGENT_HEAVY = ("torch", "learners.core", "learners.policies._registry", "learners.sac")

#: Per role: its `userctl` argv, and the modules its handler runs with once started.
ROLES: dict[str, tuple[list[str], str]] = {
    "controller": (["controller"], "from pipeline import controller"),
    "sink": (["sink"], "from pipeline import sink"),
    "reward job": (["rewards", "run", "reach_dense@1"],
                   "from pipeline import reward_job, rewards; rewards.lookup('reach_dense@1')"),
    "agent": (["agent", "--robot-type", "reacher2d", "--site", "lab"],
              "from agents import agent, registry, weights, weights_kafka, worker\n"
              "registry.make_robot('reacher2d')"),
}

_PROBE = """
import json, sys
from infra import cli
argv = json.loads(sys.argv[1])
cli.build_parser(argv).parse_args(argv)
{started}
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps(heavy))
"""


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_without_a_network_never_imports_torch(role: str) -> None:
    argv, started = ROLES[role]
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(started=started), json.dumps(argv),
         json.dumps(AGENT_HEAVY if role == "agent" else HEAVY)],
        capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], (
        f"`userctl {' '.join(argv)}` imports {out.stdout.strip()}")


def test_the_full_command_line_still_lists_every_command() -> None:
    from infra import cli

    parser = cli.build_parser([])
    names = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert set(cli.ROLE_COMMANDS) <= names


SPEC = policies.PolicySpec(11, 2, (-1.0, -2.0), (1.0, 0.5))
HIDDEN = [32, 32]

_AGENT_APPLIES = """
import json, sys
import numpy as np
from agents import weights
from learners import policies
from schemas import events
blob = open(sys.argv[1], "rb").read()
manifest = events.WeightsManifestV1.model_validate_json(open(sys.argv[2]).read())
spec = policies.PolicySpec(11, 2, (-1.0, -2.0), (1.0, 0.5))
policy = weights.build_policy(manifest, blob, spec)
obs = np.load(sys.argv[3])
mode = policy.act(obs, deterministic=True)
sampled = policy.act(obs)
heavy = sorted(m for m in ("torch", "learners.core", "learners.policies._registry")
               if m in sys.modules)
print(json.dumps({"mode": mode.tolist(), "sampled": sampled.tolist(), "heavy": heavy,
                  "kind": type(policy).__name__}))
"""


def _blob(options: dict[str, object]) -> tuple[policies.MlpGaussianPolicy, bytes]:
    policy = policies.build("mlp_gaussian", SPEC, {**options, "seed": 3})
    meta = policies.weights_metadata("mlp_gaussian", options)
    return policy, policies.to_safetensors(policy.export_weights(), meta)


def test_an_agent_applies_and_runs_a_learned_mlp_gaussian_without_torch(tmp_path: Path) -> None:
    torch_policy, blob = _blob({"hidden_sizes": HIDDEN})
    manifest = events.WeightsManifestV1(
        experiment_id="exp-1.reacher2d", version=1, policy="mlp_gaussian",
        total_bytes=len(blob), chunk_bytes=len(blob), sha256=policies.sha256_hex(blob),
        chunk_sha256=[policies.sha256_hex(blob)], chunk_offsets=[0], learner_step=1)
    obs = np.random.default_rng(0).standard_normal((64, 11)).astype(np.float32) * 3
    (tmp_path / "w.safetensors").write_bytes(blob)
    (tmp_path / "m.json").write_text(manifest.model_dump_json())
    np.save(tmp_path / "obs.npy", obs)
    out = subprocess.run(
        [sys.executable, "-c", _AGENT_APPLIES, str(tmp_path / "w.safetensors"),
         str(tmp_path / "m.json"), str(tmp_path / "obs.npy")],
        capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [] and got["kind"] == "NumpyMlpGaussianPolicy"
    np.testing.assert_allclose(np.asarray(got["mode"], np.float32),
                               torch_policy.act(obs, deterministic=True), rtol=0, atol=1e-6)
    sampled = np.asarray(got["sampled"])
    assert sampled.shape == (64, 2)
    assert np.all(sampled >= np.asarray(SPEC.action_low)) and np.all(
        sampled <= np.asarray(SPEC.action_high))


def test_the_numpy_twin_samples_the_torch_policys_distribution() -> None:
    torch_policy, blob = _blob({"hidden_sizes": HIDDEN})
    twin = policies.load_for_inference(SPEC, blob)
    assert isinstance(twin, policies.NumpyMlpGaussianPolicy)
    obs = np.repeat(np.random.default_rng(1).standard_normal((1, 11)).astype(np.float32),
                    20_000, axis=0)
    a, b = twin.act(obs), torch_policy.act(obs)
    # Different generators, same distribution: means and spreads agree to sampling error.
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=0.03)
    np.testing.assert_allclose(a.std(0), b.std(0), atol=0.03)
    with pytest.raises(ValueError, match="observation batch has shape"):
        twin.act(np.zeros((1, 5), np.float32))


def test_kinds_and_options_without_a_numpy_twin_take_the_torch_path() -> None:
    _, wider = _blob({"hidden_sizes": HIDDEN, "cameras": []})  # an option it does not know
    assert isinstance(policies.load_for_inference(SPEC, wider), policies.MlpGaussianPolicy)
    _, blob = _blob({"hidden_sizes": HIDDEN})
    weights = policies.from_safetensors(blob)
    weights["mean.bias"] = np.zeros(3, np.float32)
    bad = policies.to_safetensors(weights, policies.weights_metadata(
        "mlp_gaussian", {"hidden_sizes": HIDDEN}))
    with pytest.raises(ValueError, match="'mean.bias' has shape"):
        policies.load_for_inference(SPEC, bad)
