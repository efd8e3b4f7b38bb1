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

import mmap
import os
import struct
import time
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

    Used from the journal's thread (and its preemption handler, which only reads); not
    shared across fork (a child that inherits it writes nothing: the pid is checked)."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._pid = os.getpid()
        self._sequence = 0
        self._ops: dict[str, bytes] = {}
        _HEAD.pack_into(self._map, 0, MAGIC, VERSION, self._pid)
        self.update("opening", 0)

    def update(self, phase: str, index: int, op: str | None = None, done: int = 0, total: int = 0) -> None:
        if os.getpid() != self._pid or self._map.closed:
            return
        buf = self._map
        self._sequence += 1
        _SEQ.pack_into(buf, 16, self._sequence)  # odd: being written
        _BODY.pack_into(buf, 24, _PHASE_CODE[phase], 0, index, done, total, time.monotonic_ns())
        if op is not None:
            encoded = self._ops.get(op)
            if encoded is None:
                encoded = self._ops[op] = bytes([min(len(op.encode()), _OP_MAX)]) + op.encode()[:_OP_MAX]
            buf[_OP_AT:_OP_AT + len(encoded)] = encoded
        self._sequence += 1
        _SEQ.pack_into(buf, 16, self._sequence)

    def close(self) -> None:
        if os.getpid() == self._pid and not self._map.closed:
            self._map.close()


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
