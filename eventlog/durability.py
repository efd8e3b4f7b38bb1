"""Background durability workers: the group-commit flusher and the periodic syncer.

What each durability mode can lose in a crash is documented in the package docstring;
these classes are how `group` and `os` keep those promises. They see the writer only
through `Committer` and its tail only through the tail's methods.

One sync per commit, and why the lag is safe. Group and os mode open LMDB with
MDB_NOMETASYNC: a commit writes its data pages, fdatasyncs them, then writes the meta
page that makes them current without syncing it. That meta page reaches the disk with
the next fdatasync of the file, which the next commit does first thing (or
`Storage.sync`). Until then a power loss may undo the commit, and LMDB opens at the
previous meta page, whose tree is intact: LMDB never reuses the pages of the two newest
trees, and that previous meta was synced by this commit's data sync. So the writer
acknowledges as durable only what was committed before the latest fdatasync
(Writer.commit_pending / sync_committed), never a commit's own entries from that
commit's return. Under steady appends every commit pays one fdatasync and makes the
previous batch durable; a trailing `sync_committed` covers the last batch. Proven by the
crash images of fault row 11 (tests/crash/test_power_loss.py), which also show that
acknowledging at commit return would lose entries.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from .tail import Tail

DURABILITY_MODES = {"sync", "group", "os"}

# Waiting entries that make a group commit due at once, window or not: a producer this
# fast (a burst, many threads) is served best by back-to-back commits, each of which also
# syncs the one before; a training loop (a few entries per window) never gets here.
EAGER_BATCH = 256


class Committer(Protocol):
    """What a durability worker needs from the writer."""

    @property
    def failed(self) -> bool:
        """Fenced or poisoned: nothing more may be committed."""

    def commit_pending(self, max_batch: int) -> None:
        """Commit the oldest (at most `max_batch`) tail entries in one transaction with one
        fdatasync; what was committed before it becomes durable (its own entries too if
        LMDB synced the meta page)."""

    def sync_committed(self) -> None:
        """fdatasync: every committed entry becomes durable."""

    def sync(self) -> None:
        """fsync the storage: every committed transaction becomes durable."""

    def poison(self, exc: BaseException) -> None:
        """Record a failed commit or sync: every later call on the log raises."""

    def raise_if_failed(self) -> None:
        """Raise the writer's FencedError or LogPoisonedError, if it has one."""


