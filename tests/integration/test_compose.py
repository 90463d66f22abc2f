"""infra/compose.yaml describes the same topology as infra/topology.yaml, on the official
Apache Kafka image; where a Docker engine exists it is brought up for real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
NOT_ROLES = {"kafka", "topics", "cli"}


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_runs_the_topology_roles_with_the_same_commands() -> None:
    topology = yaml.safe_load((INFRA / "topology.yaml").read_text())
    services = _compose()["services"]
    roles = {name: svc["command"] for name, svc in services.items() if name not in NOT_ROLES}
    assert roles == {name: role["userctl"] for name, role in topology["roles"].items()}
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_compose_pins_the_same_kafka_version_as_the_maven_build() -> None:
    from infra.broker import kafka_version

    assert _compose()["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}"


def _docker_engine() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return f"no Docker engine answers ({(out.stderr or out.stdout).strip()[:160]})"
    return None


def test_the_compose_topology_comes_up_where_docker_exists() -> None:
    why = _docker_engine()
    if why is not None:
        pytest.skip(f"compose topology not run: {why}")
    compose = ["docker", "compose", "-f", str(INFRA / "compose.yaml")]
    try:
        up = subprocess.run([*compose, "up", "-d", "--build", "kafka", "topics", "controller"],
                            capture_output=True, text=True, timeout=1800)
        assert up.returncode == 0, up.stderr[-2000:]
        topics = subprocess.run(
            [*compose, "exec", "-T", "kafka", "/opt/kafka/bin/kafka-topics.sh",
             "--bootstrap-server", "localhost:9092", "--list"],
            capture_output=True, text=True, timeout=300)
        assert "transitions.raw" in topics.stdout
    finally:
        subprocess.run([*compose, "down", "-v"], capture_output=True, timeout=600)
