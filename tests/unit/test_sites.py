"""The site → partitions map keeps each site's traffic on its own partitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from topics.settings import KafkaSettings, SiteMap, UnknownSiteError, parse_sites


def test_default_map_gives_two_sites_disjoint_partitions() -> None:
    sites = SiteMap()
    assert set(sites.partitions_of("lab-a")).isdisjoint(sites.partitions_of("lab-b"))
    assert sites.partition_count == 4


@given(robot=st.text(min_size=1, max_size=40))
def test_a_robot_always_lands_on_one_partition_of_its_own_site(robot: str) -> None:
    sites = SiteMap(sites={"lab-a": (0, 1), "lab-b": (2, 3, 4)})
    for site in ("lab-a", "lab-b"):
        p = sites.partition_for(site, robot)
        assert p in sites.partitions_of(site)
        assert sites.partition_for(site, robot) == p
        assert sites.site_of(p) == site


def test_robots_of_a_site_spread_over_its_partitions() -> None:
    sites = SiteMap(sites={"lab-a": (0, 1, 2, 3)})
    used = {sites.partition_for("lab-a", f"robot-{i}") for i in range(64)}
    assert used == {0, 1, 2, 3}


def test_partition_choice_is_stable_across_processes() -> None:
    # CRC-32, not Python's salted hash(): these values must never change, or a robot's
    # records would move partitions (and lose their order) after a restart.
    sites = SiteMap(sites={"s": (0, 1, 2, 3, 4, 5, 6)})
    got = [sites.partition_for("s", r) for r in ("r1", "r2", "arm-7", "reacher-0")]
    assert got == [2, 0, 4, 5]  # pinned when the map was written


def test_unknown_site_error_says_how_to_add_it() -> None:
    with pytest.raises(UnknownSiteError, match="USER_KAFKA_SITES"):
        SiteMap().partition_for("lab-z", "r1")


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ({"a": (0,), "b": (0,)}, "both"),
        ({"a": (0,), "b": (2,)}, "belong to no site"),
        ({"a": ()}, "no partitions"),
        ({}, "empty"),
        ({"a/b": (0,)}, "'/'"),
    ],
)
def test_inconsistent_site_maps_are_refused_with_the_reason(
    sites: dict[str, tuple[int, ...]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        SiteMap(sites=sites)


def test_sites_come_from_the_environment_in_either_syntax(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USER_KAFKA_SITES", "north=0,1; south=2")
    assert KafkaSettings().sites.sites == {"north": (0, 1), "south": (2,)}
    monkeypatch.setenv("USER_KAFKA_SITES", '{"north": [0], "south": [1, 2]}')
    assert KafkaSettings().sites.partition_count == 3


def test_a_bad_sites_setting_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_KAFKA_SITES", "north=0;south=0")
    with pytest.raises(ValidationError, match="sites"):
        KafkaSettings()
    with pytest.raises(ValueError, match="site=p1,p2"):
        parse_sites("north")


def test_bootstrap_comes_from_user_kafka_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    s = KafkaSettings()
    assert s.producer_config()["bootstrap.servers"] == "kafka-1:9092,kafka-2:9092"
    assert s.faust_broker_url() == "kafka://kafka-1:9092;kafka-2:9092"
    assert s.aiokafka_kwargs()["bootstrap_servers"] == "kafka-1:9092,kafka-2:9092"


def test_secrets_are_redacted_when_settings_are_logged() -> None:
    s = KafkaSettings(sasl_username="u", sasl_password="hunter2")
    assert "hunter2" not in repr(s.redacted())
