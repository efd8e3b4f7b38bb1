"""Background durability workers: the group-commit flusher and the periodic syncer.

What each durability mode can lose in a crash is documented in the package docstring;
these classes are how `group` and `os` keep those promises. They see the writer only
through `Committer` and its tail only through the tail's methods.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from .tail import Tail

DURABILITY_MODES = {"sync", "group", "os"}


class Committer(Protocol):
    """What a durability worker needs from the writer."""

    @property
    def failed(self) -> bool:
        """Fenced or poisoned: nothing more may be committed."""

    def commit_pending(self, max_batch: int) -> None:
        """Commit the oldest (at most `max_batch`) tail entries in one durable transaction."""

    def sync(self) -> None:
        """fsync the storage: every committed transaction becomes durable."""

    def poison(self, exc: BaseException) -> None:
        """Record a failed commit or sync: every later call on the log raises."""

    def raise_if_failed(self) -> None:
        """Raise the writer's FencedError or LogPoisonedError, if it has one."""


class GroupFlusher:
    """Commits the writer's tail in batches, one fsynced transaction each.

    An entry waits at most `window` seconds (measured from the oldest uncommitted entry)
    before the commit that covers it starts; a batch starts early once `max_batch`
    entries are waiting, or at once when a thread blocks in `wait_durable`/`flush`.
    Entries arriving while a commit runs form the next batch, so under load the batch
    grows with the fsync latency (natural group commit). A failed commit poisons the
    log and the thread stops: nothing is retried.

    Threads: appenders call `notify_locked` holding the tail's lock; the flusher thread
    runs `_run`; `stop` is called once, by close.
    """

    def __init__(self, committer: Committer, tail: Tail, window: float, max_batch: int, name: str):
        if window < 0 or max_batch < 1:
            raise ValueError("group_window must be >= 0 and group_max_batch >= 1")
        self._committer = committer
        self._tail = tail
        self._window = window
        self.max_batch = max_batch
        self._work = threading.Condition(tail.lock)
        self._stopping = False
        self._oldest_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"eventlog-flusher:{name}", daemon=True)
        self._thread.start()

    def notify_locked(self) -> None:
        """Tell the flusher entries or durability waiters are waiting; caller holds the tail's lock."""
        if self._oldest_at is None:
            self._oldest_at = time.monotonic()
        self._work.notify()

    def stop(self) -> None:
        """Commit whatever is still waiting, then end the thread. Idempotent."""
        with self._work:
            self._stopping = True
            self._work.notify()
        self._thread.join()

    def _run(self) -> None:
        committer, tail = self._committer, self._tail
        while True:
            with self._work:
                while not tail.pending and not self._stopping and not committer.failed:
                    self._work.wait()
                if committer.failed or (self._stopping and not tail.pending):
                    return
                while (not self._stopping and not tail.blocked and self._oldest_at is not None
                       and tail.pending < self.max_batch):
                    linger = self._window - (time.monotonic() - self._oldest_at)
                    if linger <= 0:
                        break
                    self._work.wait(linger)  # woken by appends and by waiters; re-check
                self._oldest_at = time.monotonic() if tail.pending > self.max_batch else None
            try:
                # The writer takes the batch itself, under its commit lock, so a concurrent
                # truncate_after can never drop entries this commit is writing.
                committer.commit_pending(self.max_batch)
            except BaseException as exc:  # poison: every later call raises, waiters wake
                committer.poison(exc)
                return


class PeriodicSyncer:
    """`os` mode: fsyncs the storage every `interval` seconds, advancing durable_index."""

    def __init__(self, committer: Committer, tail: Tail, interval: float, name: str):
        if interval <= 0:
            raise ValueError("os_sync_interval must be > 0")
        self._committer = committer
        self._tail = tail
        self._interval = interval
        self._stop = threading.Event()
        self._syncing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"eventlog-syncer:{name}", daemon=True)
        self._thread.start()

    def sync_now(self) -> None:
        """fsync now; on return every entry committed before the call is durable."""
        committer, tail = self._committer, self._tail
        with self._syncing:
            with tail.lock:
                committer.raise_if_failed()
                target = tail.committed_index
            try:
                committer.sync()
            except BaseException as exc:
                committer.poison(exc)
                committer.raise_if_failed()
            tail.mark_durable(target)

    def stop(self) -> None:
        """End the thread (the log's close syncs once more). Idempotent."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sync_now()
            except BaseException:
                return  # poisoned: the next call on the log raises
