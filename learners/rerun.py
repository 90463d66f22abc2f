"""Replay a learner run from the log: the Delta history and the lineage in its manifests.

``userctl replay EXPERIMENT --learner`` (DESIGN §4: a past experiment replayed into a new
learner).  For each run (:class:`learners.lineage.Run`) it builds the learner the run's
spec asks for, feeds it the warm start the run read (the same ``transitions`` table
version, in the same chunks), then the live records the run took — read back from the
Delta rows that carry their ``kafka_partition``/``kafka_offset`` — each before the same
update, and runs the same updates.  On CPU, with the run's torch thread count, the policy
at every published learner step hashes to its manifest's ``sha256``, bit for bit.

With another algorithm or policy (``overrides``) it re-learns from the same data in the
same order, offline; nothing is compared then.

Reads Delta only (``deltalake``/pyarrow, table names from ``topics.tables``); the
manifests come from the caller (Kafka or the ``policies`` table).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from learners import _history, lineage, loop
from learners.policies import PolicySpec
from learners.weights_sync import PublisherStats, Snapshot, serialise
from schemas.experiment import ExperimentSpec
from schemas.spaces import RobotSpec
from topics import tables

log = logging.getLogger(__name__)

#: Kafka source columns of every sunk row.
_SOURCE = ("kafka_partition", "kafka_offset", "batch_row")


@dataclass(frozen=True)
class Check:
    """One published version, replayed."""

    stream: str
    version: int
    learner_step: int
    expected: str
    got: str | None
    """the replayed policy's SHA-256 at that learner step; None if never reached."""

    @property
    def status(self) -> str:
        if self.got is None:
            return "MISSING"
        if not self.expected:
            return "-"
        return "OK" if self.got == self.expected else "DIFF"


@dataclass
class RunReport:
    """What replaying one run did."""

    run: str
    checks: list[Check] = field(default_factory=list)
    skipped: str = ""
    """why the run was not replayed ('' when it was)."""
    updates: int = 0
    history_rows: int = 0
    live_records: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.skipped and all(c.status in ("OK", "-") for c in self.checks)


class _NullPublisher:
    """Replay publishes nothing: it compares hashes at the recorded learner steps."""

    def __init__(self) -> None:
        self.stats = PublisherStats()

    @property
    def published_version(self) -> int:
        return 0

    def publish(self, snapshot: Snapshot) -> None:
        pass


def sha256_of(snapshot: Snapshot) -> tuple[str, bytes]:
    """The SHA-256 and bytes of the blob a publisher would send for ``snapshot``."""
    blob = serialise(snapshot)
    return hashlib.sha256(blob).hexdigest(), blob


