"""The local Apache Kafka broker: real Kafka (KRaft, broker + controller in one JVM),
assembled from Maven Central jars (DESIGN §7).

:class:`Broker` owns everything under its state directory (``USER_HOME``, default
``.user/`` in the working tree)::

    kafka/<version>/libs/     the classpath, resolved once with Maven
    broker/server.properties  written from infra/kafka/server.properties.template
    broker/data/              KRaft metadata and topic data (survives stop/start)
    broker/broker.pid         the running broker's pid
    logs/broker.log           the broker's own log;  logs/broker.out  JVM stdout/stderr

Every failure a user can cause raises :class:`BrokerError` whose message is one line
that says what is wrong and what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from topics.settings import KafkaSettings

INFRA = Path(__file__).resolve().parent
REPO = INFRA.parent
POM = INFRA / "pom.xml"
MIN_JAVA = 17
BROKER_MAIN = "kafka.Kafka"


class BrokerError(RuntimeError):
    """A broker problem, described in one actionable line."""


def default_home() -> Path:
    """``.user/`` in the working tree when run from a checkout, else in the cwd."""
    root = REPO if (REPO / "pyproject.toml").exists() else Path.cwd()
    return root / ".user"


def kafka_version() -> str:
    """The Kafka version pinned in infra/pom.xml (the one place it is written)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise BrokerError(f"{POM} has no <kafka.version>; restore it from git")
    return match.group(1).strip()


class BrokerSettings(BaseSettings):
    """The local broker (environment prefix ``USER_BROKER_``; ``USER_HOME`` for the state dir)."""

    model_config = SettingsConfigDict(
        env_prefix="USER_BROKER_", frozen=True, extra="ignore", populate_by_name=True
    )

    home: Path = Field(
        default_factory=default_home,
        validation_alias=AliasChoices("USER_HOME"),
        description="state directory: jars, data, pid and logs",
    )
    host: str = Field("127.0.0.1", description="address the broker listens on")
    advertised_host: str | None = Field(
        None, description="the name clients reach it by, when not `host` (a container's "
        "name when it listens on 0.0.0.0)")
    port: int = Field(9092, ge=1, le=65535, description="client (PLAINTEXT) port")
    controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port")
    secure: bool = Field(
        False, validation_alias=AliasChoices("USER_SECURE", "USER_BROKER_SECURE", "secure"),
        description="SASL_SSL (SCRAM-SHA-512) on the client port, TLS inside, ACLs "
        "(infra/security.py; `userctl security init` makes the certificates)")
    wan_listeners: str | None = Field(
        None, description="the cloud broker's WAN listeners for the edges' MirrorMaker 2, "
        "'lab-a=9192;lab-b=9193@proxy-host:29193' (site=port[@advertised host:port]): TLS "
        "with client certificates required (infra/wan.py; `userctl mirror certs`)")
    internal_port: int = Field(9094, ge=1, le=65535,
                               description="inter-broker + admin port (mutual TLS; secure only)")
    node_id: int = Field(1, ge=0)
    heap: str = Field("1g", description="JVM heap, -Xmx")
    java: str | None = Field(None, description="java executable; default $JAVA_HOME/bin/java")
    mvn: str = Field("mvn", description="Maven executable used to resolve the jars once")
    libs: Path | None = Field(
        None,
        validation_alias=AliasChoices("USER_KAFKA_LIBS"),
        description="directory of Kafka jars; default <home>/kafka/<version>/libs",
    )
    start_timeout_s: float = Field(90.0, gt=0, description="how long start waits for metadata")
    stop_timeout_s: float = Field(30.0, gt=0, description="graceful stop before SIGKILL")
    message_max_bytes: int = Field(40 * 1024 * 1024, gt=0)
    offsets_partitions: int = Field(
        10, ge=1, description="partitions of __consumer_offsets and __transaction_state"
    )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def internal_bootstrap(self) -> str:
        return f"{self.host}:{self.internal_port}"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    answering: bool
    topics: int | None
    version: str
    data_dir: Path


