"""The topic catalog: every Kafka topic USER uses, declared once.

Other modules import the :class:`TopicSpec` constants (``catalog.TRANSITIONS_RAW``) and
never write a topic name as a string literal.  ``userctl topics create`` makes the topics
from these specs; ``userctl topics describe`` compares them with the broker.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from topics.settings import SiteMap

MiB = 1024 * 1024
DAY_MS = 24 * 60 * 60 * 1000
FOREVER = -1


class Key(StrEnum):
    """What a topic's record key is, as UTF-8 text."""

    ROBOT_ID = "robot id"
    SITE_ROBOT = "site/robot"
    EXPERIMENT_ID = "experiment id"
    EXPERIMENT_VERSION = "experiment/version"
    SOURCE_TOPIC = "source topic"
    TOPIC_PARTITION = "topic/partition"
    HOST_ID = "host id"
    PLACEMENT_ID = "placement id"
    EPISODE = "experiment/robot/episode"


class Value(StrEnum):
    """How a topic's record value is encoded."""

    JSON = "json"
    ARROW = "arrow-ipc"
    BINARY = "binary"


class Cleanup(StrEnum):
    """Kafka ``cleanup.policy``."""

    COMPACT = "compact"
    DELETE = "delete"


class TopicSpec(BaseModel):
    """One topic: name, key and value kind, partitioning, cleanup and size limits.

    ``partitions=None`` marks a site-partitioned topic: its partition count comes from
    the :class:`~topics.settings.SiteMap`, and producers pick the partition from the
    record's site (:meth:`partition_for`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9._-]*$", max_length=200)
    key: Key
    value: Value
    partitions: int | None = Field(description="fixed count, or None when site-partitioned")
    cleanup: Cleanup
    retention_ms: int = Field(description="how long records are kept; -1 is forever")
    max_message_bytes: int = Field(gt=0)
    description: str

    @property
    def site_partitioned(self) -> bool:
        return self.partitions is None

    def partition_count(self, sites: SiteMap) -> int:
        """How many partitions this topic has under ``sites``."""
        return sites.partition_count if self.partitions is None else self.partitions

    def partition_for(self, sites: SiteMap, site: str, robot_id: str) -> int | None:
        """The partition for a record of ``robot_id`` at ``site``.

        ``None`` for topics that are not site-partitioned: the producer then partitions
        by key.
        """
        return sites.partition_for(site, robot_id) if self.site_partitioned else None

    def topic_configs(self) -> dict[str, str]:
        """The topic-level Kafka configs this spec fixes (as the broker reports them)."""
        return {
            "cleanup.policy": self.cleanup.value,
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }


ROBOTS = TopicSpec(
    name="robots",
    key=Key.ROBOT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="robot announcements (key: robot id) and latest states (key: id/state), "
    "kept forever",
)
HEARTBEATS = TopicSpec(
    name="heartbeats",
    key=Key.ROBOT_ID,
    value=Value.JSON,
    partitions=None,
    cleanup=Cleanup.DELETE,
    retention_ms=1 * 60 * 60 * 1000,
    max_message_bytes=1 * MiB,
    description="robot liveness, one small record per robot per second",
)
EXPERIMENTS = TopicSpec(
    name="experiments",
    key=Key.EXPERIMENT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="experiment specs (key: id) and latest status (key: id/status)",
)
ASSIGNMENTS = TopicSpec(
    name="assignments",
    key=Key.ROBOT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="leases: robot → experiment, granted and released",
)
TRANSITIONS_RAW = TopicSpec(
    name="transitions.raw",
    key=Key.SITE_ROBOT,
    value=Value.ARROW,
    partitions=None,
    cleanup=Cleanup.DELETE,
    retention_ms=30 * DAY_MS,
    max_message_bytes=16 * MiB,
    description="Arrow IPC batches of steps as robots took them",
)
TRANSITIONS = TopicSpec(
    name="transitions",
    key=Key.SITE_ROBOT,
    value=Value.ARROW,
    partitions=None,
    cleanup=Cleanup.DELETE,
    retention_ms=30 * DAY_MS,
    max_message_bytes=16 * MiB,
    description="Arrow IPC batches of rewarded steps, one row per step per reward function",
)
EPISODES = TopicSpec(
    name="episodes",
    key=Key.SITE_ROBOT,
    value=Value.JSON,
    partitions=None,
    cleanup=Cleanup.DELETE,
    retention_ms=30 * DAY_MS,
    max_message_bytes=1 * MiB,
    description="episode started / ended events",
)
WEIGHTS = TopicSpec(
    name="weights",
    key=Key.EXPERIMENT_VERSION,
    value=Value.BINARY,
    partitions=1,
    cleanup=Cleanup.DELETE,
    retention_ms=7 * DAY_MS,
    max_message_bytes=8 * MiB,
    description="policy weight chunks (safetensors bytes), addressed by manifests",
)
WEIGHTS_MANIFESTS = TopicSpec(
    name="weights.manifests",
    key=Key.EXPERIMENT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=4 * MiB,
    description="latest complete weights version per experiment: tensors, hash, chunk offsets",
)
COMMANDS = TopicSpec(
    name="commands",
    key=Key.ROBOT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.DELETE,
    retention_ms=1 * DAY_MS,
    max_message_bytes=1 * MiB,
    description="operator commands to robots: pause, resume, stop, e-stop",
)
LEARNER_METRICS = TopicSpec(
    name="learner.metrics",
    key=Key.EXPERIMENT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.DELETE,
    retention_ms=30 * DAY_MS,
    max_message_bytes=1 * MiB,
    description="learner statistics: losses, updates/s, policy-version lag",
)
DLQ = TopicSpec(
    name="dlq",
    key=Key.SOURCE_TOPIC,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.DELETE,
    retention_ms=90 * DAY_MS,
    max_message_bytes=32 * MiB,
    description="records a consumer could not accept, with the reason and the original bytes",
)
GAPS = TopicSpec(
    name="gaps",
    key=Key.TOPIC_PARTITION,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.DELETE,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="records a consumer expected that no longer existed (retention, deleted "
    "records): topic, partition, first and last missing offset; kept forever",
)
HOSTS = TopicSpec(
    name="hosts",
    key=Key.HOST_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="compute host announcements (CPUs, memory, GPUs), key: host id, kept forever",
)
HOST_HEARTBEATS = TopicSpec(
    name="hosts.heartbeats",
    key=Key.HOST_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.DELETE,
    retention_ms=1 * 60 * 60 * 1000,
    max_message_bytes=1 * MiB,
    description="compute host liveness and the placements each runs, about once a second",
)
PLACEMENTS = TopicSpec(
    name="placements",
    key=Key.PLACEMENT_ID,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="learners and inference replicas placed on hosts: granted and released",
)
INFERENCE_REQUESTS = TopicSpec(
    name="inference.requests",
    key=Key.SITE_ROBOT,
    value=Value.JSON,
    partitions=None,
    cleanup=Cleanup.DELETE,
    retention_ms=10 * 60 * 1000,
    max_message_bytes=4 * MiB,
    description="robots' observations asking a remote policy for their next action chunk",
)
INFERENCE_REPLIES = TopicSpec(
    name="inference.replies",
    key=Key.SITE_ROBOT,
    value=Value.JSON,
    partitions=None,
    cleanup=Cleanup.DELETE,
    retention_ms=10 * 60 * 1000,
    max_message_bytes=1 * MiB,
    description="action chunks from inference replicas, on the asking robot's site partitions",
)

LABELS = TopicSpec(
    name="labels",
    key=Key.EPISODE,
    value=Value.JSON,
    partitions=1,
    cleanup=Cleanup.COMPACT,
    retention_ms=FOREVER,
    max_message_bytes=1 * MiB,
    description="people's success labels of episodes (the latest per episode is kept), "
    "what a learned reward can train on",
)

#: Every topic, in the order ``userctl topics create`` makes them.
CATALOG: tuple[TopicSpec, ...] = (
    ROBOTS,
    HEARTBEATS,
    EXPERIMENTS,
    ASSIGNMENTS,
    TRANSITIONS_RAW,
    TRANSITIONS,
    EPISODES,
    WEIGHTS,
    WEIGHTS_MANIFESTS,
    COMMANDS,
    LEARNER_METRICS,
    DLQ,
    GAPS,
    HOSTS,
    HOST_HEARTBEATS,
    PLACEMENTS,
    INFERENCE_REQUESTS,
    INFERENCE_REPLIES,
    LABELS,
)

BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in CATALOG}


def spec(name: str) -> TopicSpec:
    """The spec called ``name``; raises ``KeyError`` naming the known topics."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"no topic {name!r} in the catalog (known: {', '.join(BY_NAME)})"
        ) from None
