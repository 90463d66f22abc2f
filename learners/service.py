"""``userctl learn EXPERIMENT``: one experiment's learner process, composed (DESIGN §5).

Start-up, in this order, so the buffer holds every step exactly once:

1. the experiment spec (``experiments`` topic, or a file) and the robot specs
   (``robots``);
2. the newest checkpoint, unless ``fresh``: networks, optimisers, temperature and update
   step of every robot type (the buffer is not checkpointed);
3. the Delta history at one table version: this experiment's rows for its reward
   function, and ``buffer.prior_experiments``' rows (RLPD prior data), plus — from the
   same snapshot — the sink's app-transaction version (last offset written) of each
   ``transitions`` partition;
4. live ``transitions`` from Kafka, each partition assigned at that version + 1;
5. the loop (:func:`learners.loop.run`) until SIGTERM/SIGINT or the experiment's stop
   condition; then final weights, metrics and checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Literal

import torch
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from learners import _history, _live, lineage, loop, tensorboard
from learners.core import JSON
from schemas.experiment import ExperimentSpec
from topics import catalog, tables
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


class LearnSettings(BaseSettings):
    """One learner process (environment prefix ``USER_LEARN_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_LEARN_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    home: Path = Field(default_factory=tables.user_home, validation_alias=AliasChoices("USER_HOME"),
                       description="state directory; checkpoints go to "
                                   "<home>/learners/<experiment>/checkpoints")
    checkpoint_s: float = Field(60.0, gt=0, description="checkpoint period (and on SIGTERM)")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept per experiment")
    metrics_s: float = Field(5.0, gt=0, description="learner.metrics period")
    delta_root: Path = Field(
        default_factory=tables.default_root,
        validation_alias=AliasChoices("USER_LEARN_DELTA_ROOT", "USER_SINK_ROOT"),
        description="the Delta sink's table root (defaults to the sink's)")
    sink_name: str = Field(
        tables.DEFAULT_SINK_NAME,
        validation_alias=AliasChoices("USER_LEARN_SINK_NAME", "USER_SINK_NAME"),
        description="the sink whose app transactions say where the history ends")
    topic_suffix: str = Field("", description="appended to the transitions topic name "
                                              "(test namespaces, as the sink's)")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="where to train; SAC trains on CPU so far, so auto means cpu")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 leaves "
                                                    "torch's default")
    history_chunk_rows: int = Field(65_536, gt=0, description="rows per warm-start chunk")
    idle_s: float = Field(0.05, gt=0, description="longest idle wait when the UTD cap is "
                                                  "reached")
    queued_records: int = Field(256, gt=0, description="live records decoded ahead")
    reload_after_divergences: int = Field(
        10, ge=1, description="non-finite updates of a robot type in a row after which the "
                              "learner reloads its last good checkpoint")

    def checkpoint_dir(self, experiment_id: str) -> Path:
        return self.home / "learners" / experiment_id / "checkpoints"


def resolve_device(setting: str, spec: ExperimentSpec) -> str:
    """The device to train on: the setting, else the experiment's ``learner.device``.

    Raises ``ValueError`` for one this learner cannot use.
    """
    requested = setting if setting != "auto" else spec.learner.device
    if requested == "cuda":
        raise ValueError("device cuda: the SAC learner trains on CPU so far; set "
                         "USER_LEARN_DEVICE=cpu (or auto)")
    return "cpu"


