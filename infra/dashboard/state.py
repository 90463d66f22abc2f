"""What the dashboard shows, folded from the topics (and the Delta log) in the background.

:class:`Watch` runs two daemon threads:

* the **follower** reads, without a consumer group (``assign`` at chosen starts, nothing
  committed, so no other consumer is disturbed): the compacted ``robots``,
  ``experiments`` and ``assignments`` topics, ``learner.metrics`` and ``dlq`` from the
  beginning; ``heartbeats``, ``transitions.raw`` (camera frames) and ``commands`` from
  the end.  It folds them into a :class:`~pipeline.fleet.Fleet`, learning curves per
  weights stream (experiment × robot type), the latest camera frame per robot and
  dead-letter counts with their latest reasons.
* the **poller** asks the cluster for every consumer group's lag (``topics.lag``) and
  reads each Delta table's version every ``poll_s``.

:meth:`Watch.snapshot` is a JSON-ready dict of all of it; :meth:`Watch.thumbnail` a
downscaled PNG of a robot's latest frame.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.fleet import Fleet
from schemas import events as ev
from schemas.transitions import TransitionBatch
from topics import catalog, lag
from topics.follow import Follower
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rejected

log = logging.getLogger(__name__)

#: Points kept per learning curve (older ones are thinned, never the newest).
CURVE_POINTS = 400
#: Latest reasons kept per dead-letter source.
DLQ_REASONS = 5


@dataclass
class Curve:
    """One weights stream's learning curve (learner metrics over time)."""

    stream: str
    points: list[dict[str, float | None]] = field(default_factory=list)
    learner_step: int = 0
    policy_version: int = 0
    last_at: float = 0.0
    latest: dict[str, float | None] = field(default_factory=dict)

    def add(self, event: ev.LearnerMetricsV1) -> None:
        m = event.metrics
        at = event.produced_at.timestamp()
        self.latest = dict(m)
        self.learner_step = max(self.learner_step, event.learner_step)
        self.policy_version = max(self.policy_version, event.policy_version)
        self.last_at = max(self.last_at, at)
        self.points.append({
            "t": at, "env_steps": m.get("charts/env_steps"),
            "success_rate": m.get("charts/success_rate"),
            "critic_loss": m.get("losses/critic"), "learner_step": float(event.learner_step),
        })
        if len(self.points) > CURVE_POINTS:  # thin the older half, keep the newest
            half = len(self.points) // 2
            self.points = self.points[:half:2] + self.points[half:]


@dataclass
class Frame:
    """The latest camera frame of one robot."""

    camera: str
    image: np.ndarray
    seq: int
    at: float
    png: bytes | None = None


