"""The edge's MirrorMaker 2 configuration and the cloud's WAN listeners, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import mirror, wan
from infra.broker import BrokerError
from topics import catalog


def props(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (
        line.split("=", 1) for line in text.splitlines()
        if "=" in line and not line.startswith("#"))}


def settings(**extra: object) -> mirror.MirrorSettings:
    return mirror.MirrorSettings(site="lab-a", edge_bootstrap="127.0.0.1:9192",
                                 cloud_bootstrap="cloud:9094", **extra)  # type: ignore[arg-type]


def test_site_data_goes_up_and_what_robots_need_comes_down_and_nothing_both_ways() -> None:
    conf = props(mirror.mm2_properties(settings()))
    assert conf["clusters"] == "cloud, lab-a"
    assert conf["lab-a->cloud.topics"] == r"transitions\.raw|episodes|heartbeats|robots"
    assert conf["cloud->lab-a.topics"] == (
        r"weights|weights\.manifests|assignments|commands|experiments")
    # Identity names cannot tell a copy from an original: disjoint flows keep it acyclic.
    assert not {t.name for t in mirror.UP} & {t.name for t in mirror.DOWN}


def test_a_restarted_or_reconnected_edge_takes_its_tasks_back_at_once() -> None:
    # Connect holds a departed worker's tasks for scheduled.rebalance.max.delay.ms (5 min by
    # default); an edge's MM2 killed, or cut off long enough to lose its group membership,
    # comes back as a new member and would copy nothing for those minutes.
    conf = props(mirror.mm2_properties(settings()))
    # MM2 hands a flow's worker only the settings prefixed with its target cluster.
    for cluster in ("cloud", "lab-a"):
        assert int(conf[f"{cluster}.scheduled.rebalance.max.delay.ms"]) <= 10_000
    assert conf["producer.delivery.timeout.ms"] == str(2**31 - 1)  # a cut delays, never drops


def test_topic_names_are_kept_and_mm2_heartbeats_never_take_ours() -> None:
    conf = props(mirror.mm2_properties(settings()))
    assert conf["replication.policy.class"] == mirror.POLICY
    assert conf["heartbeats.replication.enabled"] == "false"
    source = mirror.POLICY_SOURCE.read_text()
    assert '"mm2-heartbeats"' in source and catalog.HEARTBEATS.name != "mm2-heartbeats"


def test_site_partitioned_topics_merge_without_collisions_in_the_cloud() -> None:
    # Each site owns its partitions and MM2 keeps a record's partition number: the
    # up-flowing topics are site-partitioned, or keyed by robot id (robots: compacted).
    for spec in mirror.UP:
        assert spec.site_partitioned or spec.key is catalog.Key.ROBOT_ID, spec.name


def test_the_wan_is_mutual_tls_when_asked_and_refuses_to_start_without_certificates(
        tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="userctl mirror certs"):
        mirror.mm2_properties(settings(cloud_security_protocol="SSL"))
    wan.make_certs(tmp_path, ["lab-a"])
    conf = props(mirror.mm2_properties(settings().with_tls(tmp_path)))
    assert conf["cloud.security.protocol"] == "SSL"
    assert conf["cloud.ssl.truststore.location"] == str(wan.Paths(tmp_path).ca.resolve())
    keystore = Path(conf["cloud.ssl.keystore.location"])
    assert "PRIVATE KEY" in keystore.read_text() and "CERTIFICATE" in keystore.read_text()
    assert "lab-a.security.protocol" not in conf  # the site's own broker stays local


def test_wan_listeners_parse_and_demand_client_certificates(tmp_path: Path) -> None:
    listeners = wan.parse_listeners("lab-a=9192;lab-b=9193@proxy.example:29193")
    assert [(w.name, w.port, w.advertised) for w in listeners] == [
        ("WAN_LAB_A", 9192, None), ("WAN_LAB_B", 9193, "proxy.example:29193")]
    with pytest.raises(BrokerError, match="site=port"):
        wan.parse_listeners("lab-a:9192")
    base = ("listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n"
            "advertised.listeners=PLAINTEXT://127.0.0.1:9092\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n")
    with pytest.raises(BrokerError, match="mirror certs"):
        wan.with_wan_listeners(base, tmp_path, "127.0.0.1", listeners)
    made = wan.make_certs(tmp_path, ["lab-a", "lab-b"])
    assert wan.make_certs(tmp_path, ["lab-a", "lab-b"]) == []  # idempotent
    assert wan.Paths(tmp_path).site_cert("lab-b") in made
    conf = props(wan.with_wan_listeners(base, tmp_path, "127.0.0.1", listeners))
    assert conf["listeners"].endswith("WAN_LAB_A://127.0.0.1:9192,WAN_LAB_B://127.0.0.1:9193")
    assert conf["advertised.listeners"].endswith(
        "WAN_LAB_A://127.0.0.1:9192,WAN_LAB_B://proxy.example:29193")
    assert "WAN_LAB_A:SSL" in conf["listener.security.protocol.map"]
    assert conf["listener.name.wan_lab_a.ssl.client.auth"] == "required"
