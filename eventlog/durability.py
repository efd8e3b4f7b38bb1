"""Background durability workers: the group-commit flusher and the periodic syncer.

What each durability mode can lose in a crash is documented in the package docstring;
these classes are how `group` and `os` keep those promises.
"""

from __future__ import annotations

import threading
import time

DURABILITY_MODES = {"sync", "group", "os"}


class GroupFlusher:
    """Commits the writer's unflushed entries in batches, one fsynced transaction each.

    An entry waits at most `window` seconds (measured from the oldest unflushed entry)
    before the commit that covers it starts; a batch starts early once `max_batch`
    entries are waiting, or at once when a thread blocks in `wait_durable`/`flush`. Entries arriving while a commit runs form the next batch, so
    under load the batch grows with the fsync latency (natural group commit). A failed
    commit poisons the log and the thread stops: nothing is retried.
    """

    def __init__(self, log, window: float, max_batch: int):
        if window < 0 or max_batch < 1:
            raise ValueError("group_window must be >= 0 and group_max_batch >= 1")
        self._log = log
        self._window = window
        self.max_batch = max_batch
        self._work = threading.Condition(log._state)
        self._stopping = False
        self._oldest_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"eventlog-flusher:{log.path}", daemon=True)
        self._thread.start()

    def notify_locked(self) -> None:
        """Tell the flusher entries or durability waiters are waiting; caller holds the log's state lock."""
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
        log = self._log
        while True:
            with self._work:
                while not log._unflushed and not self._stopping and log._poison is None:
                    self._work.wait()
                if log._poison is not None or (self._stopping and not log._unflushed):
                    return
                while (not self._stopping and not log._durable_waiters and self._oldest_at is not None
                       and len(log._unflushed) < self.max_batch):
                    linger = self._window - (time.monotonic() - self._oldest_at)
                    if linger <= 0:
                        break
                    self._work.wait(linger)  # woken by appends and by waiters; re-check
                waiting = len(log._unflushed)
                self._oldest_at = time.monotonic() if waiting > self.max_batch else None
            try:
                # The log takes the batch itself, under its write lock, so a concurrent
                # truncate_after can never drop entries this commit is writing.
                log._commit_pending(self.max_batch)
            except BaseException as exc:  # poison: every later call raises, waiters wake
                log._set_poison(exc)
                return


class PeriodicSyncer:
    """`os` mode: fsyncs the environment every `interval` seconds, advancing durable_index."""

    def __init__(self, log, interval: float):
        if interval <= 0:
            raise ValueError("os_sync_interval must be > 0")
        self._log = log
        self._interval = interval
        self._stop = threading.Event()
        self._syncing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"eventlog-syncer:{log.path}", daemon=True)
        self._thread.start()

    def sync_now(self) -> None:
        """fsync now; on return every entry committed before the call is durable."""
        log = self._log
        with self._syncing:
            with log._state:
                log._raise_if_poisoned()
                target = log._committed_index
            try:
                log._env.sync(True)
            except BaseException as exc:
                log._set_poison(exc)
                log._raise_if_poisoned()
            with log._state:
                log._durable_index = max(log._durable_index, target)
                log._durable_cond.notify_all()

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
