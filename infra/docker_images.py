"""Docker images built without a registry (DESIGN §9), for ``infra/compose.yaml``.

* ``user-base:bookworm-<hash>`` — Debian bookworm made by ``debootstrap`` (Java 17 for
  Kafka and MirrorMaker, the GL libraries MuJoCo renders with) and ``docker import``-ed;
  the hash covers the suite, packages and mirror, and the root file system is cached as
  ``base-bookworm-<hash>.tar`` in ``USER_DOCKER_CACHE`` (default ``<home>/docker``; CI
  keeps it outside the clone, next to its virtualenv cache).
* ``user-runtime:<hash>`` — that base plus the Kafka and MirrorMaker 2 jars from the
  host's Maven resolution (``<home>/kafka/<version>/{libs,mirror-libs}``); the tag is a hash
  of what went in (base tag included), so an unchanged build is not redone.

Python and the project are not copied in: the containers mount the host's interpreter,
virtualenv and checkout read-only at their own paths (``compose.yaml``), so the image does
not hold a second multi-gigabyte torch and a code change needs no rebuild.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from infra import mirror
from infra.broker import Broker, BrokerError, BrokerSettings

SUITE = "bookworm"
#: Java for Kafka and MirrorMaker; the shared libraries the host's CPython links against
#: (ssl, ffi, sqlite, bz2, expat, readline, gdbm); GL for MuJoCo.
PACKAGES = ("openjdk-17-jre-headless", "ca-certificates", "procps", "libssl3", "libffi8",
            "libsqlite3-0", "libbz2-1.0", "libexpat1", "libreadline8", "libgdbm6",
            "libgl1", "libegl1", "libglx-mesa0", "libgles2")
MIRROR_URL = "http://deb.debian.org/debian"
RUNTIME_DOCKERFILE = """\
FROM {base}
COPY libs /opt/kafka/libs
COPY mirror-libs /opt/kafka/mirror-libs
ENV USER_KAFKA_LIBS=/opt/kafka/libs USER_HOME=/var/lib/user MUJOCO_GL=egl \\
    PYTHONUNBUFFERED=1 LANG=C.UTF-8
"""

Say = Callable[[str], None]


def _base_digest() -> str:
    what = "\n".join([SUITE, MIRROR_URL, *PACKAGES])
    return hashlib.sha256(what.encode()).hexdigest()[:12]


def base_tag() -> str:
    """The base image's tag: a new package list or suite is a new base."""
    return f"user-base:{SUITE}-{_base_digest()}"


def base_cache(home: Path) -> Path:
    """Where the debootstrapped root file system is kept (``USER_DOCKER_CACHE``)."""
    cache = os.environ.get("USER_DOCKER_CACHE")
    return (Path(cache) if cache else home / "docker") / f"base-{SUITE}-{_base_digest()}.tar"


def _quiet(_: str) -> None:
    pass


def _docker(*args: str, timeout: float = 1800, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker") is None:
        raise BrokerError("docker is not installed (apt-get install docker.io)")
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise BrokerError(f"docker {args[0]} failed: {(proc.stderr or proc.stdout)[-400:]}")
    return proc


def image_exists(tag: str) -> bool:
    return _docker("image", "inspect", tag, check=False, timeout=60).returncode == 0


def ensure_base(home: Path, say: Say = _quiet) -> str:
    """The base image (:func:`base_tag`), made once with debootstrap + docker import."""
    base = base_tag()
    if image_exists(base):
        return base
    tar = base_cache(home)
    if not tar.exists():
        if shutil.which("debootstrap") is None:
            raise BrokerError("debootstrap is not installed (apt-get install debootstrap)")
        tar.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tar.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            say(f"debootstrap {SUITE} with {', '.join(PACKAGES)} (once)…")
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(rootfs), MIRROR_URL], capture_output=True, text=True,
                timeout=3600)
            if proc.returncode != 0:
                raise BrokerError(f"debootstrap failed: {(proc.stderr or proc.stdout)[-400:]}")
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(rootfs / cache, ignore_errors=True)
            part = tar.with_suffix(".part")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(part), "."], check=True,
                           timeout=1800)
            part.rename(tar)
    say(f"docker import {tar} {base}")
    _docker("import", str(tar), base)
    return base


def runtime_tag(libs: Path, mirror_libs: Path) -> str:
    digest = hashlib.sha256(RUNTIME_DOCKERFILE.format(base=base_tag()).encode())
    for d in (libs, mirror_libs):
        for jar in sorted(d.glob("*.jar")):
            digest.update(f"{d.name}/{jar.name}:{jar.stat().st_size}\n".encode())
    return f"user-runtime:{digest.hexdigest()[:12]}"


def ensure_runtime(home: Path | None = None, say: Say = _quiet) -> str:
    """The runtime image's tag, built if this set of jars has none yet."""
    broker = Broker(BrokerSettings(home=home) if home else BrokerSettings())
    libs = broker.ensure_jars(say)
    mm = mirror.Mirror(mirror.MirrorSettings(site="x", edge_bootstrap="x:1",
                                             cloud_bootstrap="x:1"),
                       broker.settings)
    mirror_libs = mm.ensure_jars(say)
    tag = runtime_tag(libs, mirror_libs)
    if image_exists(tag):
        return tag
    base = ensure_base(broker.home, say)
    with tempfile.TemporaryDirectory() as ctx:
        for src, name in ((libs, "libs"), (mirror_libs, "mirror-libs")):
            shutil.copytree(src, Path(ctx) / name)
        (Path(ctx) / "Dockerfile").write_text(RUNTIME_DOCKERFILE.format(base=base))
        say(f"docker build {tag}")
        _docker("build", "-q", "-t", tag, ctx)
    return tag


def compose_env(tag: str) -> dict[str, str]:
    """What ``infra/compose.yaml`` substitutes: the image and the host paths it mounts."""
    from infra.broker import REPO

    venv = REPO / ".venv"
    python_home = Path(os.path.realpath(venv / "bin" / "python")).parents[1]
    return {"USER_IMAGE": tag, "USER_REPO": str(REPO), "USER_VENV": str(venv.resolve()),
            "USER_PYTHON_HOME": str(python_home)}