def replay_run(
    root: Path | str,
    run: lineage.Run,
    *,
    overrides: Mapping[str, str] | None = None,
    first_versions: int | None = None,
    out: Path | None = None,
) -> RunReport:
    """Replay ``run`` over the Delta history at ``root``.

    ``overrides`` (``algorithm``/``policy`` names) re-learn with another algorithm or
    policy; hashes are then only reported.  ``first_versions`` stops after that many
    versions of each stream.  ``out`` receives each reached version's blob.

    Raises :class:`learners.lineage.LineageError` when the history lacks what the run
    read (the sink has not caught up, or rows were deleted).
    """
    started = time.perf_counter()
    report = RunReport(run.run_id)
    header = run.header
    if header.get("resumed_from"):
        report.skipped = (f"resumed from checkpoint {header['resumed_from']}: replay starts "
                          "runs from scratch only")
        return report
    spec = ExperimentSpec.model_validate(header["spec"])
    verify = not overrides
    if overrides:
        spec = _override(spec, overrides)
    threads = header.get("torch_threads")
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)

    wanted: dict[str, list[lineage.Published]] = {}
    specs: dict[str, PolicySpec] = {}
    for p in run.versions:
        wanted.setdefault(p.stream, []).append(p)
        rt = p.lineage.get("robot_type")
        if isinstance(rt, str) and "policy_spec" in p.lineage:
            specs.setdefault(rt, loop.policy_spec_of(p.lineage["policy_spec"]))
    for versions in wanted.values():
        versions.sort(key=lambda p: p.version)
        if first_versions is not None:
            del versions[first_versions:]
    by_step = {(s, p.learner_step): p for s, vs in wanted.items() for p in vs}
    remaining = set(by_step)

    learner = loop.Learner(spec, specs.get, lambda _stream: (_NullPublisher(), 0))
    learner.open_known()

    def check() -> None:
        for t in learner.types.values():
            key = (t.stream, t.update_step)
            if key not in remaining:
                continue
            remaining.discard(key)
            p = by_step[key]
            got, blob = sha256_of(t.snapshot({}))
            report.checks.append(Check(t.stream, p.version, p.learner_step,
                                       p.sha256 if verify else "", got))
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{t.stream}-v{p.version}.safetensors").write_bytes(blob)

    def advance(target: int | None) -> bool:
        """Update until the total update step is ``target`` (or as far as data allows)."""
        check()
        while remaining and (target is None or learner.update_step < target):
            if learner.train_round() == 0:
                return target is None or not verify
            check()
        return target is None or learner.update_step == target or not verify

    hist = header.get("history")
    if not isinstance(hist, dict):
        raise lineage.LineageError(f"run {run.run_id}: lineage has no history section")
    topic = str(hist["topic"])
    starts = _warm_start(root, learner, hist, report)
    live = _LiveRows(root, experiment=str(header["experiment"]), reward_fn=str(hist["reward_fn"]),
                     topic=topic, sink_name=str(hist["sink_name"]), starts=starts,
                     ends=_last_ends(run.entries), cameras=learner.spec.observation.cameras,
                     image_size=learner.spec.observation.image_size)
    for u, ends in run.entries:
        if not remaining:
            break
        if not advance(u):
            log.warning("run %s: update step %d instead of %d before an ingest: the data "
                        "differ from what the run read", run.run_id, learner.update_step, u)
            break
        for key, end in lineage.ordered(ends):
            for steps in live.take(key, end):
                learner.add(steps, "live")
                report.live_records += 1
    advance(None)
    report.updates = learner.update_step
    for s, step in sorted(remaining):
        p = by_step[(s, step)]
        report.checks.append(Check(s, p.version, step, p.sha256 if verify else "", None))
    report.checks.sort(key=lambda c: (c.stream, c.version))
    report.seconds = time.perf_counter() - started
    return report


def _override(spec: ExperimentSpec, overrides: Mapping[str, str]) -> ExperimentSpec:
    data = spec.model_dump(mode="json")
    if "algorithm" in overrides:
        data["algorithm"]["name"] = overrides["algorithm"]
    if "policy" in overrides:
        data["policy"]["kind"] = overrides["policy"]
    return ExperimentSpec.model_validate(data)


def _warm_start(root: Path | str, learner: loop.Learner, hist: Mapping[str, object],
                report: RunReport) -> dict[str, int]:
    """Feed the run's warm start; returns where each partition's live records began."""
    version = hist.get("version")
    offsets = hist.get("offsets")
    recorded = {str(k): int(str(v)) for k, v in offsets.items()} if isinstance(offsets, dict) \
        else {}
    if isinstance(version, int):
        partitions = hist.get("partitions")
        experiments = hist.get("experiments")
        history = _history.read(
            root, experiments=[str(e) for e in experiments] if isinstance(experiments, list)
            else [], reward_fn=str(hist["reward_fn"]), topic=str(hist["topic"]),
            partitions=[int(str(p)) for p in partitions] if isinstance(partitions, list) else [],
            sink_name=str(hist["sink_name"]), version=version, robots=_refused_by(hist),
            cameras=learner.spec.observation.cameras,
            image_size=learner.spec.observation.image_size)
        got = {f"{hist['topic']}:{p}": o for p, o in history.offsets.items()}
        if got != recorded:
            raise lineage.LineageError(f"Delta version {version} holds offsets {got}, the run "
                                       f"recorded {recorded}")
        chunk = hist.get("chunk_rows")
        for steps in history.steps(chunk if isinstance(chunk, int) else 65_536):
            learner.add(steps, "history")
        report.history_rows = history.rows
    return {k: o + 1 for k, o in recorded.items()}


def _refused_by(hist: Mapping[str, object]) -> dict[str, RobotSpec]:
    """The specs under which the run's warm start left rows out (robot id -> spec)."""
    refused = hist.get("refused")
    if not isinstance(refused, dict):
        return {}
    return {str(r): RobotSpec.model_validate(v["spec"]) for r, v in refused.items()
            if isinstance(v, dict) and isinstance(v.get("spec"), dict)}


