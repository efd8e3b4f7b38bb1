"""The heartbeat: a 128-byte file a journal updates in memory, the supervisor reads.

Format (little-endian), version 1:

| offset | size | field |
|-------:|-----:|-------|
| 0 | 8 | magic ``RPLYBEAT`` |
| 8 | 4 | version, 1 |
| 12 | 4 | pid of the writer |
| 16 | 8 | sequence: odd while an update is being written, +2 per update |
| 24 | 4 | phase (PHASES) |
| 28 | 4 | reserved, 0 |
| 32 | 8 | index: the entry being applied, or the last applied |
| 40 | 8 | done: entries replayed so far (phase recovering) |
| 48 | 8 | total: entries to replay (phase recovering) |
| 56 | 8 | CLOCK_MONOTONIC nanoseconds of the update |
| 64 | 1 | length of the op name |
| 65 | 63 | the op name, UTF-8 |

The writer maps the file and updates it with plain memory writes: no system call per
apply. The reader copies the 128 bytes and retries while the sequence is odd or changed
under it (a seqlock). A reader never trusts the contents: a short file, another magic or
a phase it does not know reads as "no heartbeat".
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"RPLYBEAT"
VERSION = 1
SIZE = 128
_HEAD = struct.Struct("<8sII")
_SEQ = struct.Struct("<Q")
_BODY = struct.Struct("<IIqQQQ")  # phase, reserved, index, done, total, time
_OP_AT = 64
_OP_MAX = 63

PHASES = ("opening", "recovering", "applying", "idle", "snapshotting", "closing", "closed")
_PHASE_CODE = {name: code for code, name in enumerate(PHASES, start=1)}


@dataclass(frozen=True)
class Beat:
    """One consistent reading of a heartbeat file."""

    pid: int
    sequence: int
    phase: str
    index: int
    done: int
    total: int
    time_ns: int
    op: str

    def describe(self) -> str:
        if self.phase == "recovering":
            return f"recovering {self.done}/{self.total}"
        if self.phase == "applying":
            return f"applying {self.op} (entry {self.index})"
        return f"{self.phase} (index {self.index})"


class HeartbeatWriter:
    """The journal's side: `update` is a few memory writes into the mapped file.

    Used from the journal's thread. Not shared across fork: a forked child (a DataLoader
    worker) finds it disabled by an at-fork hook, so the hot path needs no pid check."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._live = True
        self._sequence = 0
        self._ops: dict[str, bytes] = {}
        self._pack_seq = functools.partial(_SEQ.pack_into, self._map, 16)
        self._pack_body = functools.partial(_BODY.pack_into, self._map, 24)
        _HEAD.pack_into(self._map, 0, MAGIC, VERSION, os.getpid())
        os.register_at_fork(after_in_child=functools.partial(_disable_in_child, weakref.ref(self)))
        self.update("opening", 0)

    def update(self, phase: str, index: int, op: str | None = None, done: int = 0, total: int = 0) -> None:
        if not self._live:
            return
        self._sequence += 1
        self._pack_seq(self._sequence)  # odd: being written
        self._pack_body(_PHASE_CODE[phase], 0, index, done, total, time.monotonic_ns())
        if op is not None:
            encoded = self._ops.get(op)
            if encoded is None:
                raw = op.encode()[:_OP_MAX]
                encoded = self._ops[op] = bytes([len(raw)]) + raw
            self._map[_OP_AT:_OP_AT + len(encoded)] = encoded
        self._sequence += 1
        self._pack_seq(self._sequence)

    def close(self) -> None:
        if self._live:
            self._live = False
            self._map.close()


def _disable_in_child(writer_ref) -> None:
    writer = writer_ref()
    if writer is not None:
        writer._live = False  # the map is the parent's: a child never writes into it


def read(path: Path) -> Beat | None:
    """The heartbeat in `path`; None when it is missing, not a heartbeat, or never settled."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for _ in range(100):
            data = os.pread(fd, SIZE, 0)
            if len(data) < SIZE:
                return None
            magic, version, pid = _HEAD.unpack_from(data, 0)
            if magic != MAGIC or version != VERSION:
                return None
            (sequence,) = _SEQ.unpack_from(data, 16)
            if sequence % 2:
                continue
            phase, _, index, done, total, stamp = _BODY.unpack_from(data, 24)
            length = min(data[_OP_AT], _OP_MAX)
            op = data[_OP_AT + 1:_OP_AT + 1 + length].decode("utf-8", "replace")
            (again,) = _SEQ.unpack_from(os.pread(fd, 8, 16), 0)
            if again != sequence or not 1 <= phase <= len(PHASES):
                continue
            return Beat(pid, sequence, PHASES[phase - 1], index, done, total, stamp, op)
        return None
    finally:
        os.close(fd)
