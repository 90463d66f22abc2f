"""`userctl topics create|describe` against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from tests.conftest import adhoc_spec
from topics import admin, catalog
from topics.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[2]


def _userctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ), timeout=120)


def test_creating_the_catalog_twice_is_idempotent(kafka: KafkaSettings) -> None:
    first = admin.ensure_topics(kafka)
    second = admin.ensure_topics(kafka)
    assert {r.spec.name for r in first} == {s.name for s in catalog.CATALOG}
    assert all(r.state is admin.State.OK for r in second)
    for r in second:
        assert r.partitions_broker == r.spec.partition_count(kafka.sites)
        for key, value in r.spec.topic_configs().items():
            assert r.configs_broker[key] == value


def test_site_partitioned_topics_have_a_partition_per_site_slot(kafka: KafkaSettings) -> None:
    reports = {r.spec.name: r for r in admin.describe_topics(kafka)}
    assert reports[catalog.TRANSITIONS_RAW.name].partitions_broker == kafka.sites.partition_count


def test_drift_is_reported_then_fixed_with_alter(kafka: KafkaSettings, unique: str) -> None:
    spec = adhoc_spec(f"drift-{unique}", partitions=2)
    [created] = admin.ensure_topics(kafka, [spec])
    assert created.state is admin.State.CREATED

    client = admin.admin_client(kafka)
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, spec.name,
        incremental_configs=[ConfigEntry("retention.ms", "1234",
                                         incremental_operation=AlterConfigOpType.SET)],
    )
    for future in client.incremental_alter_configs([resource]).values():
        future.result(timeout=30)

    [drifted] = admin.ensure_topics(kafka, [spec])
    assert drifted.state is admin.State.DRIFT
    assert [(d.setting, d.spec, d.broker) for d in drifted.differences] == [
        ("retention.ms", "3600000", "1234")
    ]
    [fixed] = admin.ensure_topics(kafka, [spec], alter=True)
    assert fixed.state is admin.State.ALTERED
    [ok] = admin.describe_topics(kafka, [spec])
    assert ok.state is admin.State.OK


def test_missing_topics_are_described_as_missing(kafka: KafkaSettings, unique: str) -> None:
    [report] = admin.describe_topics(kafka, [adhoc_spec(f"absent-{unique}")])
    assert report.state is admin.State.MISSING and report.partitions_broker is None


def test_userctl_topics_create_and_describe(kafka: KafkaSettings) -> None:
    out = _userctl("topics", "create")
    assert out.returncode == 0, out.stderr
    for spec in catalog.CATALOG:
        assert spec.name in out.stdout
    described = _userctl("topics", "describe")
    assert described.returncode == 0, described.stderr
    assert "compact/compact" in described.stdout and "lab-a" in described.stdout


def test_userctl_topics_reports_an_unreachable_broker_in_one_line(unique: str) -> None:
    env = {**os.environ, "USER_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-m", "infra.cli", "topics", "describe"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 2
    assert "no Kafka broker answers at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr
