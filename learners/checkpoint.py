"""Atomic learner checkpoints: one safetensors file, JSON for everything not a tensor.

A checkpoint holds an algorithm's :class:`~learners.core.TrainingState` (networks, target
networks, optimisers, temperature, update step, RNG) and the caller's *source positions*
(e.g. the Delta table version and the Kafka offsets whose data the buffer has consumed), so
a learner resumes from exactly where its inputs were. The file is written to a temporary
name in the same directory, fsynced, then renamed over the final name: a reader sees the
old checkpoint or the new one, never half of one, even if the writer is SIGKILLed.

Layout: tensors as safetensors; the header's ``__metadata__`` holds ``format``,
``format_version``, ``meta`` (the state's JSON) and ``source_positions`` (JSON).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from learners.core import JSON, Algorithm, TrainingState
from learners.policies import _weights

FORMAT = "user.learner.checkpoint"
FORMAT_VERSION = "1"
_NAME = re.compile(r"^checkpoint-(\d{12})\.safetensors$")


class NonFiniteCheckpoint(ValueError):
    """A state holding NaN or infinity, which is never written as a checkpoint."""


def path_for(directory: Path, update_step: int) -> Path:
    """Where the checkpoint of ``update_step`` goes in ``directory``."""
    return directory / f"checkpoint-{update_step:012d}.safetensors"


def save(
    path: Path, algorithm: Algorithm, source_positions: Mapping[str, JSON] | None = None
) -> Path:
    """Atomically write ``algorithm``'s state and ``source_positions`` to ``path``.

    Creates the parent directory. Returns ``path``. Raises ``OSError`` if the disk refuses;
    an earlier checkpoint at ``path`` is then left intact.
    """
    return save_state(path, algorithm.state(), source_positions)


def save_state(
    path: Path, state: TrainingState, source_positions: Mapping[str, JSON] | None = None
) -> Path:
    """Like :func:`save`, for a state already taken (e.g. several algorithms' merged).

    Raises :class:`NonFiniteCheckpoint` (writing nothing) if a tensor is not finite, so
    the newest checkpoint is always one a diverged learner can go back to.
    """
    bad = _weights.non_finite(state.tensors)
    if bad is not None:
        raise NonFiniteCheckpoint(f"not checkpointing {path.name}: {bad}")
    data = _weights.state_dict_to_bytes(
        state.tensors,
        metadata={
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": json.dumps(state.meta, sort_keys=True),
            "source_positions": json.dumps(dict(source_positions or {}), sort_keys=True),
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def read(path: Path) -> tuple[TrainingState, dict[str, JSON]]:
    """The training state and source positions stored at ``path``.

    Raises ``ValueError`` if the file is not a checkpoint of this format.
    """
    data = path.read_bytes()
    header = _weights.safetensors_metadata(data)
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a learner checkpoint (format {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {header.get('format_version')}; this "
            f"learner reads version {FORMAT_VERSION}"
        )
    meta = json.loads(header["meta"])
    positions = json.loads(header["source_positions"])
    return TrainingState(_weights.bytes_to_state_dict(data), meta), positions


def load(path: Path, algorithm: Algorithm) -> dict[str, JSON]:
    """Restore ``algorithm`` from ``path``; returns the source positions saved with it."""
    state, positions = read(path)
    algorithm.load_state(state)
    return positions


def latest(directory: Path) -> Path | None:
    """The checkpoint with the highest update step in ``directory``, or None."""
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (and stale temp files); returns them."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    found = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    doomed = found[:-keep]
    newest = found[-1].stat().st_mtime if found else 0.0
    doomed += [
        p
        for p in directory.glob(".checkpoint-*.tmp")
        if p.stat().st_mtime < newest  # left by a writer killed before its rename
    ]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
