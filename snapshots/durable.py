"""Durable writes: write a temp file, fsync it, rename it to its name, fsync the directory.

The temp names (`temp_name`) are never valid chunk or manifest names, so readers ignore
a write a crash cut short and the next prune deletes it.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys

TMP_PREFIX = ".tmp."


def temp_name(final_name: str) -> str:
    """A name in the same directory that is never a valid chunk or manifest name."""
    return f"{TMP_PREFIX}{final_name}.{os.getpid()}.{secrets.token_hex(4)}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(directory: str, name: str, parts: list, failpoint=None, what: str = "chunk") -> int:
    """Write `parts` (buffers) to directory/name via a temp file: write, fsync, rename.
    The caller fsyncs `directory` afterwards (batched). Returns the bytes written.

    `failpoint`, if given, is called with ``snapshot.before_<what>_fsync`` once the bytes
    are written and ``snapshot.before_<what>_rename`` once they are fsynced (crash tests;
    see SnapshotStore's `failpoint`)."""
    return start_durable_write(directory, name, parts, failpoint, what, keep_open=True).finish()


class PendingWrite:
    """A temp file whose bytes are written and on their way to the disk, not yet durable
    nor named: `finish()` fsyncs it and renames it to its name (write_durably's second
    half); `discard()` deletes it. Splitting the two lets a writer write every new chunk
    first and then fsync them all at once: the kernel has been writing them back in the
    meantime, and concurrent fsyncs share journal commits, where one fsync per chunk
    right after its write makes each wait for its own."""

    def __init__(self, directory: str, name: str, tmp: str, written: int, fd: int | None, failpoint, what: str):
        self.directory, self.name, self.tmp, self.written = directory, name, tmp, written
        self._fd, self._failpoint, self._what = fd, failpoint, what
        self.done = False

    def finish(self) -> int:
        """fsync the temp file, then rename it to its name. Returns the bytes written."""
        self.sync()
        self.publish()
        return self.written

    def sync(self) -> None:
        """finish's first half: fsync the temp file (still unnamed). On failure it is deleted."""
        try:
            fd = self._fd if self._fd is not None else os.open(self.tmp, os.O_RDONLY)
            self._fd = None
            try:
                # A reopened descriptor still reports a writeback error that nobody has
                # seen (Linux >= 4.16, errseq), and no one else opens our temp files.
                os.fsync(fd)
                if self._failpoint is not None:
                    self._failpoint(f"snapshot.before_{self._what}_rename")
            finally:
                os.close(fd)
        except BaseException:
            unlink_quietly(self.tmp)
            raise

    def publish(self) -> None:
        """finish's second half, after `sync`: rename the temp file to its name."""
        try:
            os.rename(self.tmp, os.path.join(self.directory, self.name))
        except BaseException:
            unlink_quietly(self.tmp)
            raise
        self.done = True

    def discard(self) -> None:
        """Delete the temp file (after a failure elsewhere); a no-op once finished."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.done:
            unlink_quietly(self.tmp)


def start_durable_write(directory: str, name: str, parts: list, failpoint=None, what: str = "chunk",
                        keep_open: bool = False) -> PendingWrite:
    """The first half of `write_durably`: write `parts` to a new temp file in `directory`
    and start its writeback (without waiting for it). The file is neither durable nor
    named until the returned PendingWrite's `finish()`. The descriptor is closed in
    between unless `keep_open` (a save may have thousands of chunks pending)."""
    tmp = os.path.join(directory, temp_name(name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        total = 0
        for part in parts:
            view = memoryview(part)
            while len(view):
                k = os.write(fd, view)
                total += k
                view = view[k:]
        if not keep_open:
            start_writeback(fd)
        if failpoint is not None:
            failpoint(f"snapshot.before_{what}_fsync")
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    if not keep_open:
        os.close(fd)
        fd = None
    return PendingWrite(directory, name, tmp, total, fd, failpoint, what)


def _load_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing bytes [offset, offset + length) of the file (0: to
    its end) back now, without waiting (sync_file_range(SYNC_FILE_RANGE_WRITE), Linux).
    Only a hint: durability comes from a later fsync; where unavailable or failing,
    nothing happens."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def unlink_quietly(path: str) -> None:
    """Delete `path`; nothing if it is already gone or cannot be deleted (cleanup after a
    failure, where the first error is the one to report)."""
    try:
        os.unlink(path)
    except OSError:
        pass
