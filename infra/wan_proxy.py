"""WAN faults between an edge and the cloud: Toxiproxy (Shopify's TCP fault proxy).

One ``toxiproxy-server`` (bound to 127.0.0.1) holds a proxy per site in front of the
cloud's WAN listener for that site; the broker advertises the proxy's address
(``USER_BROKER_WAN_LISTENERS='lab-a=9192@127.0.0.1:29192'``), so every connection the
edge's MirrorMaker makes — bootstrap and after — crosses it.  Faults are Toxiproxy's
"toxics" (latency, bandwidth) and disabling a proxy (a cut: connections drop, new ones are
refused) until it is enabled again (healed).

A process topology runs the server as a role (``userctl mirror proxy``, proxies from a
``-config`` file, :func:`write_config`) and ``userctl mirror cut|heal`` drive it through
:class:`ToxiproxyApi`.  The server is built from the Go module proxy once (``go install``, pinned by
:data:`VERSION`) into ``<home>/bin``; later calls find it there or on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.broker import BrokerError

#: The Toxiproxy release built from the Go module proxy.
VERSION = "v2.5.0"
MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
BINARY = "toxiproxy-server"
#: Toxiproxy's own default API port.
API_PORT = 8474


def ensure_server(home: Path) -> Path:
    """The ``toxiproxy-server`` binary: on PATH, in ``<home>/bin``, or built there with
    ``go install`` (idempotent)."""
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    target = home / "bin" / BINARY
    if target.exists():
        return target
    go = shutil.which("go") or ("/usr/local/go/bin/go"
                                if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise BrokerError("toxiproxy-server is not installed and Go is missing to build it; "
                          "install Go (apt-get install golang) or put toxiproxy-server on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as gobin:
        proc = subprocess.run([go, "install", f"{MODULE}@{VERSION}"],
                              env={**os.environ, "GOBIN": gobin}, capture_output=True,
                              text=True, timeout=1200)
        built = Path(gobin) / "server"
        if proc.returncode != 0 or not built.exists():
            raise BrokerError(f"`go install {MODULE}@{VERSION}` failed: "
                              f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        shutil.move(str(built), target)
    return target


def write_config(path: Path, proxies: dict[str, tuple[str, str]]) -> Path:
    """A ``toxiproxy-server -config`` file: proxy name -> (listen, upstream), both
    host:port; the server creates them enabled at start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"name": name, "listen": listen, "upstream": upstream,
                                 "enabled": True}
                                for name, (listen, upstream) in proxies.items()], indent=2))
    return path


class ToxiproxyApi:
    """The HTTP API of a running ``toxiproxy-server`` on 127.0.0.1:``port`` (started here
    by :class:`Toxiproxy`, or by a topology's ``userctl mirror proxy`` role)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.api = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def proxy(self, name: str, listen: str, upstream: str) -> None:
        """A proxy from ``listen`` to ``upstream`` (both host:port)."""
        self._call("POST", "/proxies", {"name": name, "listen": listen,
                                        "upstream": upstream, "enabled": True})

    def cut(self, name: str) -> None:
        """Drop every connection of proxy ``name`` and refuse new ones."""
        self._call("POST", f"/proxies/{name}", {"enabled": False})

    def heal(self, name: str) -> None:
        self._call("POST", f"/proxies/{name}", {"enabled": True})

    def toxic(self, name: str, kind: str, stream: str, **attributes: int) -> None:
        """Add toxic ``kind`` (latency, bandwidth, …) to one direction of proxy ``name``
        (``stream``: ``upstream`` = edge→cloud, ``downstream`` = cloud→edge)."""
        self._call("POST", f"/proxies/{name}/toxics",
                   {"name": f"{kind}-{stream}", "type": kind, "stream": stream,
                    "toxicity": 1.0, "attributes": attributes})

    def clear(self, name: str) -> None:
        """Remove every toxic of proxy ``name``."""
        toxics = self._call("GET", f"/proxies/{name}/toxics")
        for t in toxics if isinstance(toxics, list) else []:
            self._call("DELETE", f"/proxies/{name}/toxics/{t['name']}")

    def proxies(self) -> dict[str, bool]:
        """Proxy name -> enabled."""
        got = self._call("GET", "/proxies")
        return {str(k): bool(v.get("enabled")) for k, v in got.items()} \
            if isinstance(got, dict) else {}


class Toxiproxy(ToxiproxyApi):
    """A ``toxiproxy-server`` started (and stopped) by this process, and its API."""

    def __init__(self, binary: Path, port: int, log: Path) -> None:
        super().__init__(port)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(binary), "-host", "127.0.0.1", "-port", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/proxies")
                return
            except (OSError, ValueError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"toxiproxy-server did not answer on {self.api}; "
                                      f"see {log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
