"""Small files tests read.

``instructions.npz``: the sentence encoder's embeddings of the instructions tests use
(written by ``learners.policies._text.save``), for ``USER_TEXT_EMBEDDINGS`` — the path a
machine without the encoder takes — so tests about something else skip loading it.
``tests/unit/test_vla_policy.py`` checks they still match the encoder.  Regenerate with
``_text.save(str(INSTRUCTION_EMBEDDINGS), ["reach the target", ...])``.
"""

from pathlib import Path

#: The instruction embeddings (module docstring).
INSTRUCTION_EMBEDDINGS = Path(__file__).with_name("instructions.npz")
