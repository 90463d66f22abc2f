"""The WAN proxy as a topology role: `userctl mirror proxy` serves each site's proxy from
the start, and `userctl mirror cut|heal` take a site's link down and back up."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.broker import REPO
from infra.plane import free_port


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture()
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def through(port: int) -> bool:
    """True when a round trip through 127.0.0.1:``port`` comes back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
    except OSError:
        return False


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_the_proxy_role_serves_a_site_and_cut_and_heal_take_its_link_down_and_up(
        echo: int, tmp_path: Path) -> None:
    api, listen = free_port(), free_port()
    env = {**os.environ, "USER_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}

    def userctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "infra.cli", "mirror", *args], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    with (tmp_path / "proxy.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "mirror", "proxy", "--api-port", str(api),
             "--proxy", f"lab-a=127.0.0.1:{listen},127.0.0.1:{echo}"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: through(listen), 60, "the proxy to serve lab-a")
        done = userctl("cut", "--site", "lab-a", "--api-port", str(api))
        assert done.returncode == 0, done.stderr
        assert not through(listen), "a cut link still carried a round trip"
        done = userctl("heal", "--site", "lab-a", "--api-port", str(api))
        assert done.returncode == 0, done.stderr
        wait_for(lambda: through(listen), 30, "the healed link to carry again")
        # The server runs in the role's own process (exec), so the supervisor's signal
        # reaches it.
        assert "toxiproxy" in Path(f"/proc/{proc.pid}/cmdline").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
