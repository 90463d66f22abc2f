"""The ingest log a learner records for replay (``learners.lineage``)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from learners import lineage
from learners.policies import to_safetensors


def published(stream: str, version: int, snap: dict[str, object]) -> lineage.Published:
    return lineage.Published(stream, version, int(str(snap["learner_step"])), "0" * 64,
                             json.loads(json.dumps(snap)))


def test_each_streams_manifests_together_hold_the_whole_ingest_log() -> None:
    rec = lineage.Recorder(streams=["e.a", "e.b"], header={"run": "r1"})
    rec.ingested(0, {}, {"t:0": 3})
    rec.ingested(2, {"t:0": 3}, {"t:0": 3, "t:1": 5})  # only partition 1 moved
    rec.ingested(2, {"t:0": 3}, {"t:0": 3})  # nothing new: no entry
    a1 = rec.for_snapshot("e.a", "a", 2)
    rec.ingested(4, {"t:1": 5}, {"t:1": 9})
    a2 = rec.for_snapshot("e.a", "a", 4)
    b1 = rec.for_snapshot("e.b", "b", 4)
    assert a1["ingest"] == [[0, {"t:0": 3}], [2, {"t:1": 5}]]
    assert (a2["ingest_from"], a2["ingest"]) == (2, [[4, {"t:1": 9}]])
    assert b1["ingest_from"] == 0 and len(b1["ingest"]) == 3  # type: ignore[arg-type]
    (run,) = lineage.runs([published("e.a", 1, a1), published("e.a", 2, a2)])
    assert run.entries == ((0, {"t:0": 3}), (2, {"t:1": 5}), (4, {"t:1": 9}))
    assert run.header == {"run": "r1", "format": lineage.FORMAT}


def test_a_dropped_snapshot_hands_its_entries_to_the_next() -> None:
    rec = lineage.Recorder(streams=["e.a"], header={"run": "r1"})
    rec.ingested(0, {}, {"t:0": 3})
    dropped = rec.for_snapshot("e.a", "a", 1)
    rec.ingested(1, {"t:0": 3}, {"t:0": 4})
    merged = lineage.merge(dropped, rec.for_snapshot("e.a", "a", 2))
    (run,) = lineage.runs([published("e.a", 1, merged)])
    assert run.entries == ((0, {"t:0": 3}), (1, {"t:0": 4}))


def test_a_missing_manifest_is_named_not_replayed_around() -> None:
    rec = lineage.Recorder(streams=["e.a"], header={"run": "r1"})
    snaps = []
    for u in range(3):
        rec.ingested(u, {}, {"t:0": u + 1})
        snaps.append(rec.for_snapshot("e.a", "a", u + 1))
    with pytest.raises(lineage.LineageError, match="entries 1..1"):
        lineage.runs([published("e.a", 1, snaps[0]), published("e.a", 3, snaps[2])])


def test_the_same_weights_serialise_to_the_same_bytes() -> None:
    # safetensors writes its metadata in hash-map order; a replay compares SHA-256s.
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    meta = {f"k{i}": str(i) for i in range(8)}
    blob = to_safetensors(weights, meta)
    (n,) = struct.unpack("<Q", blob[:8])
    header = blob[8 : 8 + n].decode().rstrip()
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    assert n % 8 == 0
    assert to_safetensors(weights, dict(reversed(meta.items()))) == blob
