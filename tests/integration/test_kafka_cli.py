"""infra/bin/kafka-* run Apache Kafka's own tools, as a Kafka operator expects."""

from __future__ import annotations

import subprocess
from pathlib import Path

from confluent_kafka import Producer

from infra.broker import Broker
from tests.conftest import create_topic
from topics import catalog
from topics.settings import KafkaSettings

BIN = Path(__file__).resolve().parents[2] / "infra" / "bin"


def _tool(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_kafka_topics_lists_the_whole_catalog(kafka: KafkaSettings) -> None:
    out = _tool("kafka-topics", "--bootstrap-server", kafka.bootstrap, "--list")
    assert out.returncode == 0, out.stderr
    assert {s.name for s in catalog.CATALOG} <= set(out.stdout.split())


def test_console_consumer_prints_a_record_and_its_headers(
    kafka: KafkaSettings, unique: str
) -> None:
    topic = f"cli-{unique}"
    create_topic(kafka, topic)
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=b"robot-1", value=b'{"hello": "operator"}',
                     headers=[("schema", b"Example"), ("version", b"1")])
    assert producer.flush(30) == 0
    out = _tool("kafka-console-consumer", "--bootstrap-server", kafka.bootstrap,
                "--topic", topic, "--from-beginning", "--max-messages", "1",
                "--timeout-ms", "30000", "--property", "print.key=true",
                "--property", "print.headers=true")
    assert out.returncode == 0, out.stderr
    assert "schema:Example" in out.stdout and "robot-1" in out.stdout
    assert '{"hello": "operator"}' in out.stdout


def test_console_producer_and_get_offsets(kafka: KafkaSettings, unique: str) -> None:
    topic = f"cli-prod-{unique}"
    create_topic(kafka, topic)
    out = _tool("kafka-console-producer", "--bootstrap-server", kafka.bootstrap,
                "--topic", topic, stdin="one\ntwo\nthree\n")
    assert out.returncode == 0, out.stderr
    offsets = _tool("kafka-get-offsets", "--bootstrap-server", kafka.bootstrap, "--topic", topic)
    assert offsets.returncode == 0, offsets.stderr
    assert offsets.stdout.strip() == f"{topic}:0:3"


def test_configs_and_consumer_groups_tools_run(kafka: KafkaSettings) -> None:
    configs = _tool("kafka-configs", "--bootstrap-server", kafka.bootstrap, "--describe",
                    "--entity-type", "topics", "--entity-name", catalog.ROBOTS.name)
    assert configs.returncode == 0, configs.stderr
    assert "cleanup.policy=compact" in configs.stdout
    groups = _tool("kafka-consumer-groups", "--bootstrap-server", kafka.bootstrap, "--list")
    assert groups.returncode == 0, groups.stderr


def test_dump_log_reads_a_segment_of_a_broker_we_own(private_broker: Broker, unique: str) -> None:
    private_broker.start()
    settings = KafkaSettings(bootstrap=private_broker.settings.bootstrap)
    topic = f"dump-{unique}"
    create_topic(settings, topic)
    producer = Producer(settings.producer_config())
    producer.produce(topic, key=b"k", value=b"dump me")
    assert producer.flush(30) == 0
    [segment] = (private_broker.data_dir / f"{topic}-0").glob("*.log")
    out = _tool("kafka-dump-log", "--files", str(segment), "--print-data-log")
    assert out.returncode == 0, out.stderr
    assert "payload: dump me" in out.stdout