@dataclass(frozen=True)
class StartResult:
    pid: int
    already_running: bool
    notes: tuple[str, ...] = ()


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Broker:
    """Start, stop and inspect the local Kafka broker described by ``settings``."""

    def __init__(self, settings: BrokerSettings | None = None) -> None:
        self.settings = settings or BrokerSettings()
        self.version = kafka_version()
        home = self.settings.home.resolve()
        self.home = home
        self.libs = (self.settings.libs or home / "kafka" / self.version / "libs").resolve()
        self.broker_dir = home / "broker"
        self.data_dir = self.broker_dir / "data"
        self.server_properties = self.broker_dir / "server.properties"
        self.log4j_properties = self.broker_dir / "log4j2.properties"
        self.pid_file = self.broker_dir / "broker.pid"
        self.log_file = home / "logs" / "broker.log"
        self.out_file = home / "logs" / "broker.out"

    # -- prerequisites -------------------------------------------------------------------

    def java(self) -> str:
        """The java executable, checked to be Java 17 or newer."""
        java = self.settings.java
        if java is None:
            java_home = os.environ.get("JAVA_HOME")
            java = str(Path(java_home) / "bin" / "java") if java_home else "java"
        resolved = shutil.which(java)
        if resolved is None:
            raise BrokerError(
                f"Java not found ({java!r}); install Java {MIN_JAVA}+ "
                "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
            )
        try:
            out = subprocess.run(
                [resolved, "-version"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerError(
                f"{resolved} -version failed ({exc}); check the Java install"
            ) from None
        major = _java_major(out.stderr + out.stdout)
        if major is None:
            raise BrokerError(
                f"could not read the Java version from `{resolved} -version`; "
                f"install Java {MIN_JAVA}+ or set JAVA_HOME"
            )
        if major < MIN_JAVA:
            raise BrokerError(
                f"Java {major} at {resolved} is too old: Kafka {self.version} needs Java "
                f"{MIN_JAVA}+; install it (apt-get install openjdk-17-jre-headless) "
                "or set JAVA_HOME"
            )
        return resolved

    def ensure_jars(self, say: Say = _quiet) -> Path:
        """Resolve the pinned Kafka jars with Maven once; later calls reuse the cache."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        if self.settings.libs is not None and any(self.libs.glob("kafka_2.13-*.jar")):
            return self.libs
        mvn = shutil.which(self.settings.mvn)
        if mvn is None:
            raise BrokerError(
                f"Maven ({self.settings.mvn!r}) not found, and the Kafka jars are not cached at "
                f"{self.libs}; install Maven (apt-get install maven) or set USER_KAFKA_LIBS "
                "to a directory of the Kafka jars"
            )
        say(f"resolving Apache Kafka {self.version} jars from Maven Central (first start only)…")
        tmp = self.libs.with_name(f"libs.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise BrokerError(
                "Maven took over 15 minutes resolving the Kafka jars; check access to "
                "Maven Central (proxy in ~/.m2/settings.xml?) and retry"
            ) from None
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{self.version} "
                f"({_last_error_line(proc.stdout + proc.stderr)}); check access to Maven "
                "Central or set USER_KAFKA_LIBS to a directory of the Kafka jars"
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        marker.write_text(self.version + "\n")
        say(f"cached {sum(1 for _ in self.libs.glob('*.jar'))} jars in {self.libs}")
        return self.libs

    def classpath(self) -> str:
        return str(self.libs / "*")

    # -- state ---------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of this home's running broker, or None (a stale pid file is left)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if self._is_our_broker(pid) else None

    def _is_our_broker(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        args = [a.decode(errors="replace") for a in cmdline]
        return BROKER_MAIN in args and str(self.server_properties) in args

    def _clear_stale_pid(self) -> str | None:
        if not self.pid_file.exists():
            return None
        text = self.pid_file.read_text().strip()
        if self.pid() is not None:
            return None
        self.pid_file.unlink()
        return (
            f"removed stale pid file {self.pid_file} (pid {text or '?'} is not this broker; "
            "the last run did not stop cleanly)"
        )

    def admin_settings(self) -> KafkaSettings:
        """How this process talks to its broker as an administrator: plaintext, or on a
        secure broker the admin certificate on the INTERNAL listener."""
        from topics.settings import KafkaSettings

        if not self.settings.secure:
            return KafkaSettings(bootstrap=self.settings.bootstrap)
        from infra import security

        return security.admin_settings(self.home, self.settings.internal_bootstrap)

    def _check_ports(self) -> None:
        ports = [("USER_BROKER_PORT", self.settings.port),
                 ("USER_BROKER_CONTROLLER_PORT", self.settings.controller_port)]
        if self.settings.secure:
            ports.append(("USER_BROKER_INTERNAL_PORT", self.settings.internal_port))
        if self.settings.wan_listeners:
            from infra import wan

            ports += [("USER_BROKER_WAN_LISTENERS", w.port)
                      for w in wan.parse_listeners(self.settings.wan_listeners)]
        for name, port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.settings.host, port))
                except OSError:
                    owner = _port_owner(port)
                    raise BrokerError(
                        f"port {port} on {self.settings.host} is taken by another program"
                        f"{f' ({owner})' if owner else ''}; stop it or set {name} to a free port"
                    ) from None

    def _write_configs(self) -> None:
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        s = self.settings
        server = string.Template((INFRA / "kafka" / "server.properties.template").read_text())
        self.server_properties.write_text(server.substitute(
            node_id=s.node_id, host=s.host, port=s.port, controller_port=s.controller_port,
            advertised_host=s.advertised_host or s.host,
            data_dir=self.data_dir, message_max_bytes=s.message_max_bytes,
            socket_request_max_bytes=max(104857600, 2 * s.message_max_bytes),
            offsets_partitions=s.offsets_partitions,
        ))
        if s.secure:  # it holds the keystore password: owner only
            from infra import security

            self.server_properties.chmod(0o600)
            self.server_properties.write_text(security.override_properties(
                self.server_properties.read_text(), security.broker_properties(
                    self.home, host=s.host, port=s.port, internal_port=s.internal_port,
                    controller_port=s.controller_port)))
        if s.wan_listeners:  # the keystore password again: owner only
            from infra import wan

            self.server_properties.chmod(0o600)
            self.server_properties.write_text(wan.with_wan_listeners(
                self.server_properties.read_text(), self.home, s.host,
                wan.parse_listeners(s.wan_listeners)))
        log4j = string.Template((INFRA / "kafka" / "log4j2.properties.template").read_text())
        self.log4j_properties.write_text(log4j.substitute(log_file=self.log_file))

    def _check_storage(self) -> bool:
        """True when storage is formatted and sane; False when it needs formatting."""
        meta = self.data_dir / "meta.properties"
        if not meta.exists():
            leftovers = [p.name for p in self.data_dir.iterdir()] if self.data_dir.exists() else []
            if leftovers:
                raise self._corrupt(
                    f"meta.properties is missing but {len(leftovers)} entries remain"
                )
            return False
        try:
            props = dict(
                line.split("=", 1) for line in meta.read_text().splitlines()
                if line.strip() and not line.startswith("#")
            )
        except (UnicodeDecodeError, ValueError):
            raise self._corrupt("meta.properties is unreadable") from None
        if not props.get("cluster.id") or "node.id" not in props:
            raise self._corrupt("meta.properties lacks cluster.id or node.id")
        if props["node.id"].strip() != str(self.settings.node_id):
            raise self._corrupt(
                f"it belongs to node {props['node.id'].strip()}, not USER_BROKER_NODE_ID="
                f"{self.settings.node_id}"
            )
        return True

    def _corrupt(self, why: str) -> BrokerError:
        return BrokerError(
            f"Kafka storage at {self.data_dir} is corrupt ({why}); move it away or delete it "
            "to start afresh (this erases every topic), or set USER_HOME to another directory"
        )

    def _format(self, java: str, say: Say) -> None:
        cluster_id = _cluster_id()
        say(f"formatting KRaft storage in {self.data_dir} (cluster {cluster_id})")
        proc = subprocess.run(
            [java, "-cp", self.classpath(), f"-Dlog4j2.configurationFile={self.log4j_properties}",
             "kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={cluster_id}",
             "-c", str(self.server_properties)],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage failed: {_last_error_line(proc.stdout + proc.stderr)}"
            )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, say: Say = _quiet) -> StartResult:
        """Start the broker and wait until it answers a metadata request.

        Idempotent: with a broker of this home already running it returns
        ``already_running=True`` and starts nothing.
        """
        running = self.pid()
        if running is not None:
            return StartResult(running, already_running=True)
        notes = tuple(n for n in (self._clear_stale_pid(),) if n)
        for note in notes:
            say(note)
        java = self.java()
        self.ensure_jars(say)
        self._check_ports()
        self._write_configs()
        if not self._check_storage():
            self._format(java, say)
        cmd = [
            java, f"-Xmx{self.settings.heap}", f"-Xms{min_heap(self.settings.heap)}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_properties}",
            f"-Dkafka.logs.dir={self.log_file.parent}",
            "-cp", self.classpath(), BROKER_MAIN, str(self.server_properties),
        ]
        say(f"starting Kafka {self.version} on {self.settings.bootstrap} (logs: {self.log_file})")
        with self.out_file.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.broker_dir,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._wait_until_answering(proc, log_offset)
        return StartResult(proc.pid, already_running=False, notes=notes)

    def _wait_until_answering(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise self._explain_exit(proc.returncode, log_offset)
            if topic_count(self.settings.bootstrap, 1.0, self.admin_settings()) is not None:
                return
            time.sleep(0.2)
        self.stop()
        raise BrokerError(
            f"Kafka did not answer on {self.settings.bootstrap} within "
            f"{self.settings.start_timeout_s:.0f} s; see {self.log_file} "
            "(raise USER_BROKER_START_TIMEOUT_S on a slow machine)"
        )

    def _explain_exit(self, code: int | None, log_offset: int) -> BrokerError:
        text = ""
        for path in (self.log_file, self.out_file):
            if path.exists():
                with path.open("rb") as f:
                    if path == self.log_file:
                        f.seek(log_offset)
                    text += f.read()[-200_000:].decode(errors="replace")
        storage = re.search(
            r"(meta\.properties|Invalid cluster\.id|InconsistentClusterIdException|"
            r"log directory.*(corrupt|invalid)|CorruptRecordException|"
            r"Failed to load metadata|bootstrap\.checkpoint|KafkaStorageException)",
            text,
        )
        if storage:
            return self._corrupt(_last_error_line(text))
        if "Address already in use" in text:
            return BrokerError(
                f"Kafka could not bind {self.settings.bootstrap}: the port is in use; "
                "stop the other program or set USER_BROKER_PORT"
            )
        return BrokerError(
            f"Kafka exited during start (code {code}): {_last_error_line(text)}; "
            f"full log: {self.log_file}"
        )

    def stop(self, say: Say = _quiet) -> bool:
        """Stop gracefully (SIGTERM), then SIGKILL after ``stop_timeout_s``.

        Returns False when no broker of this home was running.
        """
        pid = self.pid()
        if pid is None:
            self._clear_stale_pid()
            return False
        say(f"stopping Kafka (pid {pid})…")
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, self.settings.stop_timeout_s):
            say(f"Kafka did not stop within {self.settings.stop_timeout_s:.0f} s; killing it")
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> BrokerStatus:
        pid = self.pid()
        topics = (topic_count(self.settings.bootstrap, 2.0, self.admin_settings())
                  if pid is not None else None)
        return BrokerStatus(
            running=pid is not None, pid=pid, bootstrap=self.settings.bootstrap,
            answering=topics is not None, topics=topics, version=self.version,
            data_dir=self.data_dir,
        )


# -- helpers ---------------------------------------------------------------------------------


def answers_metadata(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a Kafka broker at ``bootstrap`` answers a metadata request."""
    return topic_count(bootstrap, timeout_s) is not None


def topic_count(bootstrap: str, timeout_s: float = 2.0,
                settings: KafkaSettings | None = None) -> int | None:
    """How many topics the cluster at ``bootstrap`` reports (asked with ``settings``, by
    default plaintext), or None if it does not answer."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from topics.settings import KafkaSettings

    conf = (settings or KafkaSettings(bootstrap=bootstrap)).admin_config()
    conf["log_level"] = 0  # an unreachable broker is an answer here, not an error to log
    try:
        meta = AdminClient(conf).list_topics(timeout=timeout_s)
    except KafkaException:
        return None
    return len([t for t in meta.topics if not t.startswith("__")])


def min_heap(heap: str) -> str:
    """Start small: -Xms is a quarter of -Xmx (at least 128m)."""
    match = re.fullmatch(r"(\d+)([kmgKMG]?)", heap)
    if not match:
        return heap
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return f"{max(128, int(match.group(1)) * scale // 4 >> 20)}m"


def _java_major(text: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    return major


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid``, never one that starts with '-' (a CLI would
    read it as an option).
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"ERROR|Exception|FATAL|error:", ln):
            return ln[:400]
    return lines[-1][:400] if lines else "no output"


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


def _port_owner(port: int) -> str | None:
    """'pid N: command' of the process listening on ``port``, if /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    return f"pid {proc.name}: {cmd.strip()[:80]}"
        except OSError:
            continue
    return None
