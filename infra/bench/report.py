"""Writing benchmark results: machine description and a section of BENCHMARKS.md.

Each benchmark owns one section between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``; :func:`write_section` replaces only that section (or
appends it), so benchmarks can be rerun one at a time.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

#: Where results go unless a benchmark is told otherwise: the repository's BENCHMARKS.md.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"

_TITLE = (
    "# Benchmarks\n\n"
    "Measured with `userctl bench …`; each section is rewritten by its own benchmark.\n"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_lines(command: list[str] | None = None) -> list[str]:
    """Markdown bullet lines: machine, software, command, date."""
    import numpy
    import pyarrow

    cmd = command if command is not None else ["userctl", *sys.argv[1:]]
    return [
        f"- machine: {cpu_model()}, {usable_cores()} usable cores "
        f"({os.cpu_count()} online), {platform.system()} {platform.release()}",
        f"- software: Python {platform.python_version()}, pyarrow {pyarrow.__version__}, "
        f"numpy {numpy.__version__}",
        f"- command: `{shlex.join(cmd)}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def section_of(text: str, name: str) -> str | None:
    """``name``'s section in ``text`` (between its markers), or None when it has none."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_section(name: str, body: str, path: Path | None = None) -> None:
    """Put ``body`` into ``name``'s section of ``path`` (default :data:`DEFAULT_PATH`, read
    when called), leaving other sections alone."""
    path = DEFAULT_PATH if path is None else path
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else _TITLE
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
