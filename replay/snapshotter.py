"""Snapshotter: a journal's snapshots from staging to compaction, off the training thread.

The Journal decides *when* (its policy, an explicit `snapshot()`, `close()`, a preemption);
this type decides *how*, and owns the one follow-up thread and the one snapshot in flight.
"""

from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

from . import failpoints
from .errors import JournalPoisonedError
from .recovery import snapshot_meta
from .retention import keep_oldest_snapshot


class Snapshotter:
    """Takes a journal's snapshots; at most one is in flight.

    Call sequence, on the training thread unless said otherwise:

    1. `take(index, blocking)`: the entries through `index` are made durable (a snapshot
       never commits beyond the durable index, invariant 2), the live state is captured
       and staged into the store. Blocking: committed, pruned and compacted before it
       returns. Otherwise the commit, the prune and the compaction run on the follow-up
       thread (2), and `take` returns as soon as the state is staged.
    2. Follow-up thread: wait for the store's commit, prune, then compact the log through
       the newest snapshot with an archive, the oldest retained without (invariant 4), and
       never past `protected` (a multi-rank journal's newest snapshot committed on every
       rank, which retention also keeps). It never waits on the training thread,
       so `collect(block=True)` from the training thread cannot deadlock.
    3. `collect(block)`: finish the in-flight snapshot if it is done (block=False, before
       each apply) or once it is (block=True). A failure is reported, never raised
       (`last_error`, a RuntimeWarning; invariant 8), except JournalPoisonedError.
    4. `close()` waits for the follow-up thread and stops it; `abandon()` lets an
       in-flight snapshot finish, ignoring its outcome, as a killed process's store
       thread would have been cut off (in one process it would race the next open).

    `guarded(call, *args)` runs a log call and turns LogPoisonedError into the journal's
    JournalPoisonedError; every log write here goes through it.
    """

    def __init__(self, path: Path, log, store, capture: Callable[[], Any], guarded: Callable, *,
                 keep_log: bool, asynchronous: bool, counts: Callable[[], Mapping[str, int]] = dict,
                 archived: bool = True):
        self._path = path
        self._log = log
        self._store = store
        self._capture = capture
        self._counts = counts  # the user-entry counts at the index being snapshotted (replay.counting)
        self._guarded = guarded
        self._keep_log = keep_log
        self._archived = archived  # the log archives what it compacts (else compaction deletes)
        self._oldest: int | None = None  # index of the oldest snapshot the last prune left (None: not listed yet)
        self.asynchronous = asynchronous  # False: policy snapshots block the apply that triggers them
        self._pending: tuple[int, Future] | None = None
        self._follow_up: ThreadPoolExecutor | None = None
        self.covered = -1  # index of the newest snapshot this journal started (or recovered from)
        # (index, term) of the newest snapshot this journal committed (or recovered from);
        # a multi-rank journal confirms it across ranks (replay.ranks.coordinator).
        self.committed: tuple[int, int] | None = None
        # A multi-rank journal's newest snapshot committed on every rank: retention keeps
        # it and compaction never goes past it (None: no such bound, a single-rank journal).
        self.protected: int | None = None
        self.last_error: BaseException | None = None

    @property
    def in_flight(self) -> bool:
        """Whether a snapshot was started and not yet collected."""
        return self._pending is not None

    def take(self, index: int, blocking: bool) -> Future:
        """Snapshot the live state at `index`; a future of its SnapshotInfo (done when blocking).

        Blocking, errors raise here; otherwise from the future's `result()` (and are
        reported by the next `collect`). The state may change as soon as this returns.
        """
        self._guarded(self._log.wait_durable, index)
        tree = self._capture()
        term = self._log.term_at(index)
        meta = snapshot_meta(index, self._log.checksum_at(index), self._counts())
        self.covered = index
        if blocking:
            info = self._store.save(tree, index=index, term=term, meta=meta)
            self.committed = (info.index, info.term)
            self._after_commit()
            return done(info)
        handle = self._store.save_async(tree, index=index, term=term, meta=meta)
        follow_up = self._follow_up_thread().submit(self._finish, handle)
        self._pending = (index, follow_up)
        return follow_up

    def take_for_policy(self, index: int, blocking: bool | None = None) -> None:
        """`take` for a snapshot the policy (or a default closing snapshot) asked for: its
        failure never fails the apply that triggered it (that entry is applied and logged; a
        caller retrying it would apply it twice). The log still holds every entry, so
        recovery stays correct, only longer. blocking=None: unless the journal's snapshots
        are asynchronous."""
        try:
            self.take(index, blocking=not self.asynchronous if blocking is None else blocking)
        except JournalPoisonedError:
            raise
        except Exception as exc:
            self._report(index, exc)

    def collect(self, block: bool) -> None:
        """Finish the in-flight snapshot if it is done (or, with block, once it is)."""
        if self._pending is None:
            return
        index, follow_up = self._pending
        if not block and not follow_up.done():
            return
        self._pending = None
        try:
            follow_up.result()
        except JournalPoisonedError:
            raise
        except Exception as exc:
            self._report(index, exc)

    def close(self) -> None:
        """Wait for the follow-up thread to finish its work, then stop it. Idempotent."""
        if self._follow_up is not None:
            self._follow_up.shutdown(wait=True)

    def abandon(self) -> None:
        """Let the in-flight snapshot finish, ignoring how; then `close`."""
        if self._pending is not None:
            try:
                self._pending[1].result()
            except Exception:  # noqa: BLE001 - a killed process never learns the outcome
                pass
            self._pending = None
        self.close()

    def _follow_up_thread(self) -> ThreadPoolExecutor:
        if self._follow_up is None:
            self._follow_up = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-snapshot")
        return self._follow_up

    def _finish(self, handle):
        info = handle.result()
        self.committed = (info.index, info.term)
        self._after_commit()
        return info

    def _report(self, index: int, exc: BaseException) -> None:
        # The next policy snapshot tries again.
        self.last_error = exc
        warnings.warn(f"{self._path}: snapshot at index {index} failed: {exc}", RuntimeWarning, stacklevel=4)

    def _after_commit(self) -> None:
        """Prune, then compact the log (invariant 4). Failpoints (replay.failpoints):
        journal.before_compact, journal.after_compact; a crash between them leaves a longer
        LMDB log, never a shorter history.

        With an archive, LMDB is compacted through the newest snapshot: the entries move
        into sealed archive segments and stay readable, so a damaged newest snapshot is
        still passed over by replaying them from an older one. Without (compaction
        deletes), only through the oldest retained snapshot, which keeps that way back
        in LMDB itself."""
        protected = self.protected
        if self._oldest is None:
            retained = self._store.list()
            self._oldest = retained[0].index if retained else None
        self._store.keep_oldest = keep_oldest_snapshot(
            self._log, self._oldest, compaction_deletes=not (self._archived or self._keep_log))
        self._store.prune(protect=() if protected is None else (protected,))
        retained = self._store.list()
        self._oldest = retained[0].index if retained else None
        if self._keep_log:
            return
        if retained:
            through = max(i.index for i in retained) if self._archived else min(i.index for i in retained)
            if protected is not None:
                through = min(through, protected)
            if through >= self._log.live_first_index:
                failpoints.hit("journal.before_compact")
                self._guarded(self._log.compact_through, through)
                failpoints.hit("journal.after_compact")


def done(value) -> Future:
    """A future that already holds `value`."""
    future: Future = Future()
    future.set_result(value)
    return future
