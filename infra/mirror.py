"""MirrorMaker 2 at an edge: the site's broker bridged to the cloud's (DESIGN §9).

Each site runs its own Kafka broker (the edge); the cloud runs its own.  One MirrorMaker 2
process per site — Kafka's own ``connect-mirror`` in dedicated mode
(``org.apache.kafka.connect.mirror.MirrorMaker``), resolved from Maven Central at the
pinned Kafka version — runs **at the edge** and opens only outbound connections: to its
own broker and to the cloud's.  It runs two flows:

* ``<site>->cloud`` (:data:`UP`): what the robots make — raw steps, episodes, heartbeats,
  robot announcements;
* ``cloud-><site>`` (:data:`DOWN`): what the robots need — weights, manifests, leases,
  commands, experiments.  Robots fetch weights from their edge broker, so a version crosses
  the WAN once per site, not once per robot.

Topic names are kept (:data:`POLICY`, MM2's ``IdentityReplicationPolicy`` with MM2's own
heartbeats topic renamed): every site-partitioned topic gives each site its own partitions
(:class:`topics.settings.SiteMap`), and MM2 writes a record to the partition number it came
from, so the sites' copies merge into the cloud's one topic without collisions, and the
sink, reward jobs and learner read the cloud's topics unchanged.  The two flows carry
disjoint topic sets, which is what keeps the identity policy acyclic.

Delivery: MM2 is at-least-once (a restart re-copies what it copied after its last offset
flush).  Exactly-once into Delta holds because the sink drops a step it has already taken
by its identity ``(robot_id, incarnation, seq)`` (:class:`topics.tables.HighWater`); weights
chunks are matched by (experiment, version, index, sha256), not by offset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.broker import INFRA, POM, Broker, BrokerError, BrokerSettings, _last_error_line
from topics import catalog

MIRROR_MAIN = "org.apache.kafka.connect.mirror.MirrorMaker"
#: The replication policy: identity names, MM2's own heartbeats on ``mm2-heartbeats``.
POLICY = "dev.user.mirror.SitesReplicationPolicy"
POLICY_SOURCE = INFRA / "kafka" / "mirror" / "SitesReplicationPolicy.java"
#: MM2's alias of the cloud cluster (a site's alias is its site name).
CLOUD = "cloud"

#: Site data, mirrored up from each edge to the cloud.
UP: tuple[catalog.TopicSpec, ...] = (
    catalog.TRANSITIONS_RAW, catalog.EPISODES, catalog.HEARTBEATS, catalog.ROBOTS,
)
#: What robots need, mirrored down from the cloud to each edge.
DOWN: tuple[catalog.TopicSpec, ...] = (
    catalog.WEIGHTS, catalog.WEIGHTS_MANIFESTS, catalog.ASSIGNMENTS, catalog.COMMANDS,
    catalog.EXPERIMENTS,
)

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class MirrorSettings(BaseSettings):
    """One edge's MirrorMaker 2 (environment prefix ``USER_MIRROR_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_MIRROR_", frozen=True, extra="ignore")

    site: str = Field(description="this edge's site name (its MM2 cluster alias)")
    edge_bootstrap: str = Field(description="the site's own broker, host:port")
    cloud_bootstrap: str = Field(description="the cloud broker as this edge reaches it")
    heap: str = Field("384m", description="JVM heap, -Xmx")
    flush_interval_ms: int = Field(
        2_000, gt=0, description="how often MM2 records how far it copied: the most it "
        "copies again after a crash, and the grain of `userctl status`'s lag")
    cloud_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT or SSL (mTLS)")
    ssl_ca: Path | None = Field(None, description="PEM of the CA that signed the cloud broker")
    ssl_cert: Path | None = Field(None, description="this edge's client certificate, PEM")
    ssl_key: Path | None = Field(None, description="its private key, PEM (unencrypted)")

    def with_tls(self, home: Path) -> MirrorSettings:
        """These settings dialling the cloud with mutual TLS, with the site's certificate
        from ``<home>/security`` (``userctl mirror certs``) where none is given."""
        from infra import security

        paths = security.Paths(home)
        return self.model_copy(update={
            "cloud_security_protocol": "SSL", "ssl_ca": self.ssl_ca or paths.ca,
            "ssl_cert": self.ssl_cert or paths.site_cert(self.site),
            "ssl_key": self.ssl_key or paths.site_key(self.site)})


