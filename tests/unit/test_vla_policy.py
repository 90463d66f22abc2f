"""The language-conditioned transformer policy (``vla_transformer``, issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners import policies
from learners.policies import _text
from tests.data import INSTRUCTION_EMBEDDINGS

SPEC = policies.PolicySpec(observation_dim=6, action_dim=3, action_low=(-1.0,) * 3,
                           action_high=(1.0,) * 3)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # Small matrices: one intra-op thread is faster, and kinder to a shared CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {"d_model": 64, "layers": 2, "heads": 4, "ff": 128, "chunk": 4, "cameras": ["cam"],
        "image_size": 16, "patch": 8, "seed": 0}


def test_the_default_policy_is_a_large_model_over_text_images_and_proprio() -> None:
    policy = policies.build("vla_transformer", SPEC, {"cameras": ["wrist"]})
    assert isinstance(policy, policies.VlaTransformerPolicy)
    assert policy.parameter_count() >= 20_000_000
    chunk = policy.act_chunk(np.zeros((2, 6)), ["reach the red target", "push the cube"],
                             {"wrist": np.zeros((2, 64, 64, 3), np.uint8)})
    assert chunk.shape == (2, 10, 3)


def test_instruction_embeddings_come_from_the_pretrained_encoder_offline() -> None:
    a, b, c = _text.embed(["pick up the red cube", "lift the red block", "reach the target"])
    assert a.shape == (_text.DIM,)
    # A pretrained encoder: paraphrases are closer than unrelated instructions.
    assert float(a @ b) > float(a @ c) + 0.1
    # The embeddings other tests read instead of loading the encoder are still its own.
    with np.load(INSTRUCTION_EMBEDDINGS, allow_pickle=False) as saved:
        for text, vector in zip(saved["instructions"], saved["vectors"], strict=True):
            np.testing.assert_allclose(vector, _text.embed([str(text)])[0], atol=1e-5)


def test_one_policy_overfits_a_tiny_multi_task_dataset_told_apart_by_instruction() -> None:
    rng = np.random.default_rng(0)
    # Two robot types (4-d obs / 2-d action and 6-d obs / 3-d action), three tasks; the
    # two "reach" tasks share robot type AND observations: only the instruction differs.
    tasks = [("reach the red target", 4, 2), ("reach the blue target", 4, 2),
             ("push the cube to the left", 6, 3)]
    data = []
    for instruction, obs_dim, act_dim in tasks:
        obs = rng.uniform(-1, 1, (4, obs_dim)).astype(np.float32) if instruction != tasks[1][0] \
            else data[0][1]
        acts = rng.uniform(-0.9, 0.9, (4, 4, act_dim)).astype(np.float32)
        imgs = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
        data.append((instruction, obs, acts, imgs))
    policy = policies.build("vla_transformer", SPEC, TINY)
    assert isinstance(policy, policies.VlaTransformerPolicy)
    opt = torch.optim.Adam(policy.net.parameters(), lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = sum(policy.loss(obs, [ins] * 4, acts, images={"cam": imgs})
                   for ins, obs, acts, imgs in data)
        loss.backward()
        opt.step()
    for instruction, obs, acts, imgs in data:
        pred = policy.act_chunk(obs, [instruction] * 4, {"cam": imgs})
        assert np.abs(pred[..., :acts.shape[-1]] - acts).mean() < 0.05, instruction

    # Weights travel as safetensors and rebuild the same policy from the bytes alone.
    blob = policies.to_safetensors(policy.export_weights(),
                                   metadata=policies.weights_metadata("vla_transformer", TINY))
    again = policies.load(SPEC, blob)
    ins, obs, _, imgs = data[2]
    np.testing.assert_allclose(again.act_chunk(obs, [ins] * 4, {"cam": imgs}),  # type: ignore[attr-defined]
                               policy.act_chunk(obs, [ins] * 4, {"cam": imgs}), atol=1e-5)


def test_the_policy_learns_from_takeover_rows_of_a_learner_batch() -> None:
    from learners.core import Batch

    spec = policies.PolicySpec(observation_dim=4, action_dim=2, action_low=(-1.0,) * 2,
                               action_high=(1.0,) * 2)
    policy = policies.build("vla_transformer", spec,
                            {**TINY, "cameras": [], "instruction": "reach the target"})
    assert isinstance(policy, policies.VlaTransformerPolicy)
    rng = np.random.default_rng(1)
    n = 8
    obs = torch.as_tensor(rng.uniform(-1, 1, (n, 4)), dtype=torch.float32)
    # The operator's corrections, as executed actions and the chunks after them.
    chunk = torch.as_tensor(rng.uniform(-0.8, 0.8, (n, 4, 2)), dtype=torch.float32)
    batch = Batch(observation=obs, action=chunk[:, 0], reward=torch.zeros(n),
                  next_observation=obs, terminated=torch.zeros(n),
                  policy_version=torch.zeros(n, dtype=torch.int64),
                  intervention=torch.ones(n, dtype=torch.bool), action_chunk=chunk)
    opt = torch.optim.Adam(policy.net.parameters(), lr=1e-3)
    first = policy.batch_loss(batch).item()
    for _ in range(150):
        opt.zero_grad()
        policy.batch_loss(batch).backward()
        opt.step()
    assert policy.batch_loss(batch).item() < 0.2 * first
