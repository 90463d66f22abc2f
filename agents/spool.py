"""A bounded, ordered, on-disk spool of encoded records.

An agent must keep its robot running through a broker outage and lose nothing: every
record it produces is first appended here (a local file write, never a network call),
and a forwarder drains the spool to Kafka in order, acknowledging records only once
the broker has them.  A process that dies re-sends, on restart, what was appended but
not acknowledged (at-least-once; consumers drop duplicates by robot, episode and step).

Layout: ``seg-<n>.log`` files of framed records plus ``cursor.json`` (the first
unacknowledged position).  A frame is ``MAGIC | header length | value length | CRC-32``
then a JSON header (topic, partition, key, headers) and the raw value.  A torn frame at
the tail (a crash mid-write) is detected by its CRC and dropped.  No pickle.

Usage::

    spool = Spool(path, max_bytes=2 << 30)
    spool.append(record)                 # robot side; raises SpoolFull when the budget is spent
    batch = spool.peek(500)              # forwarder side
    deliver(batch)                       # …to Kafka, waiting for acks
    spool.ack(len(batch))                # durable downstream: forget them
"""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"USP1"
_FRAME = struct.Struct("<4sIII")  # magic, header length, value length, crc32(header+value)


@dataclass(frozen=True)
class SpooledRecord:
    """A record as the producer will send it."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None

    def frame(self) -> bytes:
        header = json.dumps({
            "t": self.topic, "p": self.partition,
            "k": base64.b64encode(self.key).decode(),
            "h": [[k, base64.b64encode(v).decode()] for k, v in self.headers],
        }, separators=(",", ":")).encode()
        crc = zlib.crc32(self.value, zlib.crc32(header))
        return _FRAME.pack(MAGIC, len(header), len(self.value), crc) + header + self.value

    @property
    def size(self) -> int:
        return _FRAME.size + len(self.value) + len(self.key) + 64


def human_bytes(n: int) -> str:
    """``n`` bytes for a person: ``512 B``, ``256.0 KiB``, ``1.50 MiB``, ``2.00 GiB``."""
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.2f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


class SpoolFull(RuntimeError):
    """The spool's byte budget is spent: the broker has been unreachable for long."""


