"""The compute host role (``userctl host``): a machine's CPUs, memory and GPUs as a resource.

Like an agent announces its robots, a host announces itself on ``hosts`` at every start
and heartbeats on ``hosts.heartbeats`` about once a second, saying which of its placements
run.  It follows ``placements`` (compacted, from the beginning) and starts what the
controller put on it — a learner runs the very code ``userctl learn`` runs, an inference
replica what ``userctl inference`` runs — each as a child process limited to its GPUs
(``CUDA_VISIBLE_DEVICES``); a released placement's child gets SIGTERM (then SIGKILL).
A child that exits is reported in the heartbeat's ``failed`` and restarted after a
back-off while its placement stands.

It lives in ``infra/`` because it is a launcher: it starts other roles' processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import events as ev
from topics import catalog
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rejected

log = logging.getLogger(__name__)


class HostSettings(BaseSettings):
    """One compute host (environment prefix ``USER_HOST_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_HOST_", frozen=True, extra="ignore")

    host_id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "host",
                         pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    site: str = Field("cloud", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    cpus: int | None = Field(None, ge=1, description="slots to offer (default: CPU count)")
    heartbeat_s: float = Field(1.0, gt=0)
    restart_backoff_s: float = Field(5.0, ge=0, description="wait before restarting a "
                                     "child that exited while its placement stands")
    detect_gpus: bool = Field(True, description="false: announce no GPUs whatever is there")


def detect_gpus() -> tuple[ev.GpuInfo, ...]:
    """This machine's GPUs: torch.cuda when it sees some, else ``nvidia-smi``, else none."""
    try:
        import torch

        if torch.cuda.is_available():
            return tuple(
                ev.GpuInfo(index=i, name=torch.cuda.get_device_name(i)[:256],
                           memory_mb=torch.cuda.get_device_properties(i).total_memory >> 20)
                for i in range(torch.cuda.device_count()))
    except Exception as exc:
        log.warning("torch.cuda failed (%s); trying nvidia-smi", exc)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): announcing no GPUs", exc)
        return ()
    gpus = []
    for line in out.strip().splitlines():
        index, name, mem = (p.strip() for p in line.split(",", 2))
        gpus.append(ev.GpuInfo(index=int(index), name=name[:256], memory_mb=int(float(mem))))
    return tuple(gpus)


def memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) >> 20
    except (ValueError, OSError):
        return 0


def describe(settings: HostSettings) -> ev.HostAnnouncedV1:
    """This machine as an announcement."""
    return ev.HostAnnouncedV1(
        host_id=settings.host_id, site=settings.site,
        cpus=settings.cpus or os.cpu_count() or 1, memory_mb=memory_mb(),
        gpus=detect_gpus() if settings.detect_gpus else ())


def command_for(placement: ev.PlacementGrantedV1) -> list[str]:
    """The child process a placement runs: the same entry points a person would type."""
    cli = [sys.executable, "-m", "infra.cli"]
    if placement.role is ev.WorkloadRole.LEARNER:
        return [*cli, "learn", placement.experiment_id]
    return [*cli, "inference", placement.experiment_id, "--replica", str(placement.index)]