def run(
    experiment_id: str,
    settings: LearnSettings,
    kafka: KafkaSettings,
    *,
    fresh: bool = False,
    spec: ExperimentSpec | None = None,
    stop: threading.Event | None = None,
) -> loop.LoopReport:
    """Run the learner of ``experiment_id`` until stopped; returns what it did."""
    stop = stop or threading.Event()
    _install_signal_handlers(stop)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    log.info("learn settings: %s (%d torch threads)", settings.model_dump(mode="json"),
             torch.get_num_threads())
    log.info("kafka settings: %s", kafka.redacted())

    spec = spec or _live.read_experiment(kafka, experiment_id)
    if spec.name != experiment_id:
        raise ValueError(f"the spec is of experiment {spec.name!r}, not {experiment_id!r}")
    log.info("experiment %s: %s (training on %s)", experiment_id, spec.model_dump_json(),
             resolve_device(settings.device, spec))
    robots = _live.RobotSpecs(kafka)
    publishers = _live.KafkaPublishers(kafka, spec)
    metrics = tensorboard.FanOut([_live.KafkaMetrics(kafka)])
    board = tensorboard.TensorBoardSettings()
    if board.enabled:  # scalars for `userctl tensorboard`, beside the metrics topic
        metrics.sinks.append(tensorboard.TensorBoardMetrics(
            board.runs, experiment_id, flush_s=board.flush_s))
    topic = catalog.TRANSITIONS.name + settings.topic_suffix
    live: _live.LiveSteps | None = None
    try:
        learner = loop.Learner(spec, robots.policy_spec, publishers)
        checkpoints = loop.Checkpoints(settings.checkpoint_dir(experiment_id),
                                       settings.keep_checkpoints)
        if fresh:
            _move_aside(checkpoints.directory)
        latest = None if fresh else checkpoints.latest()
        resumed_from: JSON = None
        if latest is not None:
            saved = checkpoints.resume(learner, latest)
            earlier = saved.get("lineage")
            resumed_from = {
                "checkpoint": latest.name,
                "run": earlier.get("run") if isinstance(earlier, dict) else None,
                "update_steps": {t: lt.update_step for t, lt in learner.types.items()}}
            log.info("resumed from %s: update steps %s (it had read %s)", latest,
                     {t: lt.update_step for t, lt in learner.types.items()}, saved.get("kafka"))
        else:
            log.info("starting fresh%s", " (--fresh)" if fresh else "")

        learner.open_known()
        experiments = (experiment_id, *spec.buffer.prior_experiments)
        live = _live.LiveSteps(kafka, topic, experiments=(experiment_id,),
                               reward_fn=spec.reward, robots=robots,
                               max_queued=settings.queued_records)
        history = _history.read(settings.delta_root, experiments=experiments,
                                reward_fn=spec.reward, topic=topic,
                                partitions=live.partitions, sink_name=settings.sink_name,
                                robots=robots.by_robot(), cameras=spec.observation.cameras,
                                image_size=spec.observation.image_size)
        started = time.perf_counter()
        taken = sum(learner.add(steps, "history")
                    for steps in history.steps(settings.history_chunk_rows))
        log.info("warm start: Delta version %s, %d rows (%d new) in %.2f s read + %.2f s "
                 "buffered; history ends at offsets %s", history.version, history.rows, taken,
                 history.read_s, time.perf_counter() - started, history.offsets)
        live.start({p: o + 1 for p, o in history.offsets.items()})
        learner.lineage.header = {
            "run": lineage.new_run_id(), "experiment": experiment_id,
            "spec": spec.model_dump(mode="json"), "seed": spec.algorithm.seed,
            "torch_threads": torch.get_num_threads(), "resumed_from": resumed_from,
            "history": {"table": tables.TRANSITIONS, "version": history.version,
                        "offsets": {f"{topic}:{p}": o for p, o in history.offsets.items()},
                        "rows": history.rows, "chunk_rows": settings.history_chunk_rows,
                        "experiments": list(experiments), "reward_fn": spec.reward,
                        "topic": topic, "partitions": list(live.partitions),
                        "sink_name": settings.sink_name,
                        # Rows left out as outside their robot's bounds, and the spec
                        # that refused them: a replay leaves the same rows out.
                        "refused": {r: {"rows": n, "spec": spec.model_dump(mode="json")}
                                    for r, n in history.refused.items()
                                    if (spec := robots.by_robot().get(r)) is not None}}}
        warm_started: dict[str, JSON] = {
            "delta_version": history.version,
            "delta_offsets": {str(p): o for p, o in history.offsets.items()}}
        del history  # its rows are in the buffers now

        def positions() -> dict[str, JSON]:
            return {**warm_started, "lineage": learner.lineage.position()}

        report = loop.run(
            learner, live, metrics, checkpoints, stop,
            loop.LoopSettings(metrics_s=settings.metrics_s, checkpoint_s=settings.checkpoint_s,
                              idle_s=settings.idle_s,
                              reload_after_divergences=settings.reload_after_divergences),
            positions=positions, source_metrics=live.metrics)
        log.info("learner of %s stopped: %s (update steps %s, idle %.1f s)", experiment_id,
                 report.reason, {t: lt.update_step for t, lt in learner.types.items()},
                 report.idle_s)
        return report
    finally:
        if live is not None:
            live.close()
        publishers.close()
        metrics.close()
        robots.close()


def _move_aside(directory: Path) -> None:
    """Rename an existing checkpoint directory, so a fresh run's checkpoints (numbered
    from update step 0) are the only ones a later resume can pick."""
    if directory.is_dir() and any(directory.iterdir()):
        aside = directory.with_name(f"{directory.name}.before-{time.strftime('%Y%m%dT%H%M%S')}")
        directory.rename(aside)
        log.info("--fresh: earlier checkpoints moved to %s", aside)


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
