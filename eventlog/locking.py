"""The single-writer lock and the filesystem checks that LMDB's correctness depends on."""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from .errors import LockedError, LogError

LOCK_NAME = "writer.lock"

# LMDB's locking and mmap coherence assume every process sees one kernel's page cache.
NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "ceph",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "sshfs", "lustre", "gpfs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.rclone",
}

# Lock files held by this process. Kept so that a forked child closes its inherited
# copies: flock locks belong to the open file description, so a child that kept the
# descriptor would keep the parent's lock alive after the parent died.
_held_locks: "weakref.WeakSet[WriterLock]" = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for lock in list(_held_locks):
        lock._forget_after_fork()


os.register_at_fork(after_in_child=_close_inherited_locks)


class WriterLock:
    """An exclusive, non-blocking flock on ``<log>/writer.lock`` holding the owner's pid."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or raise LockedError naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{self.path.parent} is open for writing by another process (pid {holder}); "
                "open it readonly, or pass takeover=True if that writer is hung and must be fenced"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _held_locks.add(self)

    def release(self) -> None:
        """Drop the lock; a no-op when not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _held_locks.discard(self)
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _forget_after_fork(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closes the child's copy only; the parent keeps its lock
            self._fd = None


def writer_pid(directory: Path) -> str | None:
    """The pid (as text) of the live process holding the log's writer lock; None when none does.

    Probes with a shared, non-blocking flock on a fresh descriptor: it never blocks and
    never disturbs the writer. A lock file left by a dead writer is not held, so it reads None.
    """
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    finally:
        os.close(fd)  # also drops the probe's own lock if it got one
    return None


def filesystem_type(path: Path) -> str:
    """The fstype of the mount holding `path` (which must exist), or "" if unknown."""
    target = os.path.realpath(path)
    best, best_type = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, fields[2]
    except OSError:
        return ""
    return best_type


def refuse_network_filesystem(path: Path) -> None:
    """Raise LogError if `path` lies on a network filesystem LMDB cannot run on safely."""
    fstype = filesystem_type(path)
    if fstype in NETWORK_FILESYSTEMS:
        raise LogError(
            f"{path} is on a network filesystem ({fstype}); LMDB's locks and memory map are "
            "not coherent across machines there. Put the log on a local disk."
        )
