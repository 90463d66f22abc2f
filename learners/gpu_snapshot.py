"""Weights snapshots that do not stall training on a GPU (issue 14, deliverable 5).

A plain ``tensor.cpu()`` per parameter blocks the training stream until every copy is
done, and a large policy's copy competes with training for the copy engine and memory
bandwidth.  :class:`SideStreamSnapshot` takes the snapshot our way (the paper's SM-aware
sync, in spirit):

1. **consistent** — on a side CUDA stream that first waits for the training stream's
   work so far, each parameter is cloned device-to-device (fast, on-chip bandwidth);
   the training stream waits for those clones only before its next optimiser step
   (:meth:`SideStreamSnapshot.fence`, a GPU-side wait, no host sync);
2. **bounded** — the clones go to pinned host memory in slices on the side stream, each
   slice queued only when the bandwidth budget (``max_bytes_per_s``) allows, from
   :meth:`poll`, which the training loop calls once per update (it never blocks);
3. **done** — when the last slice's event completes, :meth:`result` is a dict of numpy
   arrays, the same thing :meth:`learners.weights_sync.Snapshot.take` makes.

Without CUDA it copies at once (``torch`` on CPU has no streams): same interface, so the
learner code path is one.

Usage::

    snap = SideStreamSnapshot(policy_net, max_bytes_per_s=2e9)
    for step in training:
        loss.backward()
        snap.fence()                 # next optimiser step waits for the clones only
        optimizer.step()
        if snap.poll() and snap.done:
            publish(snap.result()); snap = None
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class SideStreamSnapshot:
    """One snapshot of ``module``'s state, taken asynchronously (module docstring)."""

    def __init__(self, module: nn.Module, *, max_bytes_per_s: float = 2e9,
                 slice_bytes: int = 4 << 20, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if max_bytes_per_s <= 0:
            raise ValueError("max_bytes_per_s must be positive")
        self.max_bytes_per_s = max_bytes_per_s
        self.slice_bytes = slice_bytes
        self._clock = clock
        state = {k: v.detach() for k, v in module.state_dict().items()}
        self.total_bytes = sum(t.numel() * t.element_size() for t in state.values())
        self.cuda = any(t.is_cuda for t in state.values())
        self._out: dict[str, np.ndarray] = {}
        self._queue: list[tuple[str, torch.Tensor, int, int]] = []
        self._events: list[torch.cuda.Event] = []
        self.done = False
        self.started = clock()
        self.copied_bytes = 0
        if not self.cuda:
            self._out = {k: v.cpu().numpy().copy() for k, v in state.items()}
            self.copied_bytes = self.total_bytes
            self.done = True
            return
        device = next(t.device for t in state.values() if t.is_cuda)
        self._device = device
        self._stream = torch.cuda.Stream(device=device)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
            clones = {k: v.clone() for k, v in state.items()}
        self._cloned = torch.cuda.Event()
        self._cloned.record(self._stream)
        self._fenced = False
        self._host: dict[str, torch.Tensor] = {}
        self._host_views: dict[tuple[str, int], torch.Tensor] = {}
        for name, gpu in clones.items():
            host = torch.empty(gpu.shape, dtype=gpu.dtype, pin_memory=True)
            self._host[name] = host
            flat_gpu, flat_host = gpu.reshape(-1), host.reshape(-1)
            per = max(1, self.slice_bytes // max(gpu.element_size(), 1))
            for start in range(0, flat_gpu.numel(), per):
                end = min(start + per, flat_gpu.numel())
                self._queue.append((name, flat_gpu, start, end))
                self._host_views[(name, start)] = flat_host[start:end]
        self._clones = clones  # kept alive until every slice is copied

    def fence(self) -> None:
        """Make the training stream wait (on the GPU) until the clones are taken; call
        before the next in-place update of the weights.  Cheap after the first call."""
        if self.cuda and not self._fenced:
            torch.cuda.current_stream(self._device).wait_event(self._cloned)
            self._fenced = True

    def poll(self) -> bool:
        """Queue the slices the bandwidth budget allows now; True once all are queued.
        Never blocks the caller."""
        if not self.cuda or self.done:
            return True
        allowed = (self._clock() - self.started) * self.max_bytes_per_s
        with torch.cuda.stream(self._stream):
            while self._queue and self.copied_bytes < max(allowed, 1):
                name, flat_gpu, start, end = self._queue.pop(0)
                view = self._host_views[(name, start)]
                view.copy_(flat_gpu[start:end], non_blocking=True)
                self.copied_bytes += (end - start) * flat_gpu.element_size()
                if not self._queue:
                    event = torch.cuda.Event()
                    event.record(self._stream)
                    self._events.append(event)
        if not self._queue and self._events and self._events[-1].query():
            self._out = {k: v.numpy().copy() for k, v in self._host.items()}
            self._clones = {}
            self.done = True
        return not self._queue

    def result(self) -> dict[str, np.ndarray]:
        """The snapshot; raises ``RuntimeError`` before :attr:`done`."""
        if not self.done:
            raise RuntimeError("the snapshot is still being copied; poll() until done")
        return self._out

    def wait(self) -> dict[str, np.ndarray]:
        """Block until done, still within the bandwidth budget (for tests and shutdown)."""
        while not self.done:
            self.poll()
            if not self.done:
                time.sleep(0.0005)
        return self._out
