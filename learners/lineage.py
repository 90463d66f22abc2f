"""Lineage: what each published policy version trained on, enough to replay the learner.

A learner process is one *run*.  Its *header* (same in every record of the run) names the
experiment spec, the seed, torch's thread count, and the Delta warm start: the
``transitions`` table version read, the last Kafka offset of each partition those rows
cover, and how they were fed in.  Its *ingest log* then says, in order, which live
records went into the buffers before which update: entry ``i`` is ``[update_step,
{"topic:partition": end}]`` — before the learner's ``update_step``-th update (all robot
types together) it took, partition by partition in ascending order, every record of
each listed partition from where that partition stood (the warm start's offset + 1, or
the previous entry's end) up to ``end`` (exclusive).  Reading a partition is contiguous,
so the ends alone pin the records down, and the Delta rows that carry those
``kafka_partition``/``kafka_offset`` values are the same steps.

Each weights manifest carries the header and the entries since its stream's previous
manifest (``ingest_from`` is the index of the first), so the manifests of one stream,
in version order, hold the whole log up to their last version; a checkpoint carries the
header and how far the log had got.  ``learners.rerun`` replays it.

Hop: learner process -> ``WeightsManifestV1.lineage`` / checkpoint source positions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from learners.core import JSON

#: Version of the lineage layout below (``format`` in every record).
FORMAT = 1

#: One ingest-log entry: (update step it came before, {"topic:partition": end offset}).
Entry = tuple[int, dict[str, int]]


def new_run_id() -> str:
    """A fresh id for one learner process's run."""
    return uuid.uuid4().hex[:16]


def partition_of(key: str) -> int:
    """The partition number of a ``"topic:partition"`` key."""
    return int(key.rsplit(":", 1)[1])


def ordered(ends: Mapping[str, int]) -> list[tuple[str, int]]:
    """``ends`` in the order the records were taken: ascending partition."""
    return sorted(ends.items(), key=lambda kv: (partition_of(kv[0]), kv[0]))


@dataclass
class Recorder:
    """The ingest log of one run, and what each stream's next manifest must carry.

    ``streams`` are the weights streams that will publish; entries every one of them has
    carried are forgotten, so the log stays as short as the gap between publishes.
    """

    streams: Sequence[str] = ()
    header: dict[str, JSON] = field(default_factory=dict)
    _entries: list[Entry] = field(default_factory=list)
    _base: int = 0
    """log index of ``_entries[0]``."""
    _cursors: dict[str, int] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Entries recorded so far in this run."""
        return self._base + len(self._entries)

    def ingested(self, update_step: int, before: Mapping[str, int],
                 after: Mapping[str, int]) -> None:
        """Note that between ``before`` and ``after`` (source positions, next offsets) the
        buffers took records, ahead of update ``update_step``."""
        ends = {k: int(v) for k, v in after.items() if before.get(k) != v}
        if ends:
            self._entries.append((int(update_step), ends))

    def for_snapshot(self, stream: str, robot_type: str, learner_step: int) -> dict[str, JSON]:
        """The lineage a snapshot of ``stream`` carries: the header and the entries since
        that stream's previous snapshot (which are then handed over)."""
        start = max(self._cursors.get(stream, 0), self._base)
        entries = self._entries[start - self._base:]
        self._cursors[stream] = self.length
        self._forget()
        return {
            **self.header,
            "format": FORMAT,
            "stream": stream,
            "robot_type": robot_type,
            "learner_step": int(learner_step),
            "ingest_from": start,
            "ingest": [[u, dict(ends)] for u, ends in entries],
        }

    def position(self) -> dict[str, JSON]:
        """What a checkpoint records: the header and how far the log had got."""
        return {**self.header, "format": FORMAT, "ingest_length": self.length}

    def _forget(self) -> None:
        if not self.streams:
            return
        done = min(self._cursors.get(s, 0) for s in self.streams)
        if done > self._base:
            del self._entries[: done - self._base]
            self._base = done


def merge(earlier: Mapping[str, JSON], later: Mapping[str, JSON]) -> dict[str, JSON]:
    """``later``'s lineage extended back over ``earlier``'s entries (a snapshot that was
    dropped or failed to send hands its entries to the next one of its stream)."""
    if not earlier or not later:
        return dict(later)
    a, b = earlier.get("ingest"), later.get("ingest")
    if not isinstance(a, list) or not isinstance(b, list):
        return dict(later)
    return {**later, "ingest_from": earlier.get("ingest_from", 0), "ingest": [*a, *b]}


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Published:
    """One published version as replay sees it (from a manifest)."""

    stream: str
    version: int
    learner_step: int
    sha256: str
    lineage: Mapping[str, JSON]

    @property
    def run(self) -> str:
        return str(self.lineage.get("run", ""))


