"""The single-writer lock and the filesystem checks that LMDB's correctness depends on.

Why a copy: snapshots/locks.py has its own fork-safe flock (a forked child closes its
inherited copies of held locks) because eventlog and snapshots may not import each other
(DESIGN §2) and the two lock different things (a pid-stamped writer lock with takeover
here; shared/exclusive store locks there); tests/test_twin_modules.py checks the fork
behaviour of both with one test.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import weakref
from pathlib import Path

from .errors import LockedError, LogError

LOCK_NAME = "writer.lock"
# A writer's lock attempt that fails is retried this often, PROBE_PAUSE s apart, so that a
# probe holding the file shared for microseconds never makes an open fail with LockedError.
PROBE_RETRIES = 3
PROBE_PAUSE = 0.002
TAKEOVER_NAME = "takeover.lock"

# LMDB's locking and mmap coherence assume every process sees one kernel's page cache.
NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "ceph",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "sshfs", "lustre", "gpfs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.rclone",
}

# Lock files held by this process. Kept so that a forked child closes its inherited
# copies: flock locks belong to the open file description, so a child that kept the
# descriptor would keep the parent's lock alive after the parent died.
_held_locks: "weakref.WeakSet[FileLock]" = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for lock in list(_held_locks):
        lock.forget_after_fork()


os.register_at_fork(after_in_child=_close_inherited_locks)


class FileLock:
    """An exclusive, non-blocking flock on one file of the log directory, holding the owner's pid."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free and write this pid into it; False if another holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(PROBE_RETRIES + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == PROBE_RETRIES:
                    os.close(fd)
                    return False
                # Perhaps only a probe (`_holder`: a reader without a lock file checks at
                # every read transaction) holding it shared for microseconds: try again.
                time.sleep(PROBE_PAUSE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _held_locks.add(self)
        return True

    def release(self) -> None:
        """Drop the lock; a no-op when not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _held_locks.discard(self)
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptor without unlocking the parent's lock."""
        if self._fd is not None:
            os.close(self._fd)  # closes the child's copy only; the parent keeps its lock
            self._fd = None


class WriterLock:
    """The single-writer lock of a log: ``writer.lock``, and ``takeover.lock`` for a takeover.

    A plain writer takes ``writer.lock`` (LockedError at once if another process holds
    it) and then checks that no takeover writer is alive (``takeover.lock`` not held),
    since a takeover writer may be waiting for the hung holder to exit.

    A takeover writer (``acquire(takeover=True)``) never waits: it holds
    ``takeover.lock`` at once and claims ``writer.lock`` as soon as it is free. A
    background thread tries every `CLAIM_INTERVAL` seconds until it holds it, then drops
    ``takeover.lock``. So while the takeover writer lives, some lock file always names it:
    a plain open gets LockedError, and `writer_pid` reports it.
    """

    CLAIM_INTERVAL = 0.02

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._writer = FileLock(self.path)
        self._takeover = FileLock(directory / TAKEOVER_NAME)
        self._stop = threading.Event()
        self._claimer: threading.Thread | None = None

    def acquire(self, takeover: bool = False) -> None:
        """Take the lock (see the class docstring); LockedError naming the holder's pid."""
        if takeover:
            self._takeover.try_acquire()
            if not self._claim():
                self._claimer = threading.Thread(target=self._keep_claiming, daemon=True,
                                                 name=f"eventlog-lock-claim:{self.path.parent}")
                self._claimer.start()
            return
        if not self._writer.try_acquire():
            holder = _holder(self._takeover.path) or _holder(self.path) or "unknown"
            raise LockedError(
                f"{self.path.parent} is open for writing by another process (pid {holder}); "
                "open it readonly, or pass takeover=True if that writer is hung and must be fenced"
            )
        taker = _holder(self._takeover.path)
        if taker is not None:
            self._writer.release()
            raise LockedError(
                f"{self.path.parent} was taken over by process {taker}, which is still writing; "
                "open it readonly (opening it for writing would fence that writer)"
            )

    def _claim(self) -> bool:
        if not self._writer.try_acquire():
            return False
        self._takeover.release()  # writer.lock names this process from now on
        return True

    def _keep_claiming(self) -> None:
        while not self._stop.wait(self.CLAIM_INTERVAL):
            try:
                if self._claim():
                    return
                self._takeover.try_acquire()  # an earlier takeover writer may have exited
            except OSError:
                return  # the directory went away; nothing left to claim

    def release(self) -> None:
        """Drop every lock held and stop claiming; a no-op when none is held."""
        self._stop.set()
        if self._claimer is not None and self._claimer is not threading.current_thread():
            self._claimer.join()
        self._writer.release()
        self._takeover.release()


def _holder(path: Path) -> str | None:
    """The pid (as text) written in lock file `path` if a live process holds it, else None.

    Probes with a shared, non-blocking flock on a fresh descriptor: it never blocks and
    never disturbs the holder. A file left by a dead process is not held, so it reads None.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    finally:
        os.close(fd)  # also drops the probe's own lock if it got one
    return None


def writer_pid(directory: Path) -> str | None:
    """The pid (as text) of the live writer of the log; None when none is alive.

    A live takeover writer is the writer even while a hung, fenced one still holds
    ``writer.lock``; otherwise the holder of ``writer.lock``.
    """
    directory = Path(directory)
    return _holder(directory / TAKEOVER_NAME) or _holder(directory / LOCK_NAME)


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


# Free space below which an EIO on a write or fsync is reported as a full disk: ext4 and
# xfs with delayed allocation report ENOSPC at writeback as EIO from fsync.
NEARLY_FULL_BYTES = 16 * 2**20


def describe_write_failure(path: Path, exc: BaseException) -> str:
    """Text for a failed write or sync of the log at `path`; says so when the disk is full.

    The disk counts as full when the error is ENOSPC, or when it is EIO and statvfs
    shows less than NEARLY_FULL_BYTES free for unprivileged writers.
    """
    text = str(exc)
    code = getattr(exc, "errno", None)
    no_space = code == errno.ENOSPC or os.strerror(errno.ENOSPC) in text
    io_error = code == errno.EIO or os.strerror(errno.EIO) in text
    if not (no_space or io_error):
        return text
    try:
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    if no_space or (free is not None and free < NEARLY_FULL_BYTES):
        shown = "an unknown number of" if free is None else f"{free}"
        return f"the disk is full: the filesystem holding {path} has {shown} bytes free ({text})"
    return text


def fsync_directory(path: Path) -> None:
    """fsync directory `path`, so the names created in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
