"""TensorBoard event files of a learner's metrics: ``<runs>/<experiment>/tb/<robot type>/``.

A :class:`~learners.loop.MetricsSink` that writes every metric the learner reports
(``losses/critic``, ``charts/success_rate``, ``replay/version_lag_mean``, ``weights/…`` —
the names are already TensorBoard's ``section/name`` convention) as a scalar at the
learner's update step.  One TensorBoard *run* per robot type, so a heterogeneous
experiment's types overlay on one chart; ``tensorboard --logdir runs/<experiment>/tb``
(``userctl tensorboard EXPERIMENT``) shows them.

The writer is ``tensorboardX``: the event-file writer alone (numpy + protobuf), without
the TensorBoard server and its web stack, which a learner host does not need; the
server is the optional extra ``[tensorboard]``.  Files are written by the writer's own
background thread and flushed every ``flush_s`` seconds and on :meth:`close`, so the
training loop never waits on the disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import events

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

log = logging.getLogger(__name__)

__all__ = ["FanOut", "TensorBoardMetrics", "TensorBoardSettings", "log_dir"]


class TensorBoardSettings(BaseSettings):
    """Where and whether learners write TensorBoard files (prefix ``USER_TENSORBOARD_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_TENSORBOARD_", frozen=True,
                                      extra="ignore")

    enabled: bool = Field(True, description="write event files at all")
    runs: Path = Field(Path("runs"), description="runs directory; files go to "
                                                 "<runs>/<experiment>/tb/<robot type>/")
    flush_s: float = Field(10.0, gt=0, description="flush event files this often")


def log_dir(runs: Path, experiment_id: str) -> Path:
    """The TensorBoard log directory of one experiment (one sub-run per robot type)."""
    return runs / experiment_id / "tb"


class TensorBoardMetrics:
    """Writes learner metrics events of one experiment as TensorBoard scalars.

    ``event.experiment_id`` is the weights stream ``<experiment>.<robot type>``; each robot
    type gets its own writer (sub-directory).  Metrics that are ``None`` (not finite, or
    not known yet) are skipped, so a chart has gaps rather than fake zeros.
    """

    def __init__(self, runs: Path, experiment_id: str, *, flush_s: float = 10.0) -> None:
        self.directory = log_dir(runs, experiment_id)
        self.experiment_id = experiment_id
        self._flush_s = flush_s
        self._writers: dict[str, SummaryWriter] = {}
        self.scalars = 0

    def _writer(self, run: str) -> SummaryWriter:
        writer = self._writers.get(run)
        if writer is None:
            from tensorboardX import SummaryWriter

            path = self.directory / run
            path.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(logdir=str(path), flush_secs=max(1, round(self._flush_s)))
            self._writers[run] = writer
            log.info("tensorboard: writing %s", path)
        return writer

    def send(self, event: events.LearnerMetricsV1) -> None:
        stream = event.experiment_id
        prefix = f"{self.experiment_id}."
        run = stream[len(prefix):] if stream.startswith(prefix) else stream
        writer = self._writer(run)
        walltime = event.produced_at.timestamp()
        for name, value in sorted(event.metrics.items()):
            if value is None:
                continue
            writer.add_scalar(name, value, global_step=event.learner_step, walltime=walltime)
            self.scalars += 1
        writer.add_scalar("weights/policy_version", float(event.policy_version),
                          global_step=event.learner_step, walltime=walltime)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class _Sink(Protocol):
    def send(self, event: events.LearnerMetricsV1) -> None: ...


class FanOut:
    """A :class:`~learners.loop.MetricsSink` that hands each event to several sinks."""

    def __init__(self, sinks: Sequence[_Sink]) -> None:
        self.sinks = list(sinks)

    def send(self, event: events.LearnerMetricsV1) -> None:
        for sink in self.sinks:
            sink.send(event)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()