def _last_ends(entries: Iterable[lineage.Entry]) -> dict[str, int]:
    ends: dict[str, int] = {}
    for _, e in entries:
        ends.update(e)
    return ends


class _LiveRows:
    """The Delta rows of the live records a run took, by (partition, offset)."""

    def __init__(self, root: Path | str, *, experiment: str, reward_fn: str, topic: str,
                 sink_name: str, starts: Mapping[str, int], ends: Mapping[str, int],
                 cameras: Sequence[str] = (), image_size: tuple[int, int] = (64, 64)) -> None:
        self._experiment = experiment
        self._history: _history.History | None = None
        self._pos = dict(starts)
        self._rows: dict[int, tuple[pa.Table, np.ndarray]] = {}
        if not ends:
            return
        # Read as the warm start reads (same columns, same step-identity rules), plus
        # each row's Kafka source.
        history = _history.read(root, experiments=[experiment], reward_fn=reward_fn,
                                topic=topic,
                                partitions=sorted({lineage.partition_of(k) for k in ends}),
                                sink_name=sink_name, extra_columns=_SOURCE,
                                cameras=cameras, image_size=image_size)
        self._history = history
        for key, end in ends.items():
            written = history.offsets.get(lineage.partition_of(key))
            if written is None or written < end - 1:
                raise lineage.LineageError(
                    f"Delta holds {key} up to offset {written}, the run read up to {end - 1}: "
                    f"let the sink {sink_name!r} catch up, then replay")
        table = history.table
        if table is None or table.num_rows == 0:
            return
        if any(c not in table.column_names for c in _SOURCE):
            raise lineage.LineageError(f"the {tables.TRANSITIONS} table has no Kafka source "
                                       f"columns {_SOURCE}")
        table = table.sort_by([(c, "ascending") for c in _SOURCE])
        parts = np.asarray(table.column("kafka_partition").to_numpy(zero_copy_only=False))
        for p in np.unique(parts).tolist():
            rows = table.filter(pc.equal(table.column("kafka_partition"), p))
            offsets = np.asarray(rows.column("kafka_offset").to_numpy(zero_copy_only=False),
                                 np.int64)
            self._rows[int(p)] = (rows, offsets)

    def take(self, key: str, end: int) -> list[loop.Steps]:
        """The steps of ``key``'s records from where it stands up to ``end`` (exclusive),
        one :class:`~learners.loop.Steps` per record, in offset order."""
        start = self._pos.get(key, 0)
        self._pos[key] = end
        found = self._rows.get(lineage.partition_of(key))
        if found is None:
            return []
        rows, offsets = found
        lo, hi = np.searchsorted(offsets, [start, end], side="left").tolist()
        out = []
        i = lo
        while i < hi:
            j = int(np.searchsorted(offsets, offsets[i], side="right"))
            record = rows.slice(i, j - i)
            robot_type = str(record.column("robot_type")[0].as_py())
            steps = _history.steps_of_rows(self._experiment, robot_type, record)
            out.append(steps if self._history is None
                       else self._history.with_frames(steps, record))
            i = j
        return out


def manifests_from_delta(root: Path | str, experiment: str) -> list[lineage.Published]:
    """Every version of ``experiment``'s weights streams in the ``policies`` table (the
    sink's record of ``weights.manifests``); [] if the table is absent."""
    try:
        dt = DeltaTable(tables.table_path(root, tables.POLICIES))
    except TableNotFoundError:
        return []
    dataset = dt.to_pyarrow_dataset()
    if "lineage" not in dataset.schema.names:
        return []
    table = dataset.to_table(
        columns=["experiment_id", "version", "learner_step", "sha256", "lineage"],
        filter=pc.starts_with(pc.field(tables.PARTITION_COLUMN), f"{experiment}."))
    out = []
    for row in table.to_pylist():
        raw = json.loads(row["lineage"]) if row["lineage"] else {}
        if isinstance(raw, dict) and raw.get("experiment") == experiment:
            out.append(lineage.Published(row["experiment_id"], int(row["version"]),
                                         int(row["learner_step"]), str(row["sha256"]), raw))
    return out
