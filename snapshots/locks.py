"""The store's two flock files: LOCK (one writer process) and READERS (readers vs prune).

flock locks belong to the open file description, so two FileLocks on one path exclude
each other even within one process, and the kernel drops them when a process dies: a
crashed writer never leaves a store locked.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .errors import LockedError


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


def acquire_writer_lock(lock_file: str, root: str) -> FileLock:
    """Take the store's LOCK (`lock_file`) exclusively or raise LockedError at once."""
    lock = FileLock(lock_file)
    if not lock.acquire(exclusive=True, blocking=False):
        raise LockedError(f"{root} is held for writing by another open store")
    return lock