class LineageError(ValueError):
    """The recorded lineage cannot be replayed (missing, holed, or of another format)."""


@dataclass(frozen=True)
class Run:
    """One learner run's header, its published versions and its ingest log."""

    header: Mapping[str, JSON]
    versions: tuple[Published, ...]
    """by (stream, version)."""
    entries: tuple[Entry, ...]

    @property
    def run_id(self) -> str:
        return str(self.header.get("run", ""))


def runs(published: Iterable[Published]) -> list[Run]:
    """The runs of ``published`` versions in the order they started, each with its whole
    ingest log up to its newest version.  Versions without lineage are left out.

    Raises :class:`LineageError` when a run's log has a hole (a manifest is missing).
    """
    by_run: dict[str, list[Published]] = {}
    for p in sorted(published, key=lambda p: (p.version, p.stream)):
        if p.lineage.get("format") != FORMAT or not p.run:
            continue
        by_run.setdefault(p.run, []).append(p)
    out = []
    for run_id, versions in by_run.items():
        log: dict[int, Entry] = {}
        for p in versions:
            start = p.lineage.get("ingest_from")
            ingest = p.lineage.get("ingest")
            if not isinstance(start, int) or not isinstance(ingest, list):
                raise LineageError(f"{p.stream} v{p.version}: lineage has no ingest log")
            for i, raw in enumerate(ingest):
                log.setdefault(start + i, _entry(raw, p))
        missing = sorted(set(range(len(log) and max(log) + 1)) - set(log))
        if missing:
            raise LineageError(f"run {run_id}: ingest entries {missing[0]}..{missing[-1]} are in "
                               "no manifest found (a manifest is missing from the log)")
        header = {k: v for k, v in versions[0].lineage.items() if k not in _PER_SNAPSHOT}
        out.append(Run(header, tuple(versions), tuple(log[i] for i in sorted(log))))
    return out


_PER_SNAPSHOT = frozenset({"stream", "robot_type", "learner_step", "ingest_from", "ingest"})


def _entry(raw: JSON, p: Published) -> Entry:
    if (not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], int)
            or not isinstance(raw[1], dict)):
        raise LineageError(f"{p.stream} v{p.version}: malformed ingest entry {raw!r:.80}")
    return raw[0], {str(k): int(v) for k, v in raw[1].items() if isinstance(v, int)}


def trained_on(run: Run, version: Published) -> dict[str, JSON]:
    """What ``version`` (one of ``run``'s) trained on: the warm start's table, Delta
    version and offsets, and per partition the live offsets taken before it was published
    (``first``..``last``, in ``ingests`` takes)."""
    start = version.lineage.get("ingest_from")
    ingest = version.lineage.get("ingest")
    upto = (start if isinstance(start, int) else 0) + (len(ingest) if isinstance(ingest, list)
                                                       else 0)
    hist = run.header.get("history")
    hist = hist if isinstance(hist, dict) else {}
    offsets = hist.get("offsets")
    pos = {str(k): int(str(v)) + 1 for k, v in offsets.items()} if isinstance(offsets, dict) \
        else {}
    live: dict[str, dict[str, JSON]] = {}
    for u, ends in run.entries[:upto]:
        for key, end in ordered(ends):
            span = live.setdefault(key, {"first": pos.get(key, 0), "last": end - 1,
                                         "ingests": 0, "first_update": u})
            span["last"] = end - 1
            span["ingests"] = int(str(span["ingests"])) + 1
            span["last_update"] = u
    return {
        "stream": version.stream, "version": version.version,
        "learner_step": version.learner_step, "sha256": version.sha256,
        "run": run.run_id, "seed": run.header.get("seed"),
        "torch_threads": run.header.get("torch_threads"),
        "resumed_from": run.header.get("resumed_from"),
        "warm_start": {k: hist.get(k) for k in ("table", "version", "offsets", "rows",
                                                "experiments", "reward_fn")},
        "live": {"topic": hist.get("topic"), "partitions": dict(live)},
    }
