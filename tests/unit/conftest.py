"""Fixtures several unit-test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from learners.policies import _text
from tests.data import INSTRUCTION_EMBEDDINGS


@pytest.fixture
def precomputed_embeddings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Instruction embeddings from ``tests/data``: no sentence-encoder load (tens of
    seconds on a loaded machine) in a test about something else."""
    monkeypatch.setenv("USER_TEXT_EMBEDDINGS", str(INSTRUCTION_EMBEDDINGS))
    _text._precomputed.cache_clear()
    _text._one.cache_clear()
    yield
    monkeypatch.delenv("USER_TEXT_EMBEDDINGS")
    _text._precomputed.cache_clear()
    _text._one.cache_clear()
