"""`userctl mirror run|config|lag|certs|proxy|cut|heal` — MirrorMaker 2 at an edge
(infra/mirror.py), its WAN certificates (infra/wan.py) and the WAN fault proxy in front of
the cloud's WAN listeners (infra/wan_proxy.py)."""

from __future__ import annotations

import argparse
import os
import sys

from infra import mirror, wan, wan_proxy
from infra.broker import BrokerSettings, default_home
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mirror", help="MirrorMaker 2 between a site's broker and the cloud's")
    msub = p.add_subparsers(dest="mirror_cmd", required=True)
    for name, func, text in (
        ("run", _run, "run this edge's MirrorMaker 2 in the foreground (outbound only)"),
        ("config", _config, "print the mm2.properties `run` would use"),
        ("lag", _lag, "records not yet mirrored, per topic and direction"),
    ):
        s = msub.add_parser(name, help=text)
        s.add_argument("--site", help="this edge's site (USER_MIRROR_SITE)")
        s.add_argument("--edge", help="the site's broker host:port (USER_MIRROR_EDGE_BOOTSTRAP)")
        s.add_argument("--cloud", help="the cloud broker host:port (USER_MIRROR_CLOUD_BOOTSTRAP)")
        s.add_argument("--tls", action="store_true",
                       help="dial the cloud with mutual TLS, with this site's certificate "
                       "from <home>/security (`userctl mirror certs`)")
        s.set_defaults(func=func)
    s = msub.add_parser("certs", help="make the WAN CA (or reuse `security init`'s), the "
                        "cloud broker's WAN keystore and a client certificate per site")
    s.add_argument("--sites", required=True, help="comma-separated site names")
    s.add_argument("--host", action="append", default=[],
                   help="a name or address edges dial the cloud by (repeatable)")
    s.set_defaults(func=_certs)
    s = msub.add_parser("proxy", help="run the WAN fault proxy (Toxiproxy) in the foreground: "
                        "one proxy per site in front of the cloud's WAN listener")
    s.add_argument("--api-port", type=int, default=wan_proxy.API_PORT,
                   help=f"its HTTP API on 127.0.0.1 (default {wan_proxy.API_PORT})")
    s.add_argument("--proxy", action="append", required=True, metavar="SITE=LISTEN,UPSTREAM",
                   help="a site's proxy: listen host:port, upstream host:port (repeatable)")
    s.set_defaults(func=_proxy)
    for name, func, text in (("cut", _cut, "cut a site's WAN link at the proxy (connections "
                              "drop, new ones are refused)"),
                             ("heal", _heal, "heal a site's WAN link cut by `mirror cut`")):
        s = msub.add_parser(name, help=text)
        s.add_argument("--site", required=True)
        s.add_argument("--api-port", type=int, default=wan_proxy.API_PORT)
        s.set_defaults(func=func)


def _settings(args: argparse.Namespace) -> mirror.MirrorSettings:
    given = {k: v for k, v in (("site", args.site), ("edge_bootstrap", args.edge),
                               ("cloud_bootstrap", args.cloud)) if v}
    settings = mirror.MirrorSettings(**given)
    return settings.with_tls(BrokerSettings().home) if args.tls else settings


def _certs(args: argparse.Namespace) -> int:
    home = BrokerSettings().home
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    made = wan.make_certs(home, sites, hosts=args.host)
    for path in made:
        print(f"made {path}")
    if not made:
        print(f"the WAN certificates in {wan.Paths(home).dir} are all there")
    return 0


def _run(args: argparse.Namespace) -> int:
    mm = mirror.Mirror(_settings(args))
    mm.ensure_jars(say=lambda m: print(m, file=sys.stderr, flush=True))
    argv = mm.argv()
    s = mm.settings
    print(f"MirrorMaker 2 for site {s.site}: {s.site}->{mirror.CLOUD} "
          f"[{', '.join(t.name for t in mirror.UP)}], {mirror.CLOUD}->{s.site} "
          f"[{', '.join(t.name for t in mirror.DOWN)}]; cloud {s.cloud_bootstrap} "
          f"({s.cloud_security_protocol}); log {mm.log_file}", flush=True)
    os.execv(argv[0], argv)  # the supervisor's signals reach the JVM itself
    return 0  # pragma: no cover


def _config(args: argparse.Namespace) -> int:
    print(mirror.mm2_properties(_settings(args)), end="")
    return 0


def site_lag(site: str, edge: str, cloud: str) -> tuple[mirror.FlowLag, mirror.FlowLag]:
    """Both flows' lag of one site; ``cloud`` is an address the caller reaches the
    cloud broker by (its local listener on the cloud machine)."""
    sites = KafkaSettings().sites
    up_parts = {t.name: sites.partitions_of(site) if t.site_partitioned
                else tuple(range(t.partitions or 1)) for t in mirror.UP}
    up = mirror.flow_lag(edge, cloud, site, site, "up", mirror.UP, up_parts)
    down = mirror.flow_lag(cloud, edge, mirror.CLOUD, site, "down", mirror.DOWN)
    return up, down


def lag_lines(flows: tuple[mirror.FlowLag, ...]) -> list[str]:
    out = []
    for flow in flows:
        per = ", ".join(f"{t} {'?' if n is None else n}" for t, n in flow.records.items()
                        if n)
        total = "?" if flow.total is None else str(flow.total)
        out.append(f"{flow.site} {flow.direction:4} {total} records behind"
                   f"{f' ({per})' if per else ''}")
    return out


def _lag(args: argparse.Namespace) -> int:
    s = _settings(args)
    for line in lag_lines(site_lag(s.site, s.edge_bootstrap, s.cloud_bootstrap)):
        print(line)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    proxies: dict[str, tuple[str, str]] = {}
    for item in args.proxy:
        site, _, ends = item.partition("=")
        listen, _, upstream = ends.partition(",")
        if not (site and listen and upstream):
            print(f"userctl: --proxy {item!r}: expected SITE=LISTEN,UPSTREAM "
                  "(e.g. lab-a=127.0.0.1:19096,127.0.0.1:19094)", file=sys.stderr)
            return 2
        proxies[site] = (listen, upstream)
    # The binary is shared by every home of this checkout (built once by `go install`).
    binary = wan_proxy.ensure_server(default_home())
    config = wan_proxy.write_config(BrokerSettings().home / "wan-proxy.json", proxies)
    print(f"WAN proxy (toxiproxy {wan_proxy.VERSION}) API 127.0.0.1:{args.api_port}: "
          + ", ".join(f"{s} {a} -> {b}" for s, (a, b) in proxies.items()), flush=True)
    argv = [str(binary), "-host", "127.0.0.1", "-port", str(args.api_port),
            "-config", str(config)]
    os.execv(argv[0], argv)  # the supervisor's signals reach the server itself
    return 0  # pragma: no cover


def _cut(args: argparse.Namespace) -> int:
    wan_proxy.ToxiproxyApi(args.api_port).cut(args.site)
    print(f"{args.site}: WAN link cut")
    return 0


def _heal(args: argparse.Namespace) -> int:
    wan_proxy.ToxiproxyApi(args.api_port).heal(args.site)
    print(f"{args.site}: WAN link healed")
    return 0
