"""The topic catalog: every DESIGN §2 topic is declared once, with consistent settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from topics import catalog
from topics.catalog import Cleanup, Key, TopicSpec, Value
from topics.settings import SiteMap

REPO = Path(__file__).resolve().parents[2]


def test_catalog_declares_every_topic_of_the_design_once() -> None:
    names = [s.name for s in catalog.CATALOG]
    assert len(names) == len(set(names))
    design = {
        "robots", "heartbeats", "experiments", "assignments", "transitions.raw",
        "transitions", "episodes", "weights", "weights.manifests", "commands", "dlq",
    }
    assert design <= set(names)


def test_control_topics_keyed_by_id_are_compacted_and_kept_forever() -> None:
    for spec in (catalog.ROBOTS, catalog.EXPERIMENTS, catalog.ASSIGNMENTS,
                 catalog.WEIGHTS_MANIFESTS):
        assert spec.cleanup is Cleanup.COMPACT
        assert spec.value is Value.JSON
        assert spec.retention_ms == catalog.FOREVER


def test_data_topics_are_partitioned_by_site_and_keyed_by_site_robot() -> None:
    for spec in (catalog.TRANSITIONS_RAW, catalog.TRANSITIONS, catalog.EPISODES):
        assert spec.site_partitioned
        assert spec.key is Key.SITE_ROBOT
        assert spec.cleanup is Cleanup.DELETE
    assert catalog.TRANSITIONS_RAW.value is Value.ARROW


def test_dead_letters_fit_the_largest_record_they_may_carry() -> None:
    largest = max(s.max_message_bytes for s in catalog.CATALOG if s is not catalog.DLQ)
    # base64 of the original bytes plus the JSON envelope
    assert catalog.DLQ.max_message_bytes >= largest * 4 // 3 + 64 * 1024


def test_partition_count_follows_the_site_map_for_site_partitioned_topics() -> None:
    sites = SiteMap(sites={"a": (0, 1, 2), "b": (3,)})
    assert catalog.TRANSITIONS_RAW.partition_count(sites) == 4
    assert catalog.ROBOTS.partition_count(sites) == 1
    assert catalog.ROBOTS.partition_for(sites, "a", "r1") is None
    assert catalog.TRANSITIONS_RAW.partition_for(sites, "b", "r1") == 3


def test_topic_configs_are_what_the_broker_reports() -> None:
    assert catalog.ROBOTS.topic_configs() == {
        "cleanup.policy": "compact", "retention.ms": "-1", "max.message.bytes": "1048576",
    }


def test_spec_lookup_names_the_known_topics_when_missing() -> None:
    assert catalog.spec("dlq") is catalog.DLQ
    with pytest.raises(KeyError, match="transitions.raw"):
        catalog.spec("transitons")


@pytest.mark.parametrize("name", ["", "Robots", "a b", "x" * 201, "1robots"])
def test_bad_topic_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        TopicSpec(name=name, key=Key.ROBOT_ID, value=Value.JSON, partitions=1,
                  cleanup=Cleanup.DELETE, retention_ms=1, max_message_bytes=1, description="")


def test_specs_are_frozen() -> None:
    with pytest.raises(ValidationError):
        catalog.ROBOTS.partitions = 5  # type: ignore[misc]


def test_librdkafka_keys_are_spelled_only_in_topics_settings() -> None:
    keys = ("bootstrap.servers", "group.id", "enable.idempotence", "isolation.level",
            "transactional.id", "auto.offset.reset")
    pattern = re.compile("|".join(re.escape(f'"{k}"') for k in keys))
    offenders = []
    for folder in ("schemas", "topics", "agents", "learners", "pipeline", "infra"):
        for path in (REPO / folder).rglob("*.py"):
            if path == REPO / "topics" / "settings.py":
                continue
            if pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
