"""The local broker's lifecycle and its one-line errors, on real Kafka processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from infra.broker import Broker, BrokerError, BrokerSettings
from tests.conftest import create_topic, free_port, make_broker
from topics.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[2]


def _fake_executable(path: Path, script: str) -> str:
    path.write_text("#!/usr/bin/env bash\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


def test_start_twice_leaves_one_broker_and_data_survives_stop_and_start(
    private_broker: Broker,
) -> None:
    first = private_broker.start()
    assert not first.already_running
    again = private_broker.start()
    assert again.already_running and again.pid == first.pid

    bootstrap = private_broker.settings.bootstrap
    settings = KafkaSettings(bootstrap=bootstrap)
    topic = f"survives-{uuid.uuid4().hex[:8]}"
    create_topic(settings, topic)
    producer = Producer(settings.producer_config())
    producer.produce(topic, key=b"k", value=b"committed before stop")
    assert producer.flush(30) == 0

    assert private_broker.stop()
    assert private_broker.status().running is False
    assert not private_broker.stop()  # stopping a stopped broker is a no-op

    private_broker.start()
    consumer = Consumer(settings.consumer_config(f"g-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    try:
        msg = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert msg.value() == b"committed before stop"
    finally:
        consumer.close()


def test_stale_pid_file_is_reported_and_removed(private_broker: Broker) -> None:
    private_broker.pid_file.parent.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    private_broker.pid_file.write_text(f"{dead.pid}\n")
    assert private_broker.pid() is None
    said: list[str] = []
    result = private_broker.start(say=said.append)
    assert any("stale pid file" in line for line in said)
    assert result.notes and "stale pid file" in result.notes[0]
    assert private_broker.pid() == result.pid


def test_port_taken_by_another_program_is_named(private_broker: Broker) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", private_broker.settings.port))
        blocker.listen()
        with pytest.raises(BrokerError, match=r"port \d+ on 127.0.0.1 is taken.*USER_BROKER_PORT"):
            private_broker.start()
    assert private_broker.pid() is None


def test_corrupt_storage_is_reported_not_reformatted(private_broker: Broker) -> None:
    private_broker.start()
    private_broker.stop()
    meta = private_broker.data_dir / "meta.properties"
    meta.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BrokerError, match="storage at .* is corrupt"):
        private_broker.start()
    assert meta.read_bytes() == b"\xff\xfe garbage"  # nothing erased behind the user's back


def test_storage_of_another_node_is_reported_as_corrupt(private_broker: Broker) -> None:
    private_broker.start()
    private_broker.stop()
    meta = private_broker.data_dir / "meta.properties"
    meta.write_text(meta.read_text().replace("node.id=1", "node.id=7"))
    with pytest.raises(BrokerError, match="belongs to node 7"):
        private_broker.start()


def test_java_too_old_is_a_one_line_error(tmp_path: Path, kafka_libs: Path) -> None:
    java = _fake_executable(
        tmp_path / "java", 'echo \'openjdk version "11.0.2" 2019-01-15\' >&2'
    )
    broker = make_broker(tmp_path / "home", kafka_libs, java=java)
    with pytest.raises(BrokerError, match="Java 11 .* too old.*Java 17"):
        broker.start()


def test_java_8_version_strings_are_read_as_8(tmp_path: Path, kafka_libs: Path) -> None:
    java = _fake_executable(tmp_path / "java", "echo 'java version \"1.8.0_392\"' >&2")
    broker = make_broker(tmp_path / "home", kafka_libs, java=java)
    with pytest.raises(BrokerError, match="Java 8 "):
        broker.java()


def test_java_missing_is_a_one_line_error(tmp_path: Path, kafka_libs: Path) -> None:
    broker = make_broker(tmp_path / "home", kafka_libs, java=str(tmp_path / "no-java"))
    with pytest.raises(BrokerError, match="Java not found.*JAVA_HOME"):
        broker.start()


def test_maven_unable_to_resolve_is_a_one_line_error(tmp_path: Path) -> None:
    mvn = _fake_executable(
        tmp_path / "mvn",
        "echo '[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13:pom' >&2; exit 1",
    )
    settings = BrokerSettings(home=tmp_path / "home", mvn=mvn, port=free_port(),
                              controller_port=free_port())
    with pytest.raises(BrokerError, match="Maven could not resolve.*Could not transfer"):
        Broker(settings).start()


def test_maven_missing_is_a_one_line_error(tmp_path: Path) -> None:
    settings = BrokerSettings(home=tmp_path / "home", mvn=str(tmp_path / "no-mvn"))
    with pytest.raises(BrokerError, match="Maven .* not found.*USER_KAFKA_LIBS"):
        Broker(settings).ensure_jars()


def _userctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=180,
    )


def test_userctl_broker_start_twice_stop_and_status(tmp_path: Path, kafka_libs: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "USER_KAFKA_BOOTSTRAP"},
        "USER_HOME": str(tmp_path / "home"), "USER_KAFKA_LIBS": str(kafka_libs),
        "USER_BROKER_PORT": str(free_port()), "USER_BROKER_CONTROLLER_PORT": str(free_port()),
        "USER_BROKER_HEAP": "512m",
    }
    try:
        first = _userctl("broker", "start", env=env)
        assert first.returncode == 0, first.stderr
        assert "is up" in first.stdout
        second = _userctl("broker", "start", env=env)
        assert second.returncode == 0 and "already running" in second.stdout
        status = _userctl("broker", "status", env=env)
        assert status.returncode == 0 and "answering" in status.stdout
        logs = _userctl("broker", "logs", "-n", "5", env=env)
        assert logs.returncode == 0 and logs.stdout.strip()
    finally:
        stop = _userctl("broker", "stop", env=env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    status = _userctl("broker", "status", env=env)
    assert status.returncode == 3 and "stopped" in status.stdout


def test_userctl_never_starts_a_broker_when_the_user_has_a_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "USER_HOME": str(tmp_path / "home"),
           "USER_KAFKA_BOOTSTRAP": "kafka.example.internal:9092"}
    out = _userctl("broker", "start", env=env)
    assert out.returncode == 0
    assert "using that cluster" in out.stdout
    assert not (tmp_path / "home" / "broker").exists()


def test_a_bad_setting_names_the_field(tmp_path: Path) -> None:
    env = {**os.environ, "USER_HOME": str(tmp_path / "home"), "USER_BROKER_PORT": "ninety"}
    out = _userctl("broker", "status", env=env)
    assert out.returncode == 2
    assert "port" in out.stderr and "Traceback" not in out.stderr