class Watch:
    """The dashboard's view of the system; start with :meth:`start`, read from any thread."""

    def __init__(self, kafka: KafkaSettings, *, delta_root: Path | None = None,
                 poll_s: float = 3.0, heartbeat_timeout_s: float = 5.0,
                 thumbnail_px: int = 160) -> None:
        self.kafka = kafka
        self.delta_root = delta_root
        self.poll_s = poll_s
        self.thumbnail_px = thumbnail_px
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.fleet = Fleet(heartbeat_timeout_s)
        self.heartbeats: dict[str, ev.HeartbeatV1] = {}
        self.curves: dict[str, Curve] = {}
        self.frames: dict[str, Frame] = {}
        self.dlq_counts: Counter[str] = Counter()
        self.dlq_latest: dict[str, deque[dict[str, object]]] = {}
        self.commands: deque[dict[str, object]] = deque(maxlen=20)
        self.groups: list[dict[str, object]] = []
        self.tables: list[dict[str, object]] = []
        self.errors: dict[str, str] = {}
        self.caught_up = threading.Event()
        self._threads = [threading.Thread(target=self._follow, name="dashboard-follow",
                                          daemon=True),
                         threading.Thread(target=self._poll, name="dashboard-poll",
                                          daemon=True)]

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    # -- the follower ------------------------------------------------------------------

    def _follow(self) -> None:
        # Delivery: none to keep — a view; every start re-reads from the same starts.
        while not self._stop.is_set():
            try:
                follower = Follower(self.kafka, {
                    catalog.ROBOTS: "beginning", catalog.EXPERIMENTS: "beginning",
                    catalog.ASSIGNMENTS: "beginning", catalog.LEARNER_METRICS: "beginning",
                    catalog.DLQ: "beginning", catalog.HEARTBEATS: "end",
                    catalog.TRANSITIONS_RAW: "end", catalog.COMMANDS: "end",
                }, role="dashboard")
            except (LookupError, TimeoutError) as exc:
                self._error("kafka", str(exc))
                self._stop.wait(2.0)
                continue
            self.errors.pop("kafka", None)
            try:
                while not self._stop.is_set():
                    items = follower.poll(0.3)
                    with self._lock:
                        for item in items:
                            self._apply(item)
                    if not self.caught_up.is_set() and follower.caught_up():
                        self.caught_up.set()
            except Exception as exc:  # a view never dies: say it and follow again
                log.exception("dashboard follower failed")
                self._error("kafka", f"{type(exc).__name__}: {exc}")
            finally:
                follower.close()

    def _apply(self, item: Accepted | Rejected) -> None:
        if not isinstance(item, Accepted):
            return
        event = item.event
        if isinstance(event, TransitionBatch):
            self._frame(event)
        elif isinstance(event, ev.LearnerMetricsV1):
            curve = self.curves.setdefault(event.experiment_id, Curve(event.experiment_id))
            curve.add(event)
        elif isinstance(event, ev.DeadLetterV1):
            source = event.source_topic
            self.dlq_counts[source] += 1
            self.dlq_latest.setdefault(source, deque(maxlen=DLQ_REASONS)).appendleft({
                "at": event.produced_at.timestamp(), "reason": event.reason.value,
                "detail": event.detail[:300], "consumer": event.consumer,
                "offset": f"{event.source_partition}@{event.source_offset}"})
        elif isinstance(event, ev.CommandV1):
            self.commands.appendleft({
                "at": event.produced_at.timestamp(), "robot_id": event.robot_id,
                "command": event.command.value, "reason": event.reason,
                "issued_by": event.issued_by})
        elif isinstance(event, ev.Envelope):
            if isinstance(event, ev.HeartbeatV1):
                self.heartbeats[event.robot_id] = event
            self.fleet.apply(event, event.produced_at.timestamp())

    def _frame(self, batch: TransitionBatch) -> None:
        if not batch.images or len(batch) == 0:
            return
        camera = sorted(batch.images)[0]
        robot = batch.event.robot_id
        previous = self.frames.get(robot)
        self.frames[robot] = Frame(camera, np.asarray(batch.images[camera][-1]),
                                   (previous.seq + 1) if previous else 1,
                                   batch.event.produced_at.timestamp())

    # -- the poller --------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                groups = [self._group(g) for g in lag.group_lags(self.kafka, timeout_s=5.0)]
                with self._lock:
                    self.groups = groups
                self.errors.pop("lag", None)
            except Exception as exc:
                self._error("lag", f"{type(exc).__name__}: {exc}")
            if self.delta_root is not None:
                tables = _delta_tables(self.delta_root)
                with self._lock:
                    self.tables = tables
            self._stop.wait(self.poll_s)

    @staticmethod
    def _group(g: lag.GroupLag) -> dict[str, object]:
        return {"group": g.group, "state": g.state, "members": g.members,
                "topics": list(g.topics), "records": g.records,
                "seconds": None if g.seconds is None else round(g.seconds, 1),
                "age": lag.age(g.seconds)}

    def _error(self, where: str, text: str) -> None:
        if self.errors.get(where) != text:
            log.warning("dashboard %s: %s", where, text)
        self.errors[where] = text

    # -- reading -----------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, object]:
        """Everything the page shows, as plain JSON values."""
        now = time.time() if now is None else now
        with self._lock:
            robots = []
            for r in sorted(self.fleet.robots.values(), key=lambda r: (r.site, r.robot_id)):
                hb = self.heartbeats.get(r.robot_id)
                frame = self.frames.get(r.robot_id)
                silent = now - r.last_seen
                if r.state is ev.RobotState.LOST and silent > 600:
                    continue  # robots of earlier runs
                robots.append({
                    "robot_id": r.robot_id, "type": r.robot_type, "site": r.site,
                    "state": r.state.value, "experiment": r.experiment_id,
                    "silent": silent > self.fleet.heartbeat_timeout_s
                    and r.state is not ev.RobotState.LOST,
                    "last_heartbeat_s": round(silent, 1),
                    "steps_per_s": round(r.steps_per_s, 1), "steps_total": r.steps_total,
                    "policy_version": r.policy_version,
                    "spool_bytes": getattr(hb, "spool_bytes", 0) if hb else 0,
                    "spool_full": bool(getattr(hb, "spool_full", False)) if hb else False,
                    "dead_letters": getattr(hb, "dead_letters", 0) if hb else 0,
                    "cameras": [c.name for c in r.spec.cameras],
                    "frame": None if frame is None else {
                        "seq": frame.seq, "camera": frame.camera,
                        "age_s": round(now - frame.at, 1)},
                })
            experiments = []
            for exp in self.fleet.experiments.values():
                streams = sorted(s for s in self.curves if s.split(".", 1)[0]
                                 == exp.experiment_id)
                experiments.append({
                    "experiment_id": exp.experiment_id, "state": exp.state.value,
                    "detail": exp.detail, "robots": sorted(exp.robots),
                    "curves": [self._curve(self.curves[s], now) for s in streams]})
            learners = [self._curve(c, now, points=False) for c in self.curves.values()]
            dlq = [{"source": s, "count": n, "latest": list(self.dlq_latest.get(s, []))}
                   for s, n in self.dlq_counts.most_common()]
            return {
                "now": now, "caught_up": self.caught_up.is_set(), "robots": robots,
                "experiments": experiments, "learners": learners, "dlq": dlq,
                "dead_letters": sum(self.dlq_counts.values()),
                "commands": list(self.commands), "groups": list(self.groups),
                "tables": list(self.tables), "errors": dict(self.errors),
            }

    @staticmethod
    def _curve(c: Curve, now: float, *, points: bool = True) -> dict[str, object]:
        experiment, _, robot_type = c.stream.partition(".")
        out: dict[str, object] = {
            "stream": c.stream, "experiment": experiment, "robot_type": robot_type,
            "learner_step": c.learner_step, "policy_version": c.policy_version,
            "last_metrics_s": round(now - c.last_at, 1),
            "success_rate": c.latest.get("charts/success_rate"),
            "updates_per_s": c.latest.get("charts/updates_per_s"),
            "buffer": c.latest.get("replay/size"),
            "version_lag": c.latest.get("replay/version_lag_mean"),
        }
        if points:
            out["points"] = list(c.points)
        return out

    def thumbnail(self, robot_id: str) -> tuple[bytes, int] | None:
        """The robot's latest frame as a PNG at most ``thumbnail_px`` wide, and its
        sequence number; None before the first frame."""
        with self._lock:
            frame = self.frames.get(robot_id)
            if frame is None:
                return None
            if frame.png is not None:
                return frame.png, frame.seq
            image, seq = frame.image, frame.seq
        png = _png(image, self.thumbnail_px)
        with self._lock:
            if self.frames.get(robot_id) is frame:
                frame.png = png
        return png, seq


def _png(image: np.ndarray, max_px: int) -> bytes:
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if max(picture.size) > max_px:
        picture.thumbnail((max_px, max_px))
    elif max(picture.size) < max_px // 2:  # tiny sim cameras: enlarge, keep the pixels
        scale = max_px // max(picture.size)
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _delta_tables(root: Path) -> list[dict[str, object]]:
    """Each Delta table under ``root``: version and time of its newest commit."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    out: list[dict[str, object]] = []
    if not root.is_dir():
        return out
    for path in sorted(p for p in root.iterdir() if (p / "_delta_log").is_dir()):
        try:
            table = DeltaTable(str(path))
            last = table.history(1)
        except (TableNotFoundError, OSError, ValueError) as exc:
            out.append({"table": path.name, "error": str(exc)[:200]})
            continue
        ts = last[0].get("timestamp") if last else None
        out.append({"table": path.name, "version": table.version(),
                    "committed_at": None if ts is None else float(ts) / 1000})
    return out