def _topics_regex(specs: tuple[catalog.TopicSpec, ...]) -> str:
    return "|".join(s.name.replace(".", "\\.") for s in specs)


def mm2_properties(s: MirrorSettings, message_max_bytes: int = 40 * 1024 * 1024) -> str:
    """The dedicated-mode MM2 configuration of one edge (``mm2.properties``)."""
    site = s.site
    lines = [
        "# Written by `userctl mirror` (infra/mirror.py); edits are overwritten.",
        f"clusters = {CLOUD}, {site}",
        f"{CLOUD}.bootstrap.servers = {s.cloud_bootstrap}",
        f"{site}.bootstrap.servers = {s.edge_bootstrap}",
        f"replication.policy.class = {POLICY}",
        f"{site}->{CLOUD}.enabled = true",
        f"{site}->{CLOUD}.topics = {_topics_regex(UP)}",
        f"{CLOUD}->{site}.enabled = true",
        f"{CLOUD}->{site}.topics = {_topics_regex(DOWN)}",
        # Only USER's topics, exactly as listed (MM2's heartbeats are never replicated).
        "heartbeats.replication.enabled = false",
        "emit.heartbeats.enabled = true",
        "emit.checkpoints.enabled = true",
        "sync.group.offsets.enabled = false",
        # The topic catalog owns topic configs and every broker's topics are made from it.
        "sync.topic.configs.enabled = false",
        "sync.topic.acls.enabled = false",
        "refresh.topics.interval.seconds = 10",
        "refresh.groups.interval.seconds = 60",
        "tasks.max = 2",
        # Single-broker clusters: MM2's internal topics with one replica.
        "replication.factor = 1",
        "checkpoints.topic.replication.factor = 1",
        "heartbeats.topic.replication.factor = 1",
        "offset-syncs.topic.replication.factor = 1",
        "offset.storage.replication.factor = 1",
        "status.storage.replication.factor = 1",
        "config.storage.replication.factor = 1",
        # Copy only committed records (the sink and agents may write transactionally).
        "consumer.isolation.level = read_committed",
        "consumer.auto.offset.reset = earliest",
        f"consumer.max.partition.fetch.bytes = {message_max_bytes}",
        f"consumer.fetch.max.bytes = {message_max_bytes}",
        f"producer.max.request.size = {message_max_bytes}",
        "producer.acks = all",
        "producer.enable.idempotence = true",
        # A WAN cut must delay records, never drop them: retry forever.
        "producer.delivery.timeout.ms = 2147483647",
        "producer.retries = 2147483647",
        "reconnect.backoff.max.ms = 5000",
    ]
    for cluster in (CLOUD, site):
        # Worker settings of the flow *into* `cluster` (MM2 takes them cluster-prefixed):
        # - one MM2 per edge runs its flows: when it was killed or cut off long enough to
        #   lose its group membership, it must take its tasks back at once, not hold them
        #   for 5 min (Connect's default) for a member that will not return;
        # - how far it copied is flushed often (what a crash copies again; lag's grain).
        lines.append(f"{cluster}.scheduled.rebalance.max.delay.ms = 5000")
        lines.append(f"{cluster}.offset.flush.interval.ms = {s.flush_interval_ms}")
        lines.append(f"{cluster}.producer.max.request.size = {message_max_bytes}")
        # Over a WAN a round trip is hundreds of ms and the idempotent producer keeps at
        # most 5 requests in flight: records must ride in few, large batches (which zstd
        # also compresses far better) or the copy falls behind a handful of robots.
        lines.append(f"{cluster}.producer.linger.ms = 250")
        lines.append(f"{cluster}.producer.batch.size = 1048576")
        # What crosses the WAN is what MM2's producer sends: compress it (the consumer
        # side hands MM2 decompressed records whatever the agents' producers used).
        lines.append(f"{cluster}.producer.compression.type = zstd")
        lines.append(f"{cluster}.consumer.max.partition.fetch.bytes = {message_max_bytes}")
    if s.cloud_security_protocol.upper() == "SSL":
        missing = [str(f) for f in (s.ssl_ca, s.ssl_cert, s.ssl_key) if f and not f.exists()]
        if not (s.ssl_ca and s.ssl_cert and s.ssl_key) or missing:
            absent = f"; missing: {', '.join(missing)}" if missing else ""
            raise BrokerError(
                "MirrorMaker over TLS needs the CA and this site's certificate and key "
                f"(USER_MIRROR_SSL_CA/_CERT/_KEY{absent}); make them with "
                "`userctl mirror certs --sites <site>` on the cloud machine "
                "and copy <home>/security/ca.pem and sites/<site>.* to the edge"
            )
        lines += [
            f"{CLOUD}.security.protocol = SSL",
            f"{CLOUD}.ssl.truststore.type = PEM",
            f"{CLOUD}.ssl.truststore.location = {s.ssl_ca.resolve()}",
            f"{CLOUD}.ssl.keystore.type = PEM",
            f"{CLOUD}.ssl.keystore.location = {_pem_keystore(s.ssl_cert, s.ssl_key)}",
            f"{CLOUD}.ssl.endpoint.identification.algorithm = https",
        ]
    return "\n".join(lines) + "\n"


