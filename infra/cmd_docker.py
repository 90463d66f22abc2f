"""`userctl docker build|up|down` — the edge–cloud topology on Docker (infra/compose.yaml)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from infra import docker_images
from infra.broker import INFRA, BrokerSettings

COMPOSE_FILE = INFRA / "compose.yaml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("docker", help="the two-site topology on Docker, images built without "
                       "a registry")
    dsub = p.add_subparsers(dest="docker_cmd", required=True)
    s = dsub.add_parser("build", help="build the images (cached: only what changed)")
    s.set_defaults(func=_build)
    s = dsub.add_parser("up", help="build, then `docker-compose up -d` the topology")
    s.add_argument("services", nargs="*", help="only these services (default: all)")
    s.add_argument("-p", "--project", default="user", help="compose project name")
    s.set_defaults(func=_up)
    s = dsub.add_parser("down", help="stop and remove the topology (and its volumes with -v)")
    s.add_argument("-p", "--project", default="user")
    s.add_argument("-v", "--volumes", action="store_true")
    s.set_defaults(func=_down)


def compose_command() -> list[str]:
    """``docker-compose`` (Debian's compose v1) or ``docker compose`` (the v2 plugin)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    raise SystemExit("userctl: no compose tool: apt-get install docker-compose "
                     "(or the docker compose plugin)")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    print(docker_images.ensure_runtime(BrokerSettings().home, say=_say))
    return 0


def _up(args: argparse.Namespace) -> int:
    tag = docker_images.ensure_runtime(BrokerSettings().home, say=_say)
    env = {**os.environ, **docker_images.compose_env(tag)}
    cmd = [*compose_command(), "-p", args.project, "-f", str(COMPOSE_FILE), "up", "-d",
           *args.services]
    return subprocess.run(cmd, env=env).returncode


def _down(args: argparse.Namespace) -> int:
    env = {**os.environ, **docker_images.compose_env(os.environ.get("USER_IMAGE", "none"))}
    cmd = [*compose_command(), "-p", args.project, "-f", str(COMPOSE_FILE), "down",
           *(["-v"] if args.volumes else [])]
    return subprocess.run(cmd, env=env).returncode
