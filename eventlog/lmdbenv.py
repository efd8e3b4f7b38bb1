"""Process-level handling of LMDB environments: one shared handle per log directory,
the gate that keeps map resizes away from open transactions, and short read transactions.

(Named after LMDB's "environment", its handle on one data file; not to be confused with
replay/environment.py, a journal's machine fingerprint.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from .errors import LogError
from .lmdbfile import STRUCTURAL_ERRORS, check_data_file, damaged
from .locking import writer_pid


class TxnGate:
    """Shared/exclusive gate around LMDB transactions of this process.

    LMDB forbids `set_mapsize` while any transaction of the process is open; growing the
    map (`run_exclusive`) must wait until none is. Two kinds of holder keep it out:

    - read transactions take the gate shared (``with gate:``): one plain lock round trip
      each way, a notify only when a map growth waits;
    - write transactions hold `writing` (``with gate.writing:``), a re-entrant lock taken
      in C: no Python frame, no counter. LMDB runs one write transaction at a time
      anyway, so holding a lock across it costs writers nothing; and it is the
      per-commit path of sync mode, paid on every fdatasync'd append.

    `run_exclusive` takes `writing` first (re-entrant: a writer thread may grow the map
    between its own transactions), then waits for the shared count to drain. A thread
    that holds a read transaction must not call it (it would wait for itself).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._exclusive = False
        self._waiting = 0  # threads in run_exclusive, or shared entrants waiting behind one
        self.writing = threading.RLock()

    def __enter__(self):
        with self._lock:
            if not self._exclusive:
                self._active += 1
                return
            self._waiting += 1
            try:
                while self._exclusive:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._active += 1

    def __exit__(self, *exc):
        with self._lock:
            self._active -= 1
            if self._waiting:
                self._cond.notify_all()

    def run_exclusive(self, fn):
        """Run `fn()` while no transaction of this process is open (no writer inside
        `writing`, no reader inside the gate); returns what fn returns."""
        with self.writing:
            with self._lock:
                self._waiting += 1
                try:
                    while self._exclusive or self._active:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._exclusive = True
            try:
                return fn()
            finally:
                with self._lock:
                    self._exclusive = False
                    self._cond.notify_all()


def can_lock(path: Path) -> bool:
    """Whether this process may use the log's LMDB lock file: open ``lock.mdb`` for writing,
    or create it. A reader without that right (a log on a read-only mount, or another
    user's) opens the environment without a lock file (LMDB's MDB_NOLOCK) and so is
    invisible to a writer's reader table: a live writer could reuse the pages of a read
    transaction it still has open, and LMDB may then abort the process on an assertion
    (seen in tests/crash/test_archive.py), not merely raise. So such a reader reads only
    while no writer is live (`ReadTxn` checks at every transaction) and raises LogError
    naming the writer otherwise. A read-only filesystem is LMDB's own case (it skips the
    lock file there itself, and no writer can be live on it)."""
    lock_file = path / "lock.mdb"
    if os.path.lexists(lock_file):
        return os.access(lock_file, os.R_OK | os.W_OK, effective_ids=os.access in os.supports_effective_ids)
    return os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


