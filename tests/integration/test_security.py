"""The secured cluster on a real broker (issue 16): SASL_SSL + SCRAM-SHA-512 per role,
least-privilege ACLs, signed weights, and the demo topology running as its principals.

One secure broker for the module (its own home, free ports), set up exactly as
``userctl broker start --secure`` does (:func:`infra.security.start_secure`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from agents.weights import SubscriberSettings, WeightsSubscriber
from agents.weights_kafka import KafkaWeightsSource
from infra import pki, security, supervisor
from infra.broker import REPO, Broker
from learners import weights_sync_kafka
from learners.weights_sync import WeightsPublisher, WeightSyncSettings
from pipeline import sink, tables
from schemas import events as ev
from schemas.experiment import ExperimentSpec
from schemas.transitions import TransitionBatch
from tests.conftest import Processes, free_port, make_broker
from tests.unit.test_weights_sync import EXP, SPEC, snapshot
from topics import admin, catalog, signing
from topics import tables as shared_tables
from topics.consumer import KafkaDeadLetters
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted

pytestmark = pytest.mark.timeout(300)


class Secure:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.home = broker.home
        self.bootstrap = broker.settings.bootstrap
        self.paths = security.Paths(self.home)

    def as_(self, principal: str) -> KafkaSettings:
        return security.client_settings(self.home, principal, self.bootstrap)

    def env(self, principal: str) -> dict[str, str]:
        return {**os.environ, "USER_HOME": str(self.home),
                **security.client_env(self.home, principal, self.bootstrap)}


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path) -> Iterator[Secure]:
    broker = make_broker(tmp_path_factory.mktemp("secure") / "home", kafka_libs,
                         secure=True, internal_port=free_port())
    try:
        admin_settings = security.start_secure(broker, KafkaSettings().sites.sites)
        admin.ensure_topics(admin_settings)
        yield Secure(broker)
    finally:
        broker.stop()


def _delivery_error(settings: KafkaSettings, topic: str, partition: int = 0) -> KafkaError | None:
    producer = Producer(settings.producer_config(role="test"))
    result: list[KafkaError | None] = []
    producer.produce(topic, b"x", b"k", partition=partition,
                     on_delivery=lambda err, _msg: result.append(err))
    producer.flush(30)
    assert result, f"no delivery report for {topic}"
    return result[0]


def _read_error(settings: KafkaSettings, topic: str, partitions: list[int]) -> KafkaError | None:
    consumer = Consumer(settings.consumer_config(f"user-test-{uuid.uuid4().hex[:8]}",
                                                 role="test"))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is not None:
                return msg.error()
        return None
    finally:
        consumer.close()


def test_a_robot_principal_may_write_its_raw_data_but_not_weights_and_reads_no_site_data(
        secure: Secure) -> None:
    robot = secure.as_("agent-lab-a")
    sites = robot.sites
    assert _delivery_error(robot, catalog.TRANSITIONS_RAW.name,
                           sites.partitions_of("lab-a")[0]) is None
    for topic in (catalog.WEIGHTS.name, catalog.WEIGHTS_MANIFESTS.name,
                  catalog.ASSIGNMENTS.name, catalog.COMMANDS.name):
        err = _delivery_error(robot, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    err = _read_error(robot, catalog.TRANSITIONS_RAW.name, list(sites.partitions_of("lab-b")))
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # …while the learner may write weights.
    assert _delivery_error(secure.as_("learner"), catalog.WEIGHTS.name) is None


def test_a_wrong_password_ends_in_one_line_naming_the_principal(
        secure: Secure, tmp_path: Path) -> None:
    wrong = pki.write_secret(tmp_path / "wrong.password", "not-the-password")
    env = {**secure.env("agent-lab-a"), "USER_KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    proc = subprocess.run([sys.executable, "-m", "infra.cli", "topics", "describe"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refused User:agent-lab-a" in lines[0] and "password" in lines[0]
    assert "not-the-password" not in proc.stderr + proc.stdout


def test_the_kafka_acls_wrapper_shows_the_acls_through_the_admin_certificate(
        secure: Secure) -> None:
    s = secure.broker.settings
    env = {**os.environ, "USER_HOME": str(secure.home), "USER_SECURE": "1",
           "USER_BROKER_PORT": str(s.port), "USER_BROKER_INTERNAL_PORT": str(s.internal_port),
           "USER_KAFKA_LIBS": str(secure.broker.libs)}
    proc = subprocess.run([str(REPO / "infra" / "bin" / "kafka-acls"), "--list", "--topic",
                           catalog.WEIGHTS.name], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    writers = {line.split("principal=")[1].split(",")[0] for line in proc.stdout.splitlines()
               if "operation=WRITE" in line}
    assert writers == {"User:learner"}


def _dead_letters(secure: Secure, consumer: str) -> list[ev.DeadLetterV1]:
    reader = Follower(secure.as_("operator"), {catalog.DLQ: "beginning"}, role="test-dlq")
    try:
        out = []
        while not reader.caught_up():
            for item in reader.poll(0.5):
                if (isinstance(item, Accepted) and isinstance(item.event, ev.DeadLetterV1)
                        and item.event.consumer == consumer):
                    out.append(item.event)
        return out
    finally:
        reader.close()


def test_unsigned_and_wrongly_signed_versions_are_dead_lettered_never_applied(
        secure: Secure, tmp_path: Path) -> None:
    learner = secure.as_("learner")
    robot = secure.as_("agent-lab-a")
    rogue = pki.write_secret(tmp_path / "rogue.key", signing.SigningKey.generate().pem())
    consumer = f"agent-test-{uuid.uuid4().hex[:6]}"
    dead = KafkaDeadLetters(EventProducer(robot, role="test"), consumer=consumer)
    sub = WeightsSubscriber(
        lambda: KafkaWeightsSource(robot, dead_letters=dead), SPEC,
        SubscriberSettings(trusted_keys=secure.paths.trusted_keys))
    sub.want(EXP)
    sub.start()

    def publish(version: int, key: Path | None) -> None:
        pub = WeightsPublisher(weights_sync_kafka.KafkaWeightsSink(learner), EXP,
                               WeightSyncSettings(max_bytes_per_s=0, signing_key=key))
        pub.start(first_version=version)
        pub.publish(snapshot(version))
        assert pub.wait_published(version, 60.0), pub.stats.last_error
        pub.close()

    try:
        assert sub.wait_ready(60.0)
        publish(1, None)
        assert sub.wait_rejected(EXP, 1, 60.0), sub.last_rejection
        publish(2, rogue)
        assert sub.wait_rejected(EXP, 2, 60.0), sub.last_rejection
        publish(3, secure.paths.signing_key)
        assert sub.wait_applied(EXP, 3, 60.0), sub.last_rejection
    finally:
        sub.close()
    assert sub.applied_versions == [(EXP, 3)]
    assert sub.rejected["unsigned"] == 1 and sub.rejected["untrusted_key"] == 1
    dead.flush()
    letters = _dead_letters(secure, consumer)
    assert [(d.reason, d.source_topic) for d in letters] == [
        (ev.RejectReason.SIGNATURE, catalog.WEIGHTS_MANIFESTS.name)] * 2
    assert "unsigned" in letters[0].detail and "untrusted_key" in letters[1].detail


def robot_sites(secure: Secure) -> list[str]:
    return list(secure.as_("operator").sites.sites)


def _until(what: str, cond: Callable[[], bool], timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                      for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")


def test_the_topology_runs_as_its_principals_ingests_and_applies_signed_weights(
        secure: Secure, tmp_path: Path) -> None:
    name = f"secure-{uuid.uuid4().hex[:8]}"
    spec = ExperimentSpec.model_validate({
        "name": name,
        "robots": [{"robot_type": "reacher2d", "count": 1, "sites": ["lab-a"]}],
        "algorithm": {"name": "sac", "batch_size": 32, "warmup_steps": 100, "seed": 0},
        "policy": {"kind": "mlp_gaussian", "hidden": [16, 16]},
        "buffer": {"memory_budget_mb": 16},
        "weight_sync": {"every_updates": 20, "every_s": 1},
    })
    topology = security.secure_topology(supervisor.Topology.model_validate({
        "name": name, "backoff_s": 0.5,
        "roles": {
            "controller": {"userctl": ["controller"]},
            "sink": {"userctl": ["sink"]},
            "rewards": {"userctl": ["rewards", "run", "reach_dense@1"]},
            "learner": {"userctl": ["learn", name]},
            "agent-lab-a": {"userctl": ["agent", "--robot-type", "reacher2d",
                                        "--site", "lab-a"]},
        },
    }), secure.home, secure.bootstrap)
    base = {**os.environ, "USER_HOME": str(secure.home), "USER_AGENT_FLUSH_MS": "250",
            "USER_SINK_FLUSH_INTERVAL_S": "1", "USER_LEARN_TORCH_THREADS": "1",
            "USER_LEARN_METRICS_S": "2"}
    for key in [k for k in base if k.startswith("USER_KAFKA_")]:
        del base[key]  # each role gets its own principal from the topology
    operator = secure.as_("operator")
    producer = EventProducer(operator, role="test")
    producer.send(catalog.EXPERIMENTS, ev.ExperimentSubmittedV1(
        experiment_id=name, spec=spec.model_dump(mode="json"), submitted_by="test"))
    producer.flush(30)
    sup = supervisor.Supervisor(topology, secure.home, base_env=base)
    procs = Processes(tmp_path)
    import threading

    thread = threading.Thread(target=sup.run, daemon=True)
    thread.start()
    watch = Follower(operator, {catalog.TRANSITIONS_RAW: "beginning"}, role="test-watch")
    versions: set[int] = set()

    def learned_policy_acting() -> bool:
        for item in watch.poll(0.5):
            if isinstance(item, Accepted) and isinstance(item.event, TransitionBatch):
                versions.update(int(v) for v in item.event.policy_version)
        return max(versions, default=0) >= 1

    def delta_has_steps() -> bool:
        # The sink's per-partition app transaction: rows up to that offset are committed.
        dt = sink.open_table(tables.table_path(secure.home / "delta", tables.TRANSITIONS_RAW))
        lab_a = operator.sites.partitions_of("lab-a")
        return dt is not None and any(
            (dt.transaction_version(shared_tables.app_id(
                shared_tables.DEFAULT_SINK_NAME, catalog.TRANSITIONS_RAW.name, p)) or -1) >= 0
            for p in lab_a)

    logs = secure.home / "logs" / name
    try:
        _until("steps in Delta", delta_has_steps, 120, logs)
        _until("a signed weights version applied by the robot", learned_policy_acting, 150,
               logs)
        # No secret on any command line (`ps`) or in any role's log.
        secrets = [secure.paths.password_file(p).read_text().strip()
                   for p in security.principals(robot_sites(secure))]
        secrets.append(secure.paths.keystore_password.read_text().strip())
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                assert not any(s in cmdline for s in secrets), f"a secret in pid {proc.name}"
        for log in logs.glob("*.log"):
            text = log.read_text(errors="replace")
            assert not any(s in text for s in secrets), f"a secret in {log}"
    finally:
        watch.close()
        sup.stop()
        thread.join(timeout=60)
        procs.stop_all()
    agent_log = (logs / "agent-lab-a.log").read_text()
    assert "applied" in agent_log and "unsigned" not in agent_log
