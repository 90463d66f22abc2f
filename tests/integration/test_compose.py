"""infra/compose.yaml describes the same edge–cloud topology as infra/topology-sites.yaml,
with the cloud and each site on their own Docker networks (it is brought up for real by
tests/e2e/test_docker_sites.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
SITES = ("lab-a", "lab-b")


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _topology() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((INFRA / "topology-sites.yaml").read_text())


def test_compose_runs_the_process_topologys_roles_with_the_same_commands() -> None:
    services = _compose()["services"]
    for name, role in _topology()["roles"].items():
        args = role["userctl"]
        if name == "wan-proxy":  # Docker cuts a site by `docker network disconnect`
            continue
        if name.startswith(("broker-", "topics-", "mirror-")) or name == "certs":
            kind = {"broker": "kafka", "topics": "topics", "mirror": "mm2"}.get(
                name.split("-")[0], name)
            twin = services[name.replace(name.split("-")[0], kind, 1)]
            assert twin["command"][:2] == args[:2], name
        else:
            assert services[name]["command"] == args, name


def test_each_site_is_its_own_network_and_only_its_mirror_reaches_the_cloud() -> None:
    services = _compose()["services"]
    assert set(_compose()["networks"]) == {"cloud", *SITES, *(f"wan-{s}" for s in SITES)}
    for name, svc in services.items():
        assert "ports" not in svc and "expose" not in svc, f"{name} publishes a port"
        nets = set(svc.get("networks", []))
        site = next((s for s in SITES if name.endswith(s) or f"-{s}-" in name), None)
        if name.startswith("mm2-"):
            assert nets == {site, f"wan-{site}"}, name
        elif name == "kafka-cloud":
            assert nets == {"cloud", *(f"wan-{s}" for s in SITES)}
        elif name in ("cli", "certs"):
            continue
        elif site is not None:
            assert nets == {site}, name
        else:
            assert nets == {"cloud"}, name


def test_the_edges_dial_the_cloud_with_mutual_tls_on_their_own_wan_listener() -> None:
    services = _compose()["services"]
    listeners = services["kafka-cloud"]["environment"]["USER_BROKER_WAN_LISTENERS"]
    for i, site in enumerate(SITES):
        mm2 = services[f"mm2-{site}"]
        assert mm2["environment"]["USER_MIRROR_CLOUD_SECURITY_PROTOCOL"] == "SSL"
        port = mm2["command"][mm2["command"].index("--cloud") + 1].split(":")[1]
        assert f"{site}={port}@kafka-cloud:{port}" in listeners.split(";")[i]