class SharedEnv:
    """One LMDB environment per log directory per process, shared by every EventLog on it.

    LMDB forbids opening the same environment twice in one process (its locks are per
    process), so a reader and a writer of one log in one process share the handle, and
    its map-resize gate. The registry is keyed by the directory's (device, inode) and
    emptied in a forked child, which must open its own.
    """

    _registry: dict = {}
    _registry_lock = threading.Lock()

    def __init__(self, key, env, readonly, lockless=False):
        self.key, self.env, self.readonly = key, env, readonly
        self.lockless = lockless  # opened without a lock file (can_lock): reads only while no writer is live
        self.gate = TxnGate()
        self.refs = 0

    @classmethod
    def acquire(cls, path: Path, readonly: bool, map_size: int, durability: str) -> "SharedEnv":
        stat = path.stat()
        key = (stat.st_dev, stat.st_ino)
        with cls._registry_lock:
            shared = cls._registry.get(key)
            if shared is None:
                # Before LMDB maps the file: a file cut short would be a SIGBUS later.
                check_data_file(path)
                locked = not readonly or can_lock(path)
                try:
                    env = lmdb.open(
                        str(path), subdir=True, max_dbs=2, map_size=map_size, readonly=readonly,
                        # Only sync mode syncs the meta page in the commit; group and os
                        # let the next commit's data sync carry it (Writer.meta_synced).
                        sync=True, metasync=durability == "sync", lock=locked,
                        readahead=False, meminit=False, max_spare_txns=2,
                    )
                except STRUCTURAL_ERRORS as exc:
                    raise damaged(path, exc) from exc
                except lmdb.Error as exc:
                    if "already open in this process" not in str(exc):
                        raise
                    # py-lmdb remembers environments opened before a fork(); a forked
                    # child cannot open them again.
                    raise LogError(
                        f"{path} is held open by this process's parent across fork(); open logs in a "
                        "child started with the 'spawn' or 'forkserver' method, or in a subprocess"
                    ) from exc
                env.reader_check()  # free reader slots left by killed processes
                shared = cls._registry[key] = cls(key, env, readonly, lockless=not locked)
            elif shared.readonly and not readonly:
                raise LogError(
                    f"{path} is open readonly in this process; close those readers before opening it for writing"
                )
            shared.refs += 1
            return shared

    def release(self) -> None:
        with self._registry_lock:
            self.refs -= 1
            if self.refs == 0:
                del self._registry[self.key]
                self.env.close()

    # Bumped in every forked child: a log compares it with the value it was opened under,
    # which is cheaper than asking the kernel for the pid on every append.
    generation = 0

    @classmethod
    def forget_after_fork(cls) -> None:
        cls._registry = {}
        cls._registry_lock = threading.Lock()
        cls.generation += 1


os.register_at_fork(after_in_child=SharedEnv.forget_after_fork)


def refuse_live_writer(path: Path) -> None:
    """LogError if a writer is live on log `path`: for a reader opened without a lock file
    (`can_lock`), which that writer cannot see. The check costs two opens and a flock probe
    (locking.writer_pid) per read transaction; a writer that starts during one of these
    short transactions is the residual risk."""
    try:
        pid = writer_pid(path)
    except PermissionError as exc:
        raise LogError(f"{path}: cannot tell whether a writer is live on this log ({exc.strerror}: "
                       f"{exc.filename}), and this process cannot write its lock file (lock.mdb) to read "
                       "beside one safely") from None
    if pid is not None:
        raise LogError(
            f"{path}: a writer (pid {pid}) is live on this log, and this process cannot write the log's lock "
            "file (lock.mdb), so the writer cannot see this reader and may reuse the pages it reads. Read it "
            "as a user who may write lock.mdb, or once the writer has stopped")


def check_same_process(path: Path, pid: int, generation: int) -> None:
    """LogError unless the caller is the process (not a forked child) that opened log `path`."""
    if generation != SharedEnv.generation:
        raise LogError(
            f"EventLog {path} was opened in pid {pid} and used in pid {os.getpid()}; "
            "LMDB environments must not cross fork(): open the log again in the child"
        )


class ReadTxn:
    """A short read transaction under the map-resize gate; adopts a map grown elsewhere.

    LMDB's and struct's errors about damaged pages raised inside it leave as
    DamagedLogError naming the log's data file (`path`).
    """

    def __init__(self, env, gate: TxnGate, path: Path, lockless: bool = False):
        self._env, self._gate, self._path = env, gate, path
        self._lockless = lockless
        self._txn = None

    def __enter__(self):
        if self._lockless:
            refuse_live_writer(self._path)
        gate = self._gate
        gate.__enter__()
        while True:
            try:
                self._txn = self._env.begin(buffers=True)
                return self._txn
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size (needs the gate exclusively).
                gate.__exit__()
                gate.run_exclusive(lambda: self._env.set_mapsize(0))
                gate.__enter__()
            except STRUCTURAL_ERRORS as exc:
                gate.__exit__()
                raise damaged(self._path, exc) from exc
            except BaseException:
                gate.__exit__()
                raise

    def __exit__(self, exc_type, exc, tb):
        try:
            self._txn.abort()
        finally:
            self._gate.__exit__()
        if exc_type is not None and issubclass(exc_type, STRUCTURAL_ERRORS):
            raise damaged(self._path, exc) from exc


