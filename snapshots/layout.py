"""Where things live in a store directory, and the durable-write primitives.

Paths are built only from validated names (`is_chunk_id`, `manifest_name`), so nothing
read from a manifest can address a file outside the store.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import sys

from .errors import StoreLockedError
from .manifest import is_chunk_id

TMP_PREFIX = ".tmp."


class StoreLayout:
    """The files of one store directory (FORMAT.md, "Directory layout")."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.chunks = os.path.join(self.root, "chunks")
        self.manifests = os.path.join(self.root, "manifests")
        self.lock_file = os.path.join(self.root, "LOCK")
        self.readers_file = os.path.join(self.root, "READERS")

    def chunk_dir(self, cid: str) -> str:
        return os.path.join(self.chunks, cid[:2])

    def chunk_path(self, cid: str) -> str:
        if not is_chunk_id(cid):
            raise ValueError(f"not a chunk id: {cid!r}")
        return os.path.join(self.chunks, cid[:2], cid)

    def manifest_path(self, name: str) -> str:
        return os.path.join(self.manifests, name)

    def create(self) -> None:
        """Create every directory (the 256 chunk fan-out directories included) and make
        their names durable. Idempotent."""
        made = False
        for path in (self.root, self.chunks, self.manifests):
            made |= _mkdir(path)
        fanout = [format(i, "02x") for i in range(256)]
        made_chunk_dirs = [_mkdir(os.path.join(self.chunks, d)) for d in fanout]
        if made or any(made_chunk_dirs):
            fsync_dir(self.chunks)
            fsync_dir(self.root)
            fsync_dir(os.path.dirname(self.root))


def _mkdir(path: str) -> bool:
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False


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
            os.rename(self.tmp, os.path.join(self.directory, self.name))
        except BaseException:
            _unlink_quietly(self.tmp)
            raise
        self.done = True
        return self.written

    def discard(self) -> None:
        """Delete the temp file (after a failure elsewhere); a no-op once finished."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.done:
            _unlink_quietly(self.tmp)


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
            _start_writeback(fd)
        if failpoint is not None:
            failpoint(f"snapshot.before_{what}_fsync")
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
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


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages back now, without waiting
    (sync_file_range(SYNC_FILE_RANGE_WRITE), Linux). Only a hint: durability comes
    from the fsync in `finish()`; where unavailable or failing, nothing happens."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class FileLock:
    """An flock on a file, opened (and created) on acquire. flock locks belong to the open
    file, so two FileLocks on one path exclude each other even within one process, and
    the kernel releases them when a process dies."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self, exclusive: bool, blocking: bool = True) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return False  # no store directory yet: nothing to protect
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY)  # a read-only store: flock works on any fd
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, op)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_writer_lock(layout: StoreLayout) -> FileLock:
    """Take the store's LOCK exclusively or raise StoreLockedError at once."""
    lock = FileLock(layout.lock_file)
    if not lock.acquire(exclusive=True, blocking=False):
        raise StoreLockedError(f"{layout.root} is held for writing by another open store")
    return lock
