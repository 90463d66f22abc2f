"""Weight snapshots for the learner (learners.gpu_snapshot): the CPU path of one interface."""

from __future__ import annotations

import numpy as np
import torch

from learners.gpu_snapshot import SideStreamSnapshot


def test_a_snapshot_is_the_weights_at_the_time_it_was_taken() -> None:
    net = torch.nn.Linear(4, 3)
    snap = SideStreamSnapshot(net, max_bytes_per_s=1e9)
    with torch.no_grad():  # training goes on; the snapshot must not change
        net.weight.add_(1.0)
    snap.fence()
    assert snap.poll() and snap.done
    out = snap.wait()
    np.testing.assert_allclose(out["weight"], net.weight.detach().numpy() - 1.0, atol=1e-6)
    assert snap.total_bytes == (12 + 3) * 4
