"""The Delta side of the sink: decoded records in, rows + app transactions committed.

This module never imports Kafka (STYLE §17, kafka-delta-ingest's seam): the runner
(:mod:`pipeline.sink`) does assignment, seeking, consuming, decoding and dead-lettering,
and hands each record here as ``(partition, offset, payload)``.

Guarantee: **exactly-once via Delta app transactions.**  Every commit carries one table's
buffered rows *and*, for each Kafka partition they came from, an app transaction
(:func:`topics.tables.app_id`) whose ``version`` is the last offset written.  The runner
reads each partition from :meth:`DeltaWriter.assign`'s offset (that version + 1), so a
crash at any instant either lost a commit (rows and offsets together: read again) or kept
it (skipped): no row is lost, none is doubled.

Two writers of one partition (a rebalance in flight, a zombie) are fenced by the same
transaction: before committing, the writer checks that each partition's transaction in
the newest table snapshot is still the version it last wrote or found; a concurrent
commit that moves it between that check and ours fails ours (Delta's conflict check on
app ids).  Either way the writer drops its buffered rows of those partitions, re-reads
where the table now stands, and tells the runner where to read again.

Step tables (``transitions_raw``, ``transitions``) are deduplicated by step identity, the
rule of :class:`topics.tables.HighWater`: agents re-send spooled records (at-least-once)
and reward jobs retry (at-least-once), so a step can arrive twice as two Kafka records.
Per partition the writer keeps each stream's highest ``seq`` (recomputed from Delta on
every assignment) and drops rows at or below it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from pipeline import tables
from schemas.transitions import RewardedTransitionBatch, TransitionBatch
from topics import serde
from topics import tables as contract

log = logging.getLogger(__name__)


def open_table(path: str) -> DeltaTable | None:
    """The Delta table at ``path``, or None before its first commit."""
    try:
        return DeltaTable(path)
    except TableNotFoundError:
        return None


#: A step batch waiting for the next commit: the batch, where it was read, and the mask of
#: its rows to write (None: all).  Converted to Delta rows at commit, all together.
_Steps = tuple[TransitionBatch | RewardedTransitionBatch, tables.Source,
               npt.NDArray[np.bool_] | None]


@dataclass
class _Buffer:
    """Rows waiting for the next commit, and the last offset they cover per partition."""

    parts: list[pa.Table] = field(default_factory=list)
    steps: list[_Steps] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    since: float = 0.0
    last_offset: dict[int, int] = field(default_factory=dict)

    def add(self, partition: int, offset: int, table: pa.Table | None, size: int) -> None:
        if not self.last_offset and not self.parts and not self.steps:
            self.since = time.monotonic()
        if table is not None and table.num_rows:
            self.parts.append(table)
            self.rows += table.num_rows
        self.nbytes += size
        self.last_offset[partition] = offset

    def add_steps(self, partition: int, offset: int, steps: _Steps, size: int) -> None:
        self.add(partition, offset, None, size)
        keep = steps[2]
        rows = len(steps[0]) if keep is None else int(np.count_nonzero(keep))
        if rows:
            self.steps.append(steps)
            self.rows += rows

    def table(self) -> pa.Table | None:
        """Every buffered row as one table (step batches converted here, all at once)."""
        parts = list(self.parts)
        if self.steps:
            parts.append(tables.many_batch_rows(self.steps))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else pa.concat_tables(
            parts, promote_options="permissive")

    def drop(self, partition: int) -> None:
        """Forget everything of ``partition`` (it is re-read from its Delta version)."""
        if partition not in self.last_offset:
            return
        del self.last_offset[partition]
        self.parts = [t.filter(pc.not_equal(t.column("kafka_partition"), partition))
                      for t in self.parts]
        self.parts = [t for t in self.parts if t.num_rows]
        self.steps = [st for st in self.steps if st[1].partition != partition]
        self.rows = sum(t.num_rows for t in self.parts) + sum(
            len(b) if keep is None else int(np.count_nonzero(keep)) for b, _, keep in self.steps)
        if not self.last_offset:
            self.parts, self.steps, self.rows, self.nbytes = [], [], 0, 0

    def __bool__(self) -> bool:
        return bool(self.last_offset)


@dataclass(frozen=True)
class FlushPolicy:
    """When a buffer is due: at ``rows`` rows, ``nbytes`` record bytes, or ``age_s`` old."""

    rows: int = 100_000
    nbytes: int = 64 << 20
    age_s: float = 2.0


class DeltaWriter:
    """Writes the records of one topic to its Delta table, exactly once.

    Usage (what the runner does; a test does the same without Kafka)::

        writer = DeltaWriter(path, "transitions.raw", app_id=lambda p: f"sink-…-{p}")
        start = writer.assign([0, 1])       # partition -> next offset (None: its beginning)
        writer.add(0, 17, batch, size=len(value))   # a decoded record (None: refused)
        moved = writer.commit()             # partitions to read again, from these offsets
    """

    def __init__(self, path: str, topic: str, app_id: Callable[[int], str], *,
                 dedupe: bool, flush: FlushPolicy | None = None) -> None:
        self.path = path
        self.topic = topic
        self.app_id = app_id
        self.dedupe = dedupe
        self.flush = flush or FlushPolicy()
        self.buffer = _Buffer()
        self.commits = 0
        self.committed_rows = 0
        self.repeated = 0
        """rows dropped as steps already taken (same step identity)."""
        self._expected: dict[int, int | None] = {}  # partition -> txn version we expect
        self._position: dict[int, int] = {}  # partition -> next offset we accept
        self._marks: dict[int, contract.HighWater] = {}

    # -- where each partition stands ----------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """Take ``partitions`` over from where the table stands; returns the offset to
        read each from (None: from its beginning, nothing written yet).  Anything
        buffered of them is dropped (it is read again)."""
        dt = open_table(self.path)
        out: dict[int, int | None] = {}
        for p in partitions:
            version = None if dt is None else dt.transaction_version(self.app_id(p))
            self._expected[p] = version
            self._position[p] = 0 if version is None else version + 1
            self.buffer.drop(p)
            if self.dedupe:
                self._marks[p] = self._load_marks(dt, p)
            out[p] = None if version is None else version + 1
        return out

    def release(self, partitions: Iterable[int]) -> None:
        """Give ``partitions`` up: their buffered rows are not written (their next owner
        reads them again from the table's version)."""
        for p in partitions:
            self.buffer.drop(p)
            self._expected.pop(p, None)
            self._position.pop(p, None)
            self._marks.pop(p, None)

    def _load_marks(self, dt: DeltaTable | None, partition: int) -> contract.HighWater:
        marks = contract.HighWater()
        if dt is None:
            return marks
        dataset = dt.to_pyarrow_dataset()
        if "kafka_partition" not in dataset.schema.names:  # no rows yet, only versions
            return marks
        wanted = [c for c in (*contract.STREAM, "seq", "observed_ns")
                  if c in dataset.schema.names]
        marks.load(dataset.to_table(columns=wanted,
                                    filter=pc.field("kafka_partition") == partition))
        return marks

    # -- records -> buffer --------------------------------------------------------------

    def add(self, partition: int, offset: int, payload: serde.Payload | None,
            size: int = 0) -> bool:
        """Buffer one record's rows; ``payload`` None is a refused record (dead-lettered
        by the caller) whose offset still moves with the next commit.  Returns False,
        buffering nothing, for a record of a partition not assigned here or one already
        written or buffered (offset below the partition's position)."""
        position = self._position.get(partition)
        if position is None or offset < position:
            return False
        self._position[partition] = offset + 1
        source = tables.Source(self.topic, partition, offset)
        if isinstance(payload, TransitionBatch | RewardedTransitionBatch):
            # Converted to rows at commit, with every other buffered batch (one pass).
            keep = self._new_steps(partition, payload) if self.dedupe else None
            self.buffer.add_steps(partition, offset, (payload, source, keep), size)
            return True
        table = None if payload is None else tables.rows(payload, source)
        self.buffer.add(partition, offset, table, size)
        return True

    def _new_steps(self, partition: int, batch: TransitionBatch | RewardedTransitionBatch
                   ) -> npt.NDArray[np.bool_] | None:
        """The mask of ``batch``'s rows not written before (None: all of them)."""
        fn = batch.reward_fn if isinstance(batch, RewardedTransitionBatch) else ""
        keep = self._marks.setdefault(partition, contract.HighWater()).fresh(
            batch.seq, experiment_id=batch.event.experiment_id, robot_id=batch.robot_id,
            incarnation=batch.event.incarnation, reward_fn=fn)
        if keep.all():
            return None
        dropped = int((~keep).sum())
        self.repeated += dropped
        log.info("dropping %d repeated %s steps of %s (incarnation %s)", dropped,
                 fn or "raw", batch.robot_id, batch.event.incarnation)
        return keep

    def due(self, now: float | None = None) -> bool:
        """Whether the buffer should be committed now."""
        b, f = self.buffer, self.flush
        now = time.monotonic() if now is None else now
        return bool(b) and (b.rows >= f.rows or b.nbytes >= f.nbytes or now - b.since >= f.age_s)

    # -- buffer -> Delta ----------------------------------------------------------------

    def commit(self) -> dict[int, int | None]:
        """Commit the buffer with one app transaction per partition it covers.

        Returns the partitions another writer moved (found before committing, or by
        Delta's conflict check), each with the offset to read it again from (None: its
        beginning); their buffered rows were dropped.  Empty when all was committed (or
        nothing was buffered)."""
        buf = self.buffer
        if not buf:
            return {}
        dt = open_table(self.path)
        moved: dict[int, int | None] = {}
        if dt is not None:
            stale = [p for p in buf.last_offset
                     if dt.transaction_version(self.app_id(p)) != self._expected.get(p)]
            if stale:
                moved = self._moved(stale)
                if not buf:
                    return moved
        data = buf.table()
        txns = [Transaction(self.app_id(p), o) for p, o in sorted(buf.last_offset.items())]
        if data is None:
            # Only refused records: commit no rows, but move the partitions' versions.
            data = (pa.table({contract.PARTITION_COLUMN: pa.array([], pa.string())})
                    if dt is None else dt.to_pyarrow_dataset().schema.empty_table())
        try:
            write_deltalake(
                dt if dt is not None else self.path, data, mode="append",
                schema_mode="merge", partition_by=list(tables.PARTITION_BY),
                commit_properties=CommitProperties(app_transactions=txns))
        except (CommitFailedError, DeltaError) as exc:
            log.warning("%s: commit refused (%s); re-reading its partitions", self.path, exc)
            return {**moved, **self._moved(list(buf.last_offset))}
        for p, o in buf.last_offset.items():
            self._expected[p] = o
        self.commits += 1
        self.committed_rows += buf.rows
        log.debug("%s: committed %d rows up to %s", self.path, buf.rows, buf.last_offset)
        self.buffer = _Buffer()
        return moved

    def _moved(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """Another writer moved ``partitions``: start them again from the table."""
        again = self.assign(partitions)
        for p, offset in again.items():
            log.warning("%s[%d]: another writer moved its Delta version; re-reading from %s",
                        self.topic, p, "the beginning" if offset is None else offset)
        return again


# -- compaction ---------------------------------------------------------------------------


#: How long files a table no longer references stay on disk by default: longer than any
#: reader here holds a snapshot open (a learner's warm start, a back-fill or replay read
#: their snapshot in minutes), far shorter than Delta's 7 days, so a long run's disk stays
#: bounded by about an hour of compaction churn.  Time travel reaches back this far.
DEFAULT_RETENTION_H = 1.0


class Compactor:
    """Table upkeep in a background thread, off the ingest path: compacts each table's
    small files, then vacuums the files compaction replaced once they are older than
    ``retention_h`` (None: never) and drops log files past the table's log retention.
    Its commits never touch app transactions, so appends never conflict with them."""

    def __init__(self, paths: Sequence[str], interval_s: float, min_files: int,
                 retention_h: float | None = DEFAULT_RETENTION_H) -> None:
        self._paths = list(paths)
        self._interval = interval_s
        self._min_files = min_files
        self._retention_h = retention_h
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="delta-compactor",
                                        daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            for path in self._paths:
                compact(path, self._min_files)
                if self._retention_h is not None:
                    vacuum(path, self._retention_h)


def compact(path: str, min_files: int = 2) -> dict[str, object] | None:
    """Bin-pack ``path``'s small files if it has at least ``min_files``; returns the
    optimize metrics, or None when there was nothing to do or a writer won the race."""
    dt = open_table(path)
    if dt is None or len(dt.file_uris()) < min_files:
        return None
    try:
        metrics: dict[str, object] = dt.optimize.compact()
    except CommitFailedError as exc:  # lost a race with another compactor: next round
        log.info("compaction of %s skipped: %s", path, exc)
        return None
    log.info("compacted %s: %s files -> %s", path, metrics.get("numFilesRemoved"),
             metrics.get("numFilesAdded"))
    return metrics


def vacuum(path: str, retention_h: float = DEFAULT_RETENTION_H) -> list[str]:
    """Delete ``path``'s files that no table version of the last ``retention_h`` hours
    references (what compaction replaced), and log files past the table's log retention;
    returns the deleted data files.  A reader holding a snapshot older than that loses
    its files: keep ``retention_h`` above the longest read."""
    dt = open_table(path)
    if dt is None:
        return []
    try:
        removed = dt.vacuum(retention_hours=max(0, math.ceil(retention_h)), dry_run=False,
                            enforce_retention_duration=False)
        dt.cleanup_metadata()
    except (CommitFailedError, DeltaError) as exc:  # a race with a writer: next round
        log.info("vacuum of %s skipped: %s", path, exc)
        return []
    if removed:
        log.info("vacuumed %s: %d unreferenced files deleted", path, len(removed))
    return removed
