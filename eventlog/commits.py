"""A writer's commits and syncs as its durability worker drives them (durability.py's
`Committer`): group commits of the tail, syncs of what is committed, durable_index, and
poisoning the log when one fails.

Why the durable index lags one commit behind (writer.py, "One sync per commit"): unless
LMDB syncs meta pages itself, a commit's fdatasync makes durable what was committed
before it, and its own entries only at the next fdatasync.
"""

from __future__ import annotations

import threading
from typing import Callable

from .health import WriterHealth
from .storage import Storage
from .tail import Tail


class Commits:
    """The `durability.Committer` of one writer.

    Edge cases first: a commit with an empty tail writes nothing; a sync with nothing
    committed beyond durable_index syncs nothing; `on_commit` is called only when
    durable_index moved. `write` is the writer's fenced write transaction (it poisons the
    log through `poison` on an LMDB failure). `committing` is the writer's commit lock;
    the tail's lock guards durable_index and the health, and is held (inside
    `committing`) while a group commit puts its batch, never across its fdatasync.
    """

    def __init__(self, storage: Storage, tail: Tail, committing: threading.Lock, health: WriterHealth,
                 meta_synced: bool, on_commit: Callable[[range], None] | None, write: Callable) -> None:
        self._storage = storage
        self._tail = tail
        self._committing = committing
        self._health = health
        self._meta_synced = meta_synced
        self._on_commit = on_commit
        self._write = write

    def commit_pending(self, max_batch: int) -> None:
        """Group mode: commit the oldest (at most `max_batch`) tail entries with one fdatasync.

        What becomes durable: everything committed before this commit (its data sync
        flushed the previous commit's meta page), and this batch too only if the
        environment syncs meta pages. The rest waits for the next commit or
        `sync_committed`. The batch is taken from the tail while holding `committing`, so
        a truncation (which takes it too) runs wholly before or wholly after this commit:
        it can never drop entries from the tail while a batch holding them is on its way
        to the disk.
        """
        with self._committing:
            tail = self._tail
            batch = tail.take(max_batch)
            if batch:
                synced_before = tail.committed_index
                # The batch is entries synced_before + 1 ..: only a commit (this lock) moves
                # committed_index, so it still names the entry before the batch here.
                last = synced_before + len(batch)
                self._write(self._put_holding_tail, batch)
                tail.mark_committed(last, durable=False)
                self.advance_durable(last if self._meta_synced else synced_before)

    def _put_holding_tail(self, txn, batch: list[tuple[bytes, bytes]]) -> None:
        """In `txn`: put `batch`, holding the tail's lock for the puts only (not the commit).

        py-lmdb's putmulti releases the GIL around every single put; while an appender
        runs Python in another thread, each put then waits to get the GIL back (a putmulti
        of 10000 entries took 47 ms beside a busy thread, 3.6 ms alone), so during a
        burst the flusher fell behind and most of the burst waited for the final flush.
        Appenders blocked on this lock wait with the GIL released: the puts run at full
        speed (about 0.4 us per entry, a few ms for a full batch, which is the longest an
        append can wait here), and the commit's page writes and fdatasync, after the lock
        is released, overlap the appends. Lock order stays committing, then the rest.
        """
        with self._tail.lock:
            self._storage.put_all(txn, batch)

    def sync_committed(self) -> None:
        """Group mode: fdatasync so that every committed entry is durable (its meta page with it)."""
        with self._committing:
            self.sync_committed_locked()

    def sync_committed_locked(self) -> None:
        """Under `committing`: fdatasync if any committed entry is not durable yet, then say so."""
        target = self._tail.committed_index
        if target > self._tail.durable_index:
            self._storage.sync()
            self.advance_durable(target)

    def advance_durable(self, index: int) -> None:
        """Entries through `index` (committed) survive a power loss now; tell on_commit what moved."""
        tail = self._tail
        with tail.lock:
            before = tail.durable_index
            tail.mark_durable(index)
            after = tail.durable_index
        if after > before and self._on_commit is not None:
            self._on_commit(range(before + 1, after + 1))

    def sync(self) -> None:
        """os mode: fsync the environment."""
        self._storage.sync()

    def poison(self, exc: BaseException) -> None:
        """A write or sync failed with `exc`: every later call raises; waiters wake."""
        with self._tail.lock:
            self._health.set_poison(exc)
            self._tail.wake_all()

    def raise_if_failed(self) -> None:
        """Raise the writer's FencedError or LogPoisonedError, if it has one."""
        self._health.raise_if_failed()

    @property
    def failed(self) -> bool:
        """Fenced or poisoned: nothing more may be committed."""
        return self._health.failed
