"""A policy served remotely: the robot side of asynchronous chunked inference (issue 14).

:class:`RemotePolicy` is a :data:`~agents.policies.PolicyFn` for one robot that holds no
Kafka: it is handed a ``send`` function for requests, and replies are handed to
:meth:`RemotePolicy.deliver` (from any thread).  Each control period the worker calls it
with the current observation:

* the action for this period comes from the newest chunk that covers it; a reply's action
  ``i`` is for control step ``request.step + i``, so actions for periods already gone are
  skipped, and a reply none of whose actions is still due — or one older than the chunk in
  use — is dropped: **a late action is never executed**;
* the next chunk is asked for *before* the current one runs out: as soon as the actions
  left cover no more than the measured round trip (a high percentile of recent ones, in
  control periods) plus a margin, so with a steady link control never waits;
* when no action is due (no reply yet, a replica gone) it raises
  :class:`~agents.policies.NoActionDue`: the worker holds the robot and records nothing, and
  this logs once per spell that the robot holds and why.  An unanswered request is asked
  again after ``retry_s``, so a replaced replica picks the robot up again.

Usage::

    remote = RemotePolicy(robot_id="r1", site="lab-a", experiment_id="e1",
                          send=producer_send, control_hz=20, instruction="reach the target")
    listener: for chunk in replies: remote.deliver(chunk)
    worker: action = remote(observation)       # or NoActionDue: hold
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agents.policies import NoActionDue
from schemas import events as ev

log = logging.getLogger(__name__)


@dataclass
class RemoteStats:
    """What a robot's remote policy did (read by ``userctl bench inference``)."""

    requests: int = 0
    replies: int = 0
    late_dropped: int = 0
    stale_dropped: int = 0
    periods: int = 0
    held: int = 0
    round_trips_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)


class RemotePolicy:
    """One robot's remotely served policy (module docstring)."""

    def __init__(self, *, robot_id: str, site: str, experiment_id: Callable[[], str | None],
                 send: Callable[[ev.InferenceRequestV1], None], control_hz: float,
                 instruction: str = "", action_dim: int | None = None,
                 margin_periods: int = 2, retry_s: float = 1.0,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.robot_id, self.site = robot_id, site
        self._experiment_id = experiment_id
        self._send = send
        self.period_s = 1.0 / control_hz
        self.instruction = instruction
        self.action_dim = action_dim
        self.margin_periods = margin_periods
        self.retry_ns = int(retry_s * 1e9)
        self._clock_ns = clock_ns
        self._inbox: deque[ev.ActionChunkV1] = deque()
        self._lock = threading.Lock()
        self._chunk: ev.ActionChunkV1 | None = None
        self._step = 0
        self._seq = 0
        self._pending: tuple[int, int] | None = None  # (request seq, sent ns)
        self._recent_rtt: deque[float] = deque(maxlen=50)
        self._holding = False
        self.stats = RemoteStats()

    # -- replies (any thread) ---------------------------------------------------------------

    @property
    def policy_version(self) -> int:
        """The version of the policy whose chunk is in use (0 before the first)."""
        chunk = self._chunk
        return 0 if chunk is None else chunk.policy_version

    def deliver(self, reply: ev.ActionChunkV1) -> None:
        if reply.robot_id == self.robot_id:
            with self._lock:
                self._inbox.append(reply)

    # -- one control period (the worker's thread) -------------------------------------------

    @property
    def lead_periods(self) -> int:
        """How many actions before the end of a chunk the next one is asked for."""
        if not self._recent_rtt:
            return self.margin_periods
        rtts = sorted(self._recent_rtt)
        p90 = rtts[min(len(rtts) - 1, math.ceil(0.9 * len(rtts)) - 1)]
        return math.ceil(p90 / self.period_s) + self.margin_periods

    def __call__(self, observation: npt.NDArray[np.floating],
                 images: Mapping[str, npt.NDArray[np.uint8]] | None = None
                 ) -> npt.NDArray[np.float32]:
        step, now = self._step, self._clock_ns()
        self._step += 1
        self.stats.periods += 1
        self._absorb(step, now)
        chunk = self._chunk
        action = None
        left = 0
        if chunk is not None and chunk.step <= step < chunk.step + len(chunk.actions):
            action = np.asarray(chunk.actions[step - chunk.step], np.float32)
            left = chunk.step + len(chunk.actions) - step - 1
        due = left <= self.lead_periods
        stuck = self._pending is not None and now - self._pending[1] > self.retry_ns
        if due and (self._pending is None or stuck):
            self._request(observation, images or {}, step, now)
        if action is None:
            self.stats.held += 1
            if not self._holding:
                self._holding = True
                log.warning("%s holds: no action due from the remote policy (%s)",
                            self.robot_id, "no reply yet" if self._pending else "no chunk")
            raise NoActionDue(f"{self.robot_id}: no remote action for step {step}")
        if self._holding:
            self._holding = False
            log.info("%s resumes: the remote policy answers again", self.robot_id)
        return action

    def _absorb(self, step: int, now: int) -> None:
        with self._lock:
            replies, self._inbox = list(self._inbox), deque()
        for reply in replies:
            if self._pending is not None and reply.request_seq == self._pending[0]:
                self._pending = None
            rtt = (now - reply.sent_ns) / 1e9
            self._recent_rtt.append(rtt)
            self.stats.replies += 1
            self.stats.round_trips_s.append(rtt)
            self.stats.batch_sizes.append(reply.batch_size)
            if self._chunk is not None and reply.request_seq <= self._chunk.request_seq:
                self.stats.stale_dropped += 1  # older than the chunk in use
                continue
            if reply.step + len(reply.actions) <= step:
                self.stats.late_dropped += 1  # none of its actions is still due
                log.debug("%s dropped a late reply (request %d, %.0f ms)", self.robot_id,
                          reply.request_seq, rtt * 1e3)
                continue
            self._chunk = reply

    def _request(self, observation: npt.NDArray[np.floating],
                 images: Mapping[str, npt.NDArray[np.uint8]], step: int, now: int) -> None:
        experiment_id = self._experiment_id()
        if experiment_id is None:
            return
        request = ev.InferenceRequestV1(
            site=self.site, robot_id=self.robot_id, experiment_id=experiment_id,
            request_seq=self._seq, step=step, sent_ns=now, instruction=self.instruction,
            observation=tuple(float(x) for x in np.asarray(observation).ravel()),
            action_dim=self.action_dim,
            images_b64={k: base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()
                        for k, v in images.items()},
            image_shapes={k: (int(v.shape[0]), int(v.shape[1]), int(v.shape[2]))
                          for k, v in images.items()},
        )
        self._pending = (self._seq, now)
        self._seq += 1
        self.stats.requests += 1
        self._send(request)

