"""The store's two flock files: LOCK (one writer process) and READERS (readers vs prune).

flock locks belong to the open file description, so two FileLocks on one path exclude
each other even within one process, and the kernel drops them when a process dies: a
crashed writer never leaves a store locked.

For the same reason a forked child must not keep a copy of a held descriptor: a
DataLoader worker forked by a trainer would otherwise keep the store locked after the
trainer was killed, until the orphaned worker exits. Held locks are registered and a
child closes its copies right after fork (the parent's lock is untouched: an flock
lives until the last descriptor of its open file is closed); O_CLOEXEC does the same
for exec'ed children.

Why a copy: eventlog/locking.py has the same fork rule for its writer lock, and eventlog
and snapshots may not import each other (DESIGN §2); the two lock different things
(shared/exclusive store locks here; a pid-stamped writer lock with takeover there), and
tests/test_twin_modules.py checks the fork behaviour of both with one test.
"""

from __future__ import annotations

import errno
import fcntl
import os
import weakref

from .errors import LockedError

# Locks this process holds, so that a forked child can close its inherited copies.
_held_locks: "weakref.WeakSet[FileLock]" = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for lock in list(_held_locks):
        lock.forget_after_fork()


os.register_at_fork(after_in_child=_close_inherited_locks)


class FileLock:
    """An flock on a file, opened (and created) on acquire. flock locks belong to the open
    file, so two FileLocks on one path exclude each other even within one process, and
    the kernel releases them when a process dies."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self, exclusive: bool, blocking: bool = True) -> bool:
        """Take the lock; False if it is held elsewhere (blocking=False) or cannot be taken.

        It cannot be taken when there is no store directory yet (nothing to protect), or
        when the file does not exist and this process may not create it, or may not open
        it at all (a store on a read-only mount, or another user's): a reader then goes
        on without it. What that gives up is in the README ("Durability and operations"):
        a pruner does not wait for it. flock works on a read-only descriptor, so a
        READERS file that exists and is readable is still locked.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            return False  # no store directory yet: nothing to protect
        except PermissionError:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # a read-only store: flock works on any fd
            except (FileNotFoundError, PermissionError):
                return False  # not there and not ours to create, or not readable: no lock
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, op)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        _held_locks.add(self)
        return True

    def release(self) -> None:
        if self._fd is not None:
            _held_locks.discard(self)
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited descriptor; the parent keeps its lock."""
        if self._fd is not None:
            os.close(self._fd)
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
