"""A whole edge–cloud plane on one machine, as processes: a Kafka broker for the cloud and
one per site on free ports, the cloud's mutual-TLS WAN listener per site, a WAN proxy per
site in front of it, and MirrorMaker 2 at each edge dialling the proxy (DESIGN §9).

Used by the integration tests and ``userctl bench wan``; ``userctl up
infra/topology-sites.yaml`` runs the same layout under the supervisor on fixed ports.
The proxy is Toxiproxy (faults: :mod:`infra.wan_proxy`) or a byte-counting relay
(:class:`CountingRelay`, for measuring what crosses the WAN).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from infra import mirror, wan, wan_proxy
from infra.broker import REPO, Broker, BrokerSettings, default_home
from topics import admin
from topics.settings import KafkaSettings

DEFAULT_SITES = ("lab-a", "lab-b")
SITE_MAP = "lab-a=0,1;lab-b=2,3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the bytes it carries each way
    (``up``: client → server, i.e. edge → cloud; ``down``: the reverse)."""

    def __init__(self, listen_port: int, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", listen_port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if way == "up":
                        self.up += len(data)
                    else:
                        self.down += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def close(self) -> None:
        self._closed = True
        self._server.close()


class LocalPlane:
    """Brokers, WAN listeners, proxies and MirrorMakers under ``root``; :meth:`stop` ends
    everything it started."""

    def __init__(self, root: Path, *, sites: Sequence[str] = DEFAULT_SITES,
                 site_map: str = SITE_MAP, proxy: Literal["toxiproxy", "count"] = "toxiproxy",
                 libs: Path | None = None, broker_heap: str = "512m",
                 mirror_heap: str = "256m") -> None:
        self.root = root
        self.sites = tuple(sites)
        self.site_map = site_map
        self.mirror_heap = mirror_heap
        self.libs = libs or Broker(BrokerSettings()).ensure_jars()
        wan.make_certs(root / mirror.CLOUD, self.sites)
        self.wan_ports = {site: free_port() for site in self.sites}
        self.proxy_ports = {site: free_port() for site in self.sites}
        self.toxiproxy: wan_proxy.Toxiproxy | None = None
        self.relays: dict[str, CountingRelay] = {}
        listeners = ";".join(f"{s}={p}@127.0.0.1:{self.proxy_ports[s]}"
                             for s, p in self.wan_ports.items())

        def broker(name: str, **extra: object) -> Broker:
            return Broker(BrokerSettings(
                home=root / name, libs=self.libs, port=free_port(),
                controller_port=free_port(), heap=broker_heap, offsets_partitions=3,
                **extra))  # type: ignore[arg-type]

        self.brokers = {mirror.CLOUD: broker(mirror.CLOUD, wan_listeners=listeners)}
        self.brokers.update({site: broker(site) for site in self.sites})
        self.proxy_kind = proxy
        self.mirrors: dict[str, subprocess.Popen[bytes]] = {}

    def kafka(self, name: str) -> KafkaSettings:
        return KafkaSettings(bootstrap=self.brokers[name].settings.bootstrap,
                             sites=self.site_map)

    def env(self, name: str) -> dict[str, str]:
        """The environment of a process at ``name`` (a site or the cloud)."""
        return {**os.environ, "USER_HOME": str(self.root / name),
                "USER_KAFKA_BOOTSTRAP": self.brokers[name].settings.bootstrap,
                "USER_KAFKA_SITES": self.site_map, "USER_KAFKA_LIBS": str(self.libs),
                "PYTHONPATH": str(REPO)}

    def start(self) -> None:
        for b in self.brokers.values():
            b.start()
        for name in self.brokers:
            admin.ensure_topics(self.kafka(name))
        if self.proxy_kind == "toxiproxy":
            self.toxiproxy = wan_proxy.Toxiproxy(wan_proxy.ensure_server(default_home()),
                                                 free_port(), self.root / "toxiproxy.log")
            for site in self.sites:
                self.toxiproxy.proxy(site, f"127.0.0.1:{self.proxy_ports[site]}",
                                     f"127.0.0.1:{self.wan_ports[site]}")
        else:
            for site in self.sites:
                self.relays[site] = CountingRelay(self.proxy_ports[site],
                                                  ("127.0.0.1", self.wan_ports[site]))
        for site in self.sites:
            self.start_mirror(site)

    def start_mirror(self, site: str) -> None:
        certs = wan.Paths(self.root / mirror.CLOUD)  # copied to the edge, in real life
        env = {**self.env(site), "USER_MIRROR_HEAP": self.mirror_heap,
               "USER_MIRROR_CLOUD_SECURITY_PROTOCOL": "SSL",
               "USER_MIRROR_SSL_CA": str(certs.ca),
               "USER_MIRROR_SSL_CERT": str(certs.site_cert(site)),
               "USER_MIRROR_SSL_KEY": str(certs.site_key(site))}
        with (self.root / f"mirror-{site}.out").open("ab") as log:
            self.mirrors[site] = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "mirror", "run", "--site", site,
                 "--edge", self.brokers[site].settings.bootstrap,
                 "--cloud", f"127.0.0.1:{self.proxy_ports[site]}"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True)

    def mirror_log(self, site: str) -> str:
        out = self.root / site / "logs" / f"mirror-{site}.log"
        return out.read_text(errors="replace") if out.exists() else ""

    def kill_mirror(self, site: str) -> None:
        """SIGKILL a site's MirrorMaker (it flushes nothing on the way out)."""
        proc = self.mirrors.pop(site)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def stop(self) -> None:
        for proc in self.mirrors.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.mirrors.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for b in self.brokers.values():
            b.stop()
        if self.toxiproxy is not None:
            self.toxiproxy.stop()
        for relay in self.relays.values():
            relay.close()
