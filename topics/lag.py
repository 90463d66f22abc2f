"""Consumer-group lag, in records and in seconds, as operators read it.

For every partition a group has committed an offset on, the lag is what lies between that
offset and the partition's end: ``records`` behind, and ``seconds`` — the age of the oldest
record the group has not consumed yet (now minus the timestamp of the record at the
committed offset; 0 when nothing is behind).  A group that has stopped keeps its committed
offsets, so its lag in seconds keeps growing while new records arrive: it does not vanish.

Read-only: the probe reads one record per lagging partition with an ``assign`` (no group
membership, no commit), so it disturbs no consumer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from topics.admin import admin_client
from topics.settings import KafkaSettings


@dataclass(frozen=True)
class PartitionLag:
    """One partition of one group."""

    topic: str
    partition: int
    committed: int
    end: int
    seconds: float | None
    """age of the oldest unconsumed record; 0 when caught up, None when unreadable."""

    @property
    def records(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True)
class GroupLag:
    """A consumer group's lag, summed over the partitions it has committed offsets on."""

    group: str
    state: str
    """the broker's view: ``STABLE``, ``EMPTY`` (no member: stopped), ``DEAD``, …"""
    members: int
    partitions: tuple[PartitionLag, ...]

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)

    @property
    def seconds(self) -> float | None:
        """The oldest unconsumed record's age over all partitions (None: unknown)."""
        ages = [p.seconds for p in self.partitions if p.seconds is not None]
        return max(ages) if ages else None

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(sorted({p.topic for p in self.partitions}))


def list_groups(admin: AdminClient, timeout_s: float = 10.0) -> list[str]:
    """Every consumer group the cluster knows, sorted."""
    result = admin.list_consumer_groups(request_timeout=timeout_s).result()
    return sorted(g.group_id for g in result.valid)


def group_lags(
    settings: KafkaSettings,
    groups: Iterable[str] | None = None,
    *,
    now: float | None = None,
    timeout_s: float = 10.0,
) -> list[GroupLag]:
    """The lag of ``groups`` (default: every group with committed offsets), by group name.

    Groups without any committed offset are left out (followers and tools that never
    commit).  Raises ``TimeoutError`` when the cluster does not answer.
    """
    admin = admin_client(settings)
    try:
        names = list(groups) if groups is not None else list_groups(admin, timeout_s)
        states = _describe(admin, names, timeout_s)
        committed: dict[str, list[TopicPartition]] = {}
        for name in names:
            future = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(name)], request_timeout=timeout_s)[name]
            parts = future.result().topic_partitions or []
            committed[name] = [tp for tp in parts if tp.offset >= 0 and tp.error is None]
    except KafkaException as exc:
        raise TimeoutError(f"Kafka at {settings.bootstrap} did not answer: {exc.args[0]}"
                           ) from None
    wanted = {(tp.topic, tp.partition) for tps in committed.values() for tp in tps}
    if not wanted:
        return []
    probe = _Probe(settings, timeout_s)
    try:
        ends = probe.ends(wanted)
        starts = {(tp.topic, tp.partition): max(tp.offset, ends[(tp.topic, tp.partition)][0])
                  for tps in committed.values() for tp in tps}
        lagging = {k: o for k, o in starts.items() if o < ends[k][1]}
        stamps = probe.timestamps(lagging)
    finally:
        probe.close()
    now = time.time() if now is None else now
    out = []
    for name in names:
        rows = []
        for tp in sorted(committed[name], key=lambda t: (t.topic, t.partition)):
            key = (tp.topic, tp.partition)
            end = ends[key][1]
            at = starts[key]
            if at >= end:
                seconds: float | None = 0.0
            else:
                ts = stamps.get((key, at))
                seconds = None if ts is None else max(0.0, now - ts / 1000)
            rows.append(PartitionLag(tp.topic, tp.partition, tp.offset, end, seconds))
        if rows:
            state, members = states.get(name, ("UNKNOWN", 0))
            out.append(GroupLag(name, state, members, tuple(rows)))
    return out


def _describe(admin: AdminClient, names: Sequence[str], timeout_s: float
              ) -> dict[str, tuple[str, int]]:
    if not names:
        return {}
    out = {}
    for name, future in admin.describe_consumer_groups(
            list(names), request_timeout=timeout_s).items():
        try:
            desc = future.result()
        except KafkaException:
            continue
        out[name] = (str(getattr(desc.state, "name", desc.state)), len(desc.members))
    return out


class _Probe:
    """A group-less reader of watermarks and single records."""

    def __init__(self, settings: KafkaSettings, timeout_s: float) -> None:
        group = f"{settings.client_id}-lag-probe-{uuid.uuid4().hex[:12]}"
        self._client = Consumer(settings.consumer_config(
            group, role="lag-probe", read_committed=False))
        self._timeout = timeout_s

    def ends(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, high) watermarks per (topic, partition)."""
        out = {}
        for topic, partition in keys:
            low, high = self._client.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self._timeout)
            out[(topic, partition)] = (int(low), int(high))
        return out

    def timestamps(self, at: dict[tuple[str, int], int]
                   ) -> dict[tuple[tuple[str, int], int], int]:
        """The timestamp (ms) of the first record at or after each offset."""
        if not at:
            return {}
        self._client.assign([TopicPartition(t, p, o) for (t, p), o in at.items()])
        out: dict[tuple[tuple[str, int], int], int] = {}
        pending = dict(at)
        deadline = time.monotonic() + self._timeout
        while pending and time.monotonic() < deadline:
            for msg in self._client.consume(len(pending), 0.5):
                if msg.error() is not None:
                    continue
                key = (msg.topic() or "", msg.partition() or 0)
                if key in pending:
                    _, ts = msg.timestamp()
                    out[(key, pending.pop(key))] = ts
                    self._client.pause([TopicPartition(*key)])
        return out

    def close(self) -> None:
        self._client.close()


def age(seconds: float | None) -> str:
    """A lag in seconds as people read it: ``0s``, ``42s``, ``7m``, ``3h``, ``-``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
