"""Weights as bytes in the safetensors layout: typed, shaped, no code execution on load.

Torch-free until a torch tensor is handed in: agents parse and check weights with numpy.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.numpy

if TYPE_CHECKING:
    import torch


def _is_tensor(value: Any) -> bool:
    """``value`` is a torch tensor (without importing torch: if it is not loaded, no
    value can be one)."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(value, torch_mod.Tensor)


def to_safetensors(
    weights: Mapping[str, np.ndarray | torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise a flat name -> array mapping; ``metadata`` goes into the header.

    Torch tensors are detached and copied to CPU; arrays are made contiguous.
    """
    arrays = {
        name: (
            value.detach().cpu().contiguous().numpy()  # type: ignore[union-attr]
            if _is_tensor(value)
            else np.ascontiguousarray(value)
        )
        for name, value in weights.items()
    }
    blob = safetensors.numpy.save(arrays, metadata=dict(metadata) if metadata else None)
    return _canonical_header(blob)


def _canonical_header(blob: bytes) -> bytes:
    """``blob`` with its JSON header's keys sorted.  safetensors writes ``__metadata__``
    in hash-map order, which changes from process to process; sorted, the same tensors
    and metadata are the same bytes (and SHA-256) everywhere — what a replay compares."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    # One copy of the tensor bytes (slicing, then concatenating, made two).
    return b"".join((struct.pack("<Q", len(raw)), raw, memoryview(blob)[8 + n :]))


def from_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Parse bytes from :func:`to_safetensors`. Raises ``ValueError`` on malformed input."""
    try:
        return safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own error types, and OverflowError
        raise ValueError(f"not a valid safetensors blob ({len(data)} bytes): {exc}") from exc


def state_dict_to_bytes(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise a torch state dict (tensors only) to safetensors bytes."""
    import safetensors.torch

    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}
    return safetensors.torch.save(tensors, metadata=dict(metadata) if metadata else None)


def bytes_to_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """Parse bytes from :func:`state_dict_to_bytes`. Raises ``ValueError`` if malformed."""
    import safetensors.torch

    try:
        return safetensors.torch.load(data)
    except Exception as exc:
        raise ValueError(f"not a valid safetensors blob ({len(data)} bytes): {exc}") from exc


def safetensors_header(data: bytes | bytearray) -> tuple[Any, int]:
    """A safetensors blob's header (its JSON, parsed) and where the tensor bytes start.

    Reads only the header (8-byte little-endian length, then JSON), so it is cheap on big
    blobs. Raises ``ValueError`` if the header is malformed.
    """
    if len(data) < 8:
        raise ValueError("safetensors blob shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"safetensors header claims {n} bytes but the blob is {len(data)}")
    try:
        return json.loads(data[8 : 8 + n]), 8 + n
    except ValueError as exc:
        raise ValueError(f"safetensors header is not JSON: {exc}") from exc


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob's header ({} if none).
    Raises ``ValueError`` if the header is malformed."""
    header, _ = safetensors_header(data)
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("safetensors __metadata__ is not a string mapping")
    return {str(k): str(v) for k, v in meta.items()}


def kind_and_options(data: bytes, kind_key: str, options_key: str
                     ) -> tuple[str, dict[str, Any]]:
    """The policy kind and options a self-describing blob's metadata names (under
    ``kind_key`` / ``options_key``). Raises ``ValueError`` when they are missing or bad."""
    meta = safetensors_metadata(data)
    if kind_key not in meta:
        raise ValueError(f"weights header has no {kind_key!r}; publish with weights_metadata()")
    options = json.loads(meta.get(options_key, "{}"))
    if not isinstance(options, dict):
        raise ValueError(f"weights header {options_key!r} is not a JSON object")
    return meta[kind_key], options


def non_finite(tensors: Mapping[str, np.ndarray | torch.Tensor]) -> str | None:
    """``None`` if every floating-point element of ``tensors`` is finite, else one line
    naming the first tensor that holds NaN or infinity and how many such elements.

    The one finiteness rule of weights: the learner checks it before it publishes or
    checkpoints, an agent before it swaps a version in.
    """
    for name, value in tensors.items():
        if _is_tensor(value):
            tensor: torch.Tensor = value  # type: ignore[assignment]
            if not tensor.is_floating_point():
                continue
            bad = int((~tensor.detach().isfinite()).sum().item())
        else:
            arr = np.asarray(value)
            if not np.issubdtype(arr.dtype, np.floating):
                continue
            bad = int((~np.isfinite(arr)).sum())
        if bad:
            return f"tensor {name!r} has {bad} non-finite value{'s' if bad > 1 else ''}"
    return None


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as lowercase hex, the form weight manifests carry."""
    return hashlib.sha256(data).hexdigest()
