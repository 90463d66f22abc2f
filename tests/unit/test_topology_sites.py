"""infra/topology-sites.yaml is wired as one plane: each edge's MirrorMaker dials its
site's WAN proxy, the proxy forwards to the cloud's WAN listener for that site, the cloud
broker advertises the proxy to that site, agents talk only to their own edge broker; and
`userctl bench sites` runs the same wiring on free ports in a private directory."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from infra import supervisor, wan
from infra.bench import sites

TOPOLOGY = Path(__file__).resolve().parents[2] / "infra" / "topology-sites.yaml"
SITES = ("lab-a", "lab-b")


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def assert_one_plane(topo: supervisor.Topology) -> None:
    roles = topo.roles
    cloud_env = {**topo.env, **roles["broker-cloud"].env}
    listeners = {w.site: w for w in wan.parse_listeners(cloud_env["USER_BROKER_WAN_LISTENERS"])}
    proxy = roles["wan-proxy"].userctl or []
    proxies = dict(p.split("=", 1) for p in (proxy[i + 1] for i, a in enumerate(proxy)
                                             if a == "--proxy"))
    for site in SITES:
        listen, upstream = proxies[site].split(",")
        listener = listeners[site]
        assert upstream == f"127.0.0.1:{listener.port}", site
        assert listener.advertised == listen, site  # every connection crosses the proxy
        mm2 = roles[f"mirror-{site}"]
        args = mm2.userctl or []
        assert _arg(args, "--cloud") == listen, site
        edge = _arg(args, "--edge")
        broker_env = {**topo.env, **roles[f"broker-{site}"].env}
        assert edge == f"127.0.0.1:{broker_env['USER_BROKER_PORT']}", site
        assert {**topo.env, **roles[f"topics-{site}"].env}["USER_KAFKA_BOOTSTRAP"] == edge
        assert mm2.env["USER_HOME"] == broker_env["USER_HOME"], site
        agent = roles[f"agent-{site}-reacher"]
        assert _arg(agent.userctl or [], "--site") == site
        assert agent.env["USER_KAFKA_BOOTSTRAP"] == edge, f"{site}'s agents leave their site"
        assert agent.env["USER_HOME"] == broker_env["USER_HOME"], site
    for name in ("controller", "sink", "rewards", "learner"):
        env = {**topo.env, **roles[name].env}
        assert env["USER_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{cloud_env['USER_BROKER_PORT']}"
    ports = [topo.env["USER_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]]
    for name in ("broker-cloud", *(f"broker-{s}" for s in SITES)):
        env = roles[name].env
        ports += [env["USER_BROKER_PORT"], env["USER_BROKER_CONTROLLER_PORT"]]
    ports = ports[1:] + [str(w.port) for w in listeners.values()] + [
        v.split(",")[0].rsplit(":", 1)[1] for v in proxies.values()] + [
        _arg(proxy, "--api-port")]
    assert len(ports) == len(set(ports)), f"a port is used twice: {ports}"


def test_the_sites_topology_sends_every_wan_connection_through_its_sites_proxy() -> None:
    assert_one_plane(supervisor.load_topology(TOPOLOGY))


def test_the_bench_runs_the_same_plane_on_other_ports_in_a_private_directory(
        tmp_path: Path) -> None:
    counter = itertools.count(41000)
    data, ports = sites.private_topology(TOPOLOGY.read_text(), tmp_path, "exp-1",
                                         lambda: next(counter))
    out = tmp_path / "topology.yaml"
    out.write_text(yaml.safe_dump(data))
    topo = supervisor.load_topology(out)
    assert_one_plane(topo)
    assert set(ports.values()).isdisjoint(ports) and len(set(ports.values())) == len(ports)
    text = out.read_text()
    assert ".user/sites" not in text and "1909" not in text and "1919" not in text
    assert topo.roles["learner"].userctl == ["learn", "exp-1"]
    assert topo.env["USER_HOME"] == f"{tmp_path}/cloud"
    assert topo.roles["mirror-lab-a"].env["USER_MIRROR_SSL_CA"] == \
        f"{tmp_path}/cloud/security/ca.pem"
    assert sites.agent_counts(data) == {"lab-a": 2, "lab-b": 1}


@pytest.mark.parametrize("bad", ["lab-a", "lab-a=127.0.0.1:1", "=a,b"])
def test_a_malformed_proxy_argument_is_one_line_naming_the_form(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from infra import cli

    assert cli.main(["mirror", "proxy", "--proxy", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SITE=LISTEN,UPSTREAM" in err[0]