class Spool:
    """Append-only segments with a persistent read cursor; thread-safe."""

    def __init__(self, path: Path, *, max_bytes: int = 1 << 30,
                 segment_bytes: int = 64 << 20, fsync: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        path.mkdir(parents=True, exist_ok=True)
        self._cursor_file = path / "cursor.json"
        seg, off = self._load_cursor()
        self._read_seg, self._read_off = seg, off
        segments = self._segments()
        for old in segments:
            if old < seg:
                (path / _name(old)).unlink(missing_ok=True)
        segments = [s for s in segments if s >= seg]
        self._write_seg = max(segments, default=seg)
        self._repair_tail(self._write_seg)
        self._writer = (path / _name(self._write_seg)).open("ab")
        self._pending: list[tuple[int, int, SpooledRecord]] = []  # peeked: (seg, end, rec)
        self._bytes = sum((path / _name(s)).stat().st_size for s in segments) - off
        self._records = self._count_unread()

    # -- public --------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes appended and not yet acknowledged."""
        return self._bytes

    def __len__(self) -> int:
        """Records appended and not yet acknowledged."""
        return self._records

    def append(self, record: SpooledRecord, *, over_budget: bool = False) -> None:
        """Append one record; raises :class:`SpoolFull` when over the byte budget (unless
        ``over_budget``: a last record at shutdown, kept rather than lost)."""
        frame = record.frame()
        with self._lock:
            if self._bytes + len(frame) > self.max_bytes and not over_budget:
                raise SpoolFull(
                    f"local spool {self.path} holds {human_bytes(self._bytes)} of its "
                    f"{human_bytes(self.max_bytes)} limit (USER_AGENT_SPOOL_MB) and a "
                    f"{human_bytes(len(frame))} record does not fit; the broker has been "
                    "unreachable too long (robots hold until it drains)"
                )
            if self._writer.tell() >= self.segment_bytes:
                self._roll()
            self._writer.write(frame)
            self._writer.flush()
            if self.fsync:
                os.fsync(self._writer.fileno())
            self._bytes += len(frame)
            self._records += 1

    def peek(self, max_records: int) -> list[SpooledRecord]:
        """The next unacknowledged records after those already peeked, in order."""
        with self._lock:
            seg, off = (self._pending[-1][0], self._pending[-1][1]) if self._pending else (
                self._read_seg, self._read_off)
            out: list[SpooledRecord] = []
            while len(out) < max_records:
                got = self._read_at(seg, off)
                if got is None:
                    if seg >= self._write_seg:
                        break
                    seg, off = seg + 1, 0
                    continue
                rec, off = got
                self._pending.append((seg, off, rec))
                out.append(rec)
            return out

    def ack(self, count: int) -> None:
        """Forget the first ``count`` peeked records: they are durable downstream."""
        with self._lock:
            if count > len(self._pending):
                raise ValueError(f"ack({count}) but only {len(self._pending)} were peeked")
            if count == 0:
                return
            start_seg, start_off = self._read_seg, self._read_off
            seg, off, _ = self._pending[count - 1]
            freed = self._distance(start_seg, start_off, seg, off)
            del self._pending[:count]
            self._read_seg, self._read_off = seg, off
            self._bytes -= freed
            self._records -= count
            self._save_cursor()
            for old in range(start_seg, seg):
                (self.path / _name(old)).unlink(missing_ok=True)

    def rewind(self) -> None:
        """Forget what was peeked but not acknowledged: the next peek starts over."""
        with self._lock:
            self._pending.clear()

    def close(self) -> None:
        with self._lock:
            self._writer.close()

    # -- internals -----------------------------------------------------------------------

    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.path.glob("seg-*.log"))

    def _roll(self) -> None:
        self._writer.close()
        self._write_seg += 1
        self._writer = (self.path / _name(self._write_seg)).open("ab")

    def _read_at(self, seg: int, off: int) -> tuple[SpooledRecord, int] | None:
        return _read_frame(self.path / _name(seg), off)

    def _distance(self, seg0: int, off0: int, seg1: int, off1: int) -> int:
        if seg0 == seg1:
            return off1 - off0
        total = (self.path / _name(seg0)).stat().st_size - off0
        for s in range(seg0 + 1, seg1):
            file = self.path / _name(s)
            total += file.stat().st_size if file.exists() else 0
        return total + off1

    def _repair_tail(self, seg: int) -> None:
        """Cut a torn frame off the last segment so appends follow a whole record."""
        file = self.path / _name(seg)
        if not file.exists():
            return
        off = self._read_off if seg == self._read_seg else 0
        while (got := self._read_at(seg, off)) is not None:
            off = got[1]
        if file.stat().st_size != off:
            with file.open("r+b") as f:
                f.truncate(off)

    def _count_unread(self) -> int:
        seg, off, n = self._read_seg, self._read_off, 0
        while True:
            got = self._read_at(seg, off)
            if got is None:
                if seg >= self._write_seg:
                    return n
                seg, off = seg + 1, 0
                continue
            off = got[1]
            n += 1

    def _load_cursor(self) -> tuple[int, int]:
        try:
            data = json.loads(self._cursor_file.read_text())
            return int(data["segment"]), int(data["offset"])
        except (FileNotFoundError, ValueError, KeyError):
            segments = self._segments()
            return (segments[0] if segments else 0), 0

    def _save_cursor(self) -> None:
        tmp = self._cursor_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"segment": self._read_seg, "offset": self._read_off}))
        os.replace(tmp, self._cursor_file)


def _name(seg: int) -> str:
    return f"seg-{seg:09d}.log"


def _read_frame(file: Path, off: int) -> tuple[SpooledRecord, int] | None:
    """The whole frame at ``off`` of ``file`` and the offset after it; None at the end or
    at a torn frame."""
    try:
        with file.open("rb") as f:
            f.seek(off)
            head = f.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return None
            magic, hlen, vlen, crc = _FRAME.unpack(head)
            body = f.read(hlen + vlen)
    except FileNotFoundError:
        return None
    if magic != MAGIC or len(body) < hlen + vlen or zlib.crc32(body) != crc:
        return None  # a torn tail: the writer died mid-frame
    meta = json.loads(body[:hlen])
    rec = SpooledRecord(
        topic=meta["t"], partition=meta["p"], key=base64.b64decode(meta["k"]),
        headers=tuple((k, base64.b64decode(v)) for k, v in meta["h"]),
        value=body[hlen:],
    )
    return rec, off + _FRAME.size + hlen + vlen


def scan(path: Path) -> Iterator[SpooledRecord]:
    """Every whole record in the spool at ``path``, acknowledged or not (while its
    segment is kept), oldest first.  Read-only: safe beside the agent that writes it (a
    frame being written is not returned).  For inspection and tests."""
    for seg in sorted(int(p.stem[4:]) for p in path.glob("seg-*.log")):
        off = 0
        while (got := _read_frame(path / _name(seg), off)) is not None:
            yield got[0]
            off = got[1]