def _pem_keystore(cert: Path, key: Path) -> Path:
    """Kafka's PEM keystore is one file holding the key and the chain."""
    out = cert.resolve().with_suffix(".keystore.pem")
    out.write_text(key.read_text() + cert.read_text())
    out.chmod(0o600)
    return out


@dataclass(frozen=True)
class MirrorFiles:
    libs: Path
    config: Path
    log4j: Path
    log_file: Path


class Mirror:
    """Resolve, configure and run one edge's MirrorMaker 2."""

    def __init__(self, settings: MirrorSettings, broker_settings: BrokerSettings | None = None
                 ) -> None:
        self.settings = settings
        self.broker = Broker(broker_settings or BrokerSettings())
        base = self.broker.libs.parent
        self.libs = base / "mirror-libs"
        self.dir = self.broker.home / "mirror" / settings.site
        self.config = self.dir / "mm2.properties"
        self.log4j = self.dir / "log4j2.properties"
        self.log_file = self.broker.home / "logs" / f"mirror-{settings.site}.log"

    def ensure_jars(self, say: Say = _quiet) -> Path:
        """connect-mirror and its runtime (pom profile ``mirror``), plus the replication
        policy compiled with javac; resolved once, then reused."""
        marker = self.libs / ".complete"
        if not marker.exists():
            mvn = shutil.which(self.broker.settings.mvn)
            if mvn is None:
                raise BrokerError(
                    f"Maven not found and MirrorMaker's jars are not cached at {self.libs}; "
                    "install Maven (apt-get install maven)")
            say(f"resolving connect-mirror {self.broker.version} from Maven Central (once)…")
            tmp = self.libs.with_name(f"mirror-libs.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                [mvn, "-B", "-q", "-f", str(POM), "-Pmirror", "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
                capture_output=True, text=True, timeout=900)
            if proc.returncode != 0 or not any(tmp.glob("connect-mirror-*.jar")):
                shutil.rmtree(tmp, ignore_errors=True)
                raise BrokerError(
                    f"Maven could not resolve connect-mirror {self.broker.version} "
                    f"({_last_error_line(proc.stdout + proc.stderr)}); check access to "
                    "Maven Central")
            self._build_policy(tmp)
            shutil.rmtree(self.libs, ignore_errors=True)
            tmp.rename(self.libs)
            marker.write_text(self.broker.version + "\n")
        return self.libs

    def _build_policy(self, libs: Path) -> None:
        javac, jar = shutil.which("javac"), shutil.which("jar")
        if javac is None or jar is None:
            raise BrokerError("javac/jar not found: MirrorMaker's replication policy is "
                              "compiled once; install a JDK (apt-get install "
                              "openjdk-17-jdk-headless)")
        with tempfile.TemporaryDirectory() as build:
            proc = subprocess.run(
                [javac, "--release", "17", "-cp", f"{libs}/*", "-d", build, str(POLICY_SOURCE)],
                capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise BrokerError(f"compiling {POLICY_SOURCE.name} failed: "
                                  f"{_last_error_line(proc.stdout + proc.stderr)}")
            subprocess.run([jar, "cf", str(libs / "user-mirror-policy.jar"), "-C", build, "."],
                           check=True, capture_output=True, timeout=120)

    def write_config(self) -> MirrorFiles:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(mm2_properties(
            self.settings, self.broker.settings.message_max_bytes))
        tmpl = (INFRA / "kafka" / "log4j2.properties.template").read_text()
        self.log4j.write_text(tmpl.replace("${log_file}", str(self.log_file)))
        return MirrorFiles(self.libs, self.config, self.log4j, self.log_file)

    def argv(self) -> list[str]:
        """The MM2 command line (jars resolved and config written first)."""
        java = self.broker.java()
        self.ensure_jars()
        self.write_config()
        return [
            java, f"-Xmx{self.settings.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp", f"{self.libs}/*", MIRROR_MAIN, str(self.config),
        ]


# -- replication lag, as MM2 records it ----------------------------------------------------


@dataclass(frozen=True)
class FlowLag:
    """How far one flow's copy is behind its source, per topic (records; None: unknown)."""

    site: str
    direction: str  # "up" or "down"
    records: dict[str, int | None]

    @property
    def total(self) -> int | None:
        vals = list(self.records.values())
        return None if any(v is None for v in vals) else sum(v or 0 for v in vals)


def offsets_topic(source: str) -> str:
    """Where MM2 keeps a flow's copied-up-to offsets: on the target, named by source."""
    return f"mm2-offsets.{source}.internal"


def flow_lag(source_bootstrap: str, target_bootstrap: str, source: str, site: str,
             direction: str, specs: tuple[catalog.TopicSpec, ...],
             partitions: dict[str, tuple[int, ...]] | None = None,
             timeout_s: float = 5.0) -> FlowLag:
    """Records on the source not yet copied, per topic: the source's end offsets minus the
    source offsets MM2 last flushed (its Connect offsets topic on the target)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from topics.settings import KafkaSettings

    copied: dict[tuple[str, int], int] = {}
    target = KafkaSettings(bootstrap=target_bootstrap)
    conf = target.consumer_config(f"user-lag-probe-{os.getpid()}", role="mirror-lag")
    conf["log_level"] = 0
    consumer = Consumer(conf)
    try:
        # Connect spreads its offset records over the topic's partitions by key hash:
        # read every partition up to the end it had when we looked (not "until idle":
        # MM2 commits every flush interval, so the topic is never idle for long).
        topic = offsets_topic(source)
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                      timeout=timeout_s)
                    for p in (meta.partitions if meta is not None and meta.error is None
                              else ())}
        except KafkaException:
            ends = {}
        todo = {p: high for p, (low, high) in ends.items() if high > low}
        if todo:
            consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
            deadline = time.monotonic() + 6 * timeout_s
            while todo and time.monotonic() < deadline:
                for m in consumer.consume(500, 0.5):
                    raw_key, raw_value = m.key(), m.value()
                    if m.error() is not None or raw_key is None:
                        continue
                    try:
                        part = json.loads(raw_key)[1]
                        value = json.loads(raw_value) if raw_value else None
                    except (ValueError, IndexError, TypeError):
                        continue
                    if part.get("cluster") == source and value is not None:
                        copied[(str(part["topic"]), int(part["partition"]))] = int(
                            value["offset"]) + 1
                for tp in consumer.position([TopicPartition(topic, p) for p in list(todo)]):
                    if tp.offset >= todo[tp.partition]:
                        del todo[tp.partition]
    finally:
        consumer.close()
    src = Consumer({**KafkaSettings(bootstrap=source_bootstrap).consumer_config(
        f"user-lag-probe-{os.getpid()}", role="mirror-lag"), "log_level": 0})
    records: dict[str, int | None] = {}
    try:
        for spec in specs:
            parts = (partitions or {}).get(spec.name, tuple(range(spec.partitions or 1)))
            total: int | None = 0
            for p in parts:
                try:
                    low, high = src.get_watermark_offsets(TopicPartition(spec.name, p),
                                                          timeout=timeout_s)
                except KafkaException:
                    total = None
                    break
                done = copied.get((spec.name, p), low)
                assert total is not None
                total += max(0, high - max(done, low))
            records[spec.name] = total
    finally:
        src.close()
    return FlowLag(site, direction, records)
