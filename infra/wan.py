"""The WAN link between the edges and the cloud: mutual TLS (DESIGN §9).

The cloud broker gets one extra listener per site (``WAN_<SITE>``), SSL with a client
certificate required; each edge's MirrorMaker 2 dials it with its site's certificate —
outbound only, the edge listens on nothing the WAN can reach.  One listener per site so
each can advertise the address that edge dials (a WAN proxy, a NAT), which is what lets a
fault proxy sit in front of one site only.

Certificates come from :mod:`infra.pki` (the ``cryptography`` library), the same CA as
``userctl security init`` (``<home>/security/ca.pem``; every file there is named by
:class:`infra.security.Paths`): made if missing, reused if there.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra import pki
from infra.broker import BrokerError
from infra.security import Paths as Paths  # re-exported: the WAN certificates live there

#: The broker's WAN certificate's subject (edges check it by host name, not by CN).
CLOUD_CN = "user-cloud-wan"


def site_cn(site: str) -> str:
    """The principal an edge's MirrorMaker 2 authenticates as (``User:mm2-<site>``)."""
    return f"mm2-{site}"


@dataclass(frozen=True)
class WanListener:
    """One site's listener on the cloud broker: bound on ``port``, advertised as
    ``advertised`` (``host:port`` the edge dials; the broker's own address if None)."""

    site: str
    port: int
    advertised: str | None = None

    @property
    def name(self) -> str:
        return "WAN_" + re.sub(r"[^A-Za-z0-9]", "_", self.site).upper()


def parse_listeners(text: str) -> list[WanListener]:
    """``'lab-a=9192;lab-b=9193@proxy:29193'`` → listeners; raises ``BrokerError``."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]*)=(\d+)(?:@([^:@]+:\d+))?", part)
        if not m:
            raise BrokerError(f"USER_BROKER_WAN_LISTENERS: {part!r} is not site=port"
                              "[@host:port]; e.g. 'lab-a=9192;lab-b=9193'")
        out.append(WanListener(m.group(1), int(m.group(2)), m.group(3)))
    return out


def make_certs(home: Path, sites: Iterable[str], hosts: Sequence[str] = ()) -> list[Path]:
    """The CA (kept if it exists), the cloud broker's WAN keystore (valid for ``hosts``,
    127.0.0.1, localhost and this host's name) and a client certificate per site; only
    what is missing is made.  Returns the files made."""
    paths = Paths(home)
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    made: list[Path] = []
    if paths.ca.exists():
        ca = pki.CertificateAuthority.load(paths.dir)
    else:
        ca = pki.CertificateAuthority.create("USER cluster CA")
        ca.save(paths.dir)
        made.append(paths.ca)
    if not paths.wan_keystore.exists():
        names = tuple(dict.fromkeys([*hosts, "127.0.0.1", "localhost", socket.gethostname()]))
        issued = ca.issue(CLOUD_CN, sans=names, server=True, client=True)
        password = pki.new_password()
        pki.write_secret(paths.wan_keystore_password, password)
        pki.write_secret(paths.wan_keystore, pki.pkcs12(issued, password, ca))
        made.append(paths.wan_keystore)
    for site in sites:
        if not paths.site_cert(site).exists():
            issued = ca.issue(site_cn(site), client=True)
            pki.write_secret(paths.site_key(site), issued.key_pem)
            paths.site_cert(site).write_bytes(issued.cert_pem)
            made.append(paths.site_cert(site))
    return made


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def with_wan_listeners(server_properties: str, home: Path, host: str,
                       listeners: Sequence[WanListener]) -> str:
    """``server_properties`` plus one mutual-TLS listener per site."""
    paths = Paths(home)
    if not (paths.wan_keystore.exists() and paths.ca.exists()):
        raise BrokerError(f"no WAN certificates in {paths.dir}; run `userctl mirror certs "
                          "--sites lab-a,lab-b` on the cloud machine")
    password = pki.read_secret(paths.wan_keystore_password)
    props = _props(server_properties)
    extra: dict[str, str] = {
        "listeners": ",".join([props["listeners"],
                               *(f"{w.name}://{host}:{w.port}" for w in listeners)]),
        "advertised.listeners": ",".join([props["advertised.listeners"], *(
            f"{w.name}://{w.advertised or f'{host}:{w.port}'}" for w in listeners)]),
        "listener.security.protocol.map": ",".join([props["listener.security.protocol.map"],
                                                    *(f"{w.name}:SSL" for w in listeners)]),
    }
    for w in listeners:
        pre = f"listener.name.{w.name.lower()}."
        extra.update({
            pre + "ssl.client.auth": "required",
            pre + "ssl.keystore.type": "PKCS12",
            pre + "ssl.keystore.location": str(paths.wan_keystore),
            pre + "ssl.keystore.password": password,
            pre + "ssl.key.password": password,
            pre + "ssl.truststore.type": "PEM",
            pre + "ssl.truststore.location": str(paths.ca),
            pre + "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        })
    out, seen = [], set()
    for line in server_properties.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith(
            "#") else None
        if key in extra:
            out.append(f"{key}={extra[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += ["", "# WAN listeners (issue 15): written by infra/wan.py"]
    out += [f"{k}={v}" for k, v in extra.items() if k not in seen]
    return "\n".join(out) + "\n"