#: Starts a placement's process: (placement, environment) -> a running child.
Launcher = Callable[[ev.PlacementGrantedV1, dict[str, str]], "subprocess.Popen[bytes]"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the host process dies, however it dies (Linux), so
    a lost host leaves no orphaned learner or replica serving beside its replacement."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _launch(placement: ev.PlacementGrantedV1, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command_for(placement), env=env, preexec_fn=_die_with_parent)


@dataclass
class _Child:
    placement: ev.PlacementGrantedV1
    process: subprocess.Popen[bytes] | None
    restart_at: float = 0.0


class Host:
    """Announces, heartbeats, and keeps one child per placement on this host running."""

    def __init__(self, settings: HostSettings, kafka: KafkaSettings,
                 launcher: Launcher = _launch) -> None:
        self.settings = settings
        self.kafka = kafka
        self.launcher = launcher
        self.announcement = describe(settings)
        self.children: dict[str, _Child] = {}
        self.failed: dict[str, str] = {}
        self._wanted: dict[str, ev.PlacementGrantedV1] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def take(self, item: Accepted | Rejected) -> None:
        """Fold one ``placements`` record: the latest event per placement id wins."""
        if not isinstance(item, Accepted):
            return
        event = item.event
        with self._lock:
            if isinstance(event, ev.PlacementGrantedV1):
                if event.host_id == self.settings.host_id:
                    self._wanted[event.placement_id] = event
                else:
                    self._wanted.pop(event.placement_id, None)
            elif isinstance(event, ev.PlacementReleasedV1):
                self._wanted.pop(event.placement_id, None)

    def reconcile(self, now: float) -> None:
        """Start children for new placements, stop released ones, restart the exited."""
        with self._lock:
            wanted = dict(self._wanted)
        for pid in sorted(set(self.children) - set(wanted)):
            self._terminate(self.children.pop(pid))
            self.failed.pop(pid, None)
            log.info("stopped %s: placement released", pid)
        for pid, placement in sorted(wanted.items()):
            child = self.children.get(pid)
            if child is None or child.placement != placement:
                if child is not None:
                    self._terminate(child)
                child = self.children[pid] = _Child(placement, None)
            if child.process is not None:
                code = child.process.poll()
                if code is None:
                    continue
                self.failed[pid] = f"exited with code {code}"
                log.warning("%s exited with code %s; restarting in %.0f s", pid, code,
                            self.settings.restart_backoff_s)
                child.process, child.restart_at = None, now + self.settings.restart_backoff_s
            if now >= child.restart_at:
                env = dict(os.environ)
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in placement.gpus)
                child.process = self.launcher(placement, env)
                log.info("started %s (%s of %s, gpus %s) as pid %d", pid,
                         placement.role.value, placement.experiment_id, list(placement.gpus),
                         child.process.pid)

    def running(self) -> tuple[str, ...]:
        return tuple(sorted(pid for pid, c in self.children.items()
                            if c.process is not None and c.process.poll() is None))

    def heartbeat(self, seq: int) -> ev.HostHeartbeatV1:
        return ev.HostHeartbeatV1(host_id=self.settings.host_id, site=self.settings.site,
                                  seq=seq, running=self.running(),
                                  failed={k: v[:200] for k, v in self.failed.items()})

    @staticmethod
    def _terminate(child: _Child, timeout_s: float = 10.0) -> None:
        proc = child.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)

    def run(self) -> None:
        producer = EventProducer(self.kafka, role="host")
        producer.send(catalog.HOSTS, self.announcement)
        producer.flush(30.0)
        gpus = ", ".join(f"{g.name} ({g.memory_mb} MiB)" for g in self.announcement.gpus)
        log.info("host %s up at %s: %d CPUs, %d MiB, GPUs: %s", self.settings.host_id,
                 self.settings.site, self.announcement.cpus, self.announcement.memory_mb,
                 gpus or "none")
        follower = Follower(self.kafka, {catalog.PLACEMENTS: "beginning"}, role="host")
        backlog: list[Accepted | Rejected] = []
        follower.wait_caught_up(60.0, backlog)
        for item in backlog:
            self.take(item)
        seq, next_beat = 0, 0.0
        try:
            while not self._stop.is_set():
                for item in follower.poll(0.2):
                    self.take(item)
                now = time.monotonic()
                self.reconcile(now)
                if now >= next_beat:
                    producer.send(catalog.HOST_HEARTBEATS, self.heartbeat(seq))
                    seq += 1
                    next_beat = now + self.settings.heartbeat_s
        finally:
            follower.close()
            for child in self.children.values():
                self._terminate(child)
            producer.close(timeout_s=1.0)


def serve(settings: HostSettings, kafka: KafkaSettings) -> int:
    """Run a host in this process until SIGTERM or SIGINT."""
    host = Host(settings, kafka)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping this host's placements", signum)
        host.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host.run()
    return 0
