"""The write side of a SnapshotStore: checking and staging saves, and running saves and
prunes one at a time.

`SaveQueue` owns the store's commit thread, the writer lock (`LOCK`, taken by the first
save or prune) and the closed flag. A save is checked and staged on its caller's thread;
the commit (`commit.commit`) and every prune then run one at a time, in submission order,
on the one commit thread, except that a blocking save with nothing queued commits on its
caller's thread under the same lock (no hand-off to the commit thread and back).
`SnapshotStore` documents the lifecycle and delegates here.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock
from typing import Any, Callable

import msgpack
import torch

from . import tree
from .commit import ChunkWriter, SaveJob, commit
from .errors import ClosedError
from .locks import FileLock, acquire_writer_lock
from .paths import StoreLayout
from .reports import SnapshotInfo
from .staging import Stager
from .tensorbytes import DTYPE_NAMES

_MAX_INDEX = 2**63 - 1


class PendingSnapshot:
    """A save in flight, returned by `save_async`; like a concurrent.futures.Future."""

    def __init__(self, future: Future, index: int, term: int):
        self._future = future
        self.index = index
        self.term = term

    def result(self, timeout: float | None = None) -> SnapshotInfo:
        """Block until the snapshot commits and return its info, or raise the save's error
        (TimeoutError if `timeout` seconds pass first)."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """True once the save has committed or failed."""
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The save's error, None if it committed (blocks like `result`)."""
        return self._future.exception(timeout)


class SaveQueue:
    """Saves and prunes of one store, one at a time in submission order.

    Edge cases first: every call after `stop` raises ClosedError (`check_open`); the
    writer lock is taken by the first `ensure_writer` (LockedError if another process
    holds it) and released only by `release_writer`.
    """

    def __init__(self, path: str, layout: StoreLayout, chunks: ChunkWriter, stager: Stager):
        self._path = path
        self._layout = layout
        self._chunks = chunks
        self._stager = stager
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="snapshots-commit")
        self._lock = Lock()  # guards the three fields below
        self._writer_lock: FileLock | None = None
        self._closed = False
        self._queued = 0  # saves and prunes submitted and not finished
        self._commit_lock = Lock()  # held by the one save or prune running (commit thread or a blocking save)

    def check_open(self) -> None:
        """Raise ClosedError once `stop` has been called; return None otherwise."""
        if self._closed:
            raise ClosedError(f"snapshot store {self._path} is closed")

    def save(self, state: Any, index: int, term: int, meta: Any) -> SnapshotInfo:
        """`SnapshotStore.save`: bad input raises before anything is written; with nothing
        queued the commit runs on this thread, else behind the queue on the commit thread."""
        job = self._prepare(state, index, term, meta, copy_all=False)
        with self._lock:
            idle = self._queued == 0
            self._queued += idle  # claimed: a save_async or prune from now on queues behind it
        if not idle:
            return self.serially(commit, self._chunks, job).result()
        try:
            with self._commit_lock:  # nothing queued: no hand-off to the commit thread and back
                return commit(self._chunks, job)
        finally:
            with self._lock:
                self._queued -= 1

    def save_async(self, state: Any, index: int, term: int, meta: Any) -> PendingSnapshot:
        """`SnapshotStore.save_async`: bad input raises here; every tensor is copied before
        this returns, and the commit is queued on the commit thread."""
        job = self._prepare(state, index, term, meta, copy_all=True)
        return PendingSnapshot(self.serially(commit, self._chunks, job), index, term)

    def serially(self, fn: Callable, *args) -> Future:
        """fn(*args) on the commit thread, after everything submitted before it (a blocking
        save running on its caller's thread included)."""
        with self._lock:
            self._queued += 1

        def run():
            try:
                with self._commit_lock:
                    return fn(*args)
            finally:
                with self._lock:
                    self._queued -= 1

        return self._committer.submit(run)

    def ensure_writer(self) -> None:
        """Take the writer lock and create the directories, once (LockedError if another
        process writes the store)."""
        with self._lock:
            if self._writer_lock is None:
                os.makedirs(self._path, exist_ok=True)
                self._writer_lock = acquire_writer_lock(self._layout.lock_file, self._layout.root)
                self._layout.create()

    def stop(self) -> bool:
        """Mark the store closed and wait for queued saves and prunes and for a blocking
        save running on its caller's thread. False if it was already stopped (nothing done)."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        self._committer.shutdown(wait=True)
        with self._commit_lock:  # a blocking save running on its caller's thread finishes first
            pass
        return True

    def release_writer(self) -> None:
        """Release the writer lock if this store holds it; idempotent."""
        with self._lock:
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def _prepare(self, state: Any, index: int, term: int, meta: Any, copy_all: bool) -> SaveJob:
        self.check_open()
        for name, value in (("index", index), ("term", term)):
            if type(value) is not int or not 0 <= value <= _MAX_INDEX:
                raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
        try:
            msgpack.packb(meta, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"meta must be a msgpack value: {e}") from None
        node, leaves = tree.flatten(state)
        for path, t in leaves:
            _check_leaf(path, t)
        self.ensure_writer()
        tensors = [t for _, t in leaves]
        staged = self._stager.stage(tensors, copy_all=copy_all)
        return SaveJob(index, term, meta, node, [t.dtype for t in tensors], [tuple(t.shape) for t in tensors], staged)


def _check_leaf(path: tree.KeyPath, t: torch.Tensor) -> None:
    where = tree.format_path(path)
    if t.layout != torch.strided:
        raise TypeError(f"unsupported tensor layout {t.layout} at {where}")
    if t.dtype not in DTYPE_NAMES:
        raise TypeError(f"unsupported tensor dtype {t.dtype} at {where}")
    if t.device.type == "meta":
        raise TypeError(f"meta tensor (no data) at {where}")
    if t.is_nested or t.is_quantized:
        raise TypeError(f"unsupported nested or quantized tensor at {where}")
