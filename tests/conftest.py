"""Test tiers and the shared Kafka broker.

* ``tests/unit`` — no processes, no network.
* ``tests/integration`` — real Kafka broker: the session fixture ``kafka`` uses the
  broker at ``USER_KAFKA_BOOTSTRAP`` (default 127.0.0.1:9092) when one answers, and
  otherwise starts a private one on free ports in a temporary ``USER_HOME``, creates the
  catalog's topics, and stops it at the end of the session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from infra.broker import Broker, BrokerSettings, answers_metadata
from topics import admin
from topics.catalog import Cleanup, Key, TopicSpec, Value
from topics.settings import KafkaSettings

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (TESTS / "integration") in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The Kafka jars, resolved once into the default state directory's cache."""
    return Broker(BrokerSettings()).ensure_jars()


def make_broker(home: Path, libs: Path, **overrides: object) -> Broker:
    """A broker of its own, in ``home``, on free ports, sharing the jar cache."""
    settings = BrokerSettings(
        home=home, libs=libs, port=free_port(), controller_port=free_port(),
        heap="512m", offsets_partitions=3, **overrides,
    )
    return Broker(settings)


def catalog_broker(home: Path, libs: Path) -> Iterator[KafkaSettings]:
    """A started broker of its own in ``home`` with the catalog created, stopped when the
    generator is closed (``yield from`` it in a fixture)."""
    broker = make_broker(home, libs)
    broker.start()
    try:
        settings = KafkaSettings(bootstrap=broker.settings.bootstrap)
        admin.ensure_topics(settings)
        yield settings
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path) -> Iterator[KafkaSettings]:
    """KafkaSettings of a live broker holding the whole catalog."""
    settings = KafkaSettings()
    started: Broker | None = None
    if not answers_metadata(settings.bootstrap, timeout_s=3.0):
        started = make_broker(tmp_path_factory.mktemp("kafka-home"), kafka_libs)
        started.start()
        settings = KafkaSettings(bootstrap=started.settings.bootstrap)
    # Processes a test spawns (userctl …, infra/bin/…) find the same broker.
    previous = os.environ.get("USER_KAFKA_BOOTSTRAP")
    os.environ["USER_KAFKA_BOOTSTRAP"] = settings.bootstrap
    admin.ensure_topics(settings)
    try:
        yield settings
    finally:
        if previous is None:
            os.environ.pop("USER_KAFKA_BOOTSTRAP", None)
        else:
            os.environ["USER_KAFKA_BOOTSTRAP"] = previous
        if started is not None:
            started.stop()


@pytest.fixture
def private_broker(tmp_path: Path, kafka_libs: Path) -> Iterator[Broker]:
    """A broker of this test's own (not started), stopped at teardown if running."""
    broker = make_broker(tmp_path / "home", kafka_libs)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:10]


def adhoc_spec(name: str, partitions: int = 1) -> TopicSpec:
    """A throw-away topic spec for a test (never one of the catalog's names)."""
    return TopicSpec(
        name=name, key=Key.ROBOT_ID, value=Value.BINARY, partitions=partitions,
        cleanup=Cleanup.DELETE, retention_ms=3_600_000, max_message_bytes=1024 * 1024,
        description="test topic",
    )


def create_topic(settings: KafkaSettings, name: str, partitions: int = 1) -> TopicSpec:
    """Create a throw-away topic through the same admin code the catalog uses."""
    spec = adhoc_spec(name, partitions)
    admin.ensure_topics(settings, [spec])
    return spec


class Processes:
    """Processes a test starts (``userctl …``), killed at teardown; logs under tmp."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def userctl(self, name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *args], stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=REPO, start_new_session=True,
        )
        self.running.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
        for proc in self.running:
            proc.wait(timeout=30)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
