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
  again after ``retry_s``, so a replaced replica picks the robot up again;
* at an episode start the worker calls :meth:`RemotePolicy.reset`: the chunk in use and any
  reply still in flight were planned for the last episode's states, so they are dropped and
  the first chunk is asked for the new state (the robot waits one round trip, which is not
  logged as a hold unless it outlasts ``retry_s``).

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

from agents.policies import FramesPolicy, NoActionDue
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


class RemotePolicy(FramesPolicy):
    """One robot's remotely served policy (module docstring); a :class:`FramesPolicy`, so
    the worker hands it the step's camera frames."""

    def __init__(self, *, robot_id: str, site: str, experiment_id: Callable[[], str | None],
                 send: Callable[[ev.InferenceRequestV1], None], control_hz: float,
                 instruction: str | Callable[[], str] = "", action_dim: int | None = None,
                 robot_type: str = "",
                 margin_periods: int = 2, retry_s: float = 1.0, lead_quantile: float = 0.99,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        # No super().__init__: FramesPolicy's per-step callable is this class's __call__.
        self.robot_id, self.site = robot_id, site
        self._experiment_id = experiment_id
        self._send = send
        self.period_s = 1.0 / control_hz
        self.instruction = instruction
        """sent with each request: the words, or where the robot's lease says them."""
        self.action_dim = action_dim
        self.robot_type = robot_type
        self.margin_periods = margin_periods
        self.lead_quantile = lead_quantile
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
        self._fresh_from = 0  # replies to requests before this were for an older episode
        self._reset_ns: int | None = None  # when the episode started, until its first chunk
        self.stats = RemoteStats()

    def reset(self) -> None:
        """A new episode: drop the chunk in use and replies still in flight (module
        docstring); the next call asks for a chunk for the new state."""
        self._chunk = None
        self._pending = None
        self._fresh_from = self._seq
        self._reset_ns = self._clock_ns()

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
        high = rtts[min(len(rtts) - 1, math.ceil(self.lead_quantile * len(rtts)) - 1)]
        return math.ceil(high / self.period_s) + self.margin_periods

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
            starting = self._reset_ns is not None and now - self._reset_ns <= self.retry_ns
            if not self._holding and not starting:  # an episode's first round trip: no news
                self._holding = True
                log.warning("%s holds: no action due from the remote policy (%s)",
                            self.robot_id, "no reply yet" if self._pending else "no chunk")
            raise NoActionDue(f"{self.robot_id}: no remote action for step {step}")
        self._reset_ns = None
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
            if reply.request_seq < self._fresh_from or (
                    self._chunk is not None and reply.request_seq <= self._chunk.request_seq):
                self.stats.stale_dropped += 1  # older than the chunk in use, or its episode
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
            request_seq=self._seq, step=step, sent_ns=now,
            instruction=self.instruction() if callable(self.instruction) else self.instruction,
            observation=tuple(float(x) for x in np.asarray(observation).ravel()),
            action_dim=self.action_dim, robot_type=self.robot_type,
            images_b64={k: base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()
                        for k, v in images.items()},
            image_shapes={k: (int(v.shape[0]), int(v.shape[1]), int(v.shape[2]))
                          for k, v in images.items()},
        )
        self._pending = (self._seq, now)
        self._seq += 1
        self.stats.requests += 1
        self._send(request)