class GroupFlusher:
    """Commits the writer's tail in batches, one fdatasync each, so that every entry is
    durable at most `window` seconds after its append (plus the time of that fdatasync).

    Two deadlines drive it (all times from the monotonic clock):

    - commit: the oldest uncommitted entry arrived ``window / 2`` ago. The commit makes
      the previous commit durable and leaves its own batch waiting for a sync.
    - sync: the oldest committed but not yet durable entry arrived ``window`` ago. If
      entries wait to be committed then, they are committed (that commit's fdatasync
      syncs the earlier batch, so a steady stream pays one fdatasync per half window);
      otherwise a bare fdatasync makes the last batch durable.

    Both fire at once when a thread blocks in `wait_durable`/`flush`, when
    `eager_batch` (EAGER_BATCH, or max_batch if smaller) entries wait, and at `stop`.
    Entries arriving while a commit runs join the next batch, so under load the batch
    grows with the fsync latency (natural group commit).
    A failed commit or sync poisons the log and the thread stops: nothing is retried.

    Threads: appenders call `entry_arrived_locked` (the first waiting entry) or
    `notify_locked` (eager batch, waiters) holding the tail's lock; the flusher thread
    runs `_run`; `stop` is called once, by close.

    A first entry wakes the flusher only if it sleeps past that entry's commit deadline
    (``_asleep_until``): under a steady stream it already sleeps until the previous
    batch's sync deadline, which comes first, and then commits what waits. So a paced
    producer pays one flusher wake-up per commit, not two.
    """

    def __init__(self, committer: Committer, tail: Tail, window: float, max_batch: int, name: str):
        if window < 0 or max_batch < 1:
            raise ValueError("group_window must be >= 0 and group_max_batch >= 1")
        self._committer = committer
        self._tail = tail
        self._window = window
        self.max_batch = max_batch
        self.eager_batch = min(max_batch, EAGER_BATCH)
        self._work = threading.Condition(tail.lock)
        self._stopping = False
        self._oldest_at: float | None = None  # arrival of the oldest uncommitted entry
        self._unsynced_at: float | None = None  # arrival of the oldest committed, not durable entry
        # When the flusher's current sleep ends (inf: until notified); 0 while it is awake,
        # which means it re-checks the tail under the lock before it sleeps again.
        self._asleep_until = 0.0
        self._thread = threading.Thread(target=self._run, name=f"eventlog-flusher:{name}", daemon=True)
        self._thread.start()

    def notify_locked(self) -> None:
        """Tell the flusher entries or durability waiters are waiting; caller holds the tail's lock."""
        if self._oldest_at is None:
            self._oldest_at = time.monotonic()
        self._work.notify()

    def entry_arrived_locked(self) -> None:
        """The first entry waits to be committed (the tail held none); caller holds the tail's lock.

        Wakes the flusher only if it would otherwise sleep past the entry's commit
        deadline (arrival + window / 2): awake, it re-checks the tail before sleeping;
        asleep until an earlier deadline, it finds the entry then (class doc)."""
        if self._oldest_at is None:
            self._oldest_at = time.monotonic()
        if self._asleep_until > self._oldest_at + self._window / 2:
            self._work.notify()

    def stop(self) -> None:
        """Commit and sync whatever is still waiting, then end the thread. Idempotent."""
        with self._work:
            self._stopping = True
            self._work.notify()
        self._thread.join()

    def _next_step(self) -> str | None:
        """Under the lock: wait until there is work and it is due; "commit", "sync" or None (end)."""
        committer, tail = self._committer, self._tail
        while True:
            if committer.failed:
                return None
            pending = tail.pending
            unsynced = tail.committed_index > tail.durable_index
            if not pending and not unsynced:
                if self._stopping:
                    return None
                self._sleep(None)
                continue
            now = time.monotonic()
            if self._stopping or tail.blocked or pending >= self.eager_batch:
                due = now
            else:
                # A missing arrival time (entries a truncation re-buffered) counts from now.
                if pending and self._oldest_at is None:
                    self._oldest_at = now
                if unsynced and self._unsynced_at is None:
                    self._unsynced_at = now
                due = float("inf")
                if pending:
                    due = self._oldest_at + self._window / 2
                if unsynced:
                    due = min(due, self._unsynced_at + self._window)
            if due <= now:
                return "commit" if pending else "sync"
            self._sleep(due)  # woken by appends and by waiters; re-check

    def _sleep(self, until: float | None) -> None:
        """Under the lock: wait until monotonic time `until` (None: until notified)."""
        self._asleep_until = float("inf") if until is None else until
        try:
            self._work.wait(None if until is None else until - time.monotonic())
        finally:
            self._asleep_until = 0.0

    def _run(self) -> None:
        committer, tail = self._committer, self._tail
        while True:
            with self._work:
                step = self._next_step()
                if step is None:
                    return
                batch_since = self._oldest_at
                if step == "commit":
                    # What is left after a full batch arrived later than this batch's oldest.
                    self._oldest_at = time.monotonic() if tail.pending > self.max_batch else None
            try:
                if step == "commit":
                    started = time.monotonic()
                    # The writer takes the batch itself, under its commit lock, so a concurrent
                    # truncate_after can never drop entries this commit is writing.
                    committer.commit_pending(self.max_batch)
                    with self._work:
                        self._unsynced_at = batch_since  # the previous batch is durable now
                        if tail.pending and self._oldest_at is None:
                            # Appends during the commit saw the old batch still pending and did
                            # not notify: they arrived after the commit started.
                            self._oldest_at = started
                else:
                    committer.sync_committed()
                    with self._work:
                        self._unsynced_at = None
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
