"""The inference role (``userctl inference EXPERIMENT``): a policy served to robots (issue 14).

:class:`InferenceCore` holds no Kafka: it turns a batch of observation requests from any
robots into action-chunk replies with one forward pass per group of like requests.
:class:`InferenceService` is its Kafka shell:

* requests are read from ``inference.requests`` in the consumer group
  ``inference-<experiment>``, so the experiment's replicas share the robots' partitions
  and a replica's death hands its partitions to the others (after the group's session
  timeout; the robots hold meanwhile and ask again);
* each round waits for one request, then takes whatever else has arrived (without
  waiting: a batch is what queued up while the previous one ran, so a lone robot is not
  held up to fill a batch), up to ``max_batch`` requests, and answers them all from one
  batch; requests older than ``max_age_s`` are skipped (their robot asked again);
* replies go to ``inference.replies`` on the asking robot's site partitions.
* weights stream to the replica (the agents' verified weights subscriber), not to robots;
  until a learner publishes, the experiment's policy kind runs freshly initialised.

Delivery: none to keep — nothing is committed (``enable.auto.commit`` off, reading from
the end): a request is worth something for a fraction of a second only.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, KafkaException, Message

from schemas import events as ev
from topics import catalog
from topics.consumer import record_of
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, validate

log = logging.getLogger(__name__)



class Servable(Protocol):
    """What a served policy offers: ``act`` (one action per observation), and optionally
    ``act_chunk(observations, instructions, images)`` (a chunk per observation)."""

    def act(self, observation: np.ndarray, deterministic: bool = False) -> np.ndarray: ...


#: The policy to serve now and its version (swapped by the weights subscriber).
PolicySource = Callable[[], tuple[Servable, int]]


def _images(request: ev.InferenceRequestV1) -> dict[str, npt.NDArray[np.uint8]]:
    return {name: np.frombuffer(base64.b64decode(data), np.uint8).reshape(
                request.image_shapes[name])
            for name, data in request.images_b64.items() if name in request.image_shapes}


class InferenceCore:
    """Requests in, replies out; one forward pass per group of requests that can share
    one (same cameras, and same observation size unless the policy is shared across
    robot types: then requests of all its types share one pass, each observation read
    as its request's ``robot_type``'s — ``learners.policies.shared``)."""

    def __init__(self, policy: PolicySource, *, replica: str = "") -> None:
        self._policy = policy
        self.replica = replica
        self.refused = 0
        """requests not answered: a shared policy cannot read them (a robot type it does
        not serve, an observation longer than any of its types')."""

    def answer(self, requests: Sequence[ev.InferenceRequestV1]) -> list[ev.ActionChunkV1]:
        policy, version = self._policy()
        across_types = getattr(policy, "act_chunks_of", None)
        types: tuple[str, ...] = getattr(policy, "types", ())
        longest: int = getattr(policy, "observation_dim", 0)
        groups: dict[tuple[int, tuple[str, ...]], list[ev.InferenceRequestV1]] = defaultdict(list)
        for r in requests:
            if across_types is not None and ((r.robot_type and r.robot_type not in types)
                                             or len(r.observation) > longest):
                # One robot's misfit must not fail the batch (or the replica).
                self.refused += 1
                log.warning("inference: %s (%s, observation of %d) does not fit the policy "
                            "(types %s, observations up to %d)", r.robot_id,
                            r.robot_type or "no type", len(r.observation), ", ".join(types),
                            longest)
                continue
            size = -1 if across_types is not None else len(r.observation)
            groups[(size, tuple(sorted(r.images_b64)))].append(r)
        out: list[ev.ActionChunkV1] = []
        for (_, cameras), group in groups.items():
            act_chunk = getattr(policy, "act_chunk", None)
            if act_chunk is not None:
                images = None
                if cameras:
                    per = [_images(r) for r in group]
                    images = {c: np.stack([p[c] for p in per]) for c in cameras}
                instructions = [r.instruction for r in group]
                if across_types is not None:
                    chunks = np.asarray(across_types(
                        [r.robot_type for r in group],
                        [np.asarray(r.observation, np.float32) for r in group],
                        instructions, images))
                else:
                    obs = np.asarray([r.observation for r in group], np.float32)
                    chunks = np.asarray(act_chunk(obs, instructions, images))
            else:  # a one-step policy: a chunk of one action
                obs = np.asarray([r.observation for r in group], np.float32)
                chunks = np.asarray(policy.act(obs, deterministic=True))[:, None]
            for r, chunk in zip(group, chunks, strict=True):
                if r.action_dim is not None:
                    chunk = chunk[:, :r.action_dim]
                out.append(ev.ActionChunkV1(
                    site=r.site, robot_id=r.robot_id, experiment_id=r.experiment_id,
                    request_seq=r.request_seq, step=r.step, sent_ns=r.sent_ns,
                    actions=tuple(tuple(float(x) for x in a) for a in chunk),
                    policy_version=version, replica=self.replica, batch_size=len(requests)))
        return out


@dataclass
class ServiceStats:
    """What a replica did, and where its time went (read by ``userctl bench inference``)."""

    batches: int = 0
    requests: int = 0
    skipped_old: int = 0
    max_batch_seen: int = 0
    decode_s: float = 0.0
    """seconds spent decoding and validating requests."""
    forward_s: float = 0.0
    """seconds spent in :meth:`InferenceCore.answer` (the model's forward passes)."""
    encode_s: float = 0.0
    """seconds spent encoding and queueing replies."""


class InferenceService:
    """Serves one experiment's policy on Kafka until :meth:`stop` (module docstring)."""

    def __init__(self, kafka: KafkaSettings, experiment_id: str, policy: PolicySource, *,
                 replica: str = "0", max_batch: int = 64, max_age_s: float = 2.0,
                 group_suffix: str = "") -> None:
        self.kafka = kafka
        self.experiment_id = experiment_id
        self.core = InferenceCore(policy, replica=replica)
        self.max_batch = max_batch
        self.max_age_s = max_age_s
        self.group = f"inference-{experiment_id}{group_suffix}"
        self.stats = ServiceStats()
        self.ready = threading.Event()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        config = self.kafka.consumer_config(self.group, role="inference", from_beginning=False,
                                            read_committed=False)
        config.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                       "fetch.wait.max.ms": 5, "partition.assignment.strategy":
                       "cooperative-sticky"})
        consumer = Consumer(config)
        producer = EventProducer(self.kafka, role="inference", linger_ms=0)
        try:
            consumer.subscribe([catalog.INFERENCE_REQUESTS.name],
                               on_assign=lambda c, parts: self.ready.set())
            log.info("inference replica %s of %s serving (group %s, batches of up to %d)",
                     self.core.replica, self.experiment_id, self.group, self.max_batch)
            while not self._stop.is_set():
                try:
                    # consume(n, t) would wait all of t unless n arrive: wait for the
                    # first request only, then take what is already there.
                    first = consumer.poll(0.05)
                    if first is None:
                        continue
                    msgs = [first, *consumer.consume(self.max_batch - 1, 0)] \
                        if self.max_batch > 1 else [first]
                except KafkaException as exc:
                    log.warning("inference: %s", exc)
                    continue
                t0 = time.perf_counter()
                batch = self._requests(msgs)
                if not batch:
                    continue
                t1 = time.perf_counter()
                replies = self.core.answer(batch)
                t2 = time.perf_counter()
                for reply in replies:
                    producer.send(catalog.INFERENCE_REPLIES, reply)
                self.stats.decode_s += t1 - t0
                self.stats.forward_s += t2 - t1
                self.stats.encode_s += time.perf_counter() - t2
                self.stats.batches += 1
                self.stats.requests += len(batch)
                self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        finally:
            consumer.close()
            producer.close(timeout_s=1.0)

    def _requests(self, msgs: Sequence[Message]) -> list[ev.InferenceRequestV1]:
        now = time.time()
        out: list[ev.InferenceRequestV1] = []
        for msg in msgs:
            if msg.error() is not None:
                continue
            item = validate(record_of(msg))
            if not isinstance(item, Accepted) or not isinstance(item.event,
                                                                ev.InferenceRequestV1):
                continue
            request = item.event
            if request.experiment_id != self.experiment_id:
                continue
            if now - request.produced_at.timestamp() > self.max_age_s:
                self.stats.skipped_old += 1
                continue
            out.append(request)
        return out
