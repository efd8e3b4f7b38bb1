"""The one writer of a log: frames entries, commits them, truncates and compacts.

Threads: any thread may append, wait, truncate and compact. `committing` serialises
LMDB write transactions (commits, truncation, compaction); the writer's bookkeeping
(first index, last checksum, health) and the tail are guarded by the tail's lock. In
group mode the flusher thread commits the tail; in os mode a syncer thread fsyncs
(durability.py). Both drive the writer's `commits.Commits` (its `Committer`) only.
Compaction (seal, drop, retention) is `compaction.Compactor`'s.

One sync per commit: unless the environment syncs meta pages (`Storage.meta_synced`,
sync mode), a commit's fdatasync makes its data pages durable but not the meta page
naming them, which LMDB writes after that sync. So a commit is not durable when it
returns; it becomes durable at the next fdatasync of the file (the next commit's, or an
explicit `Storage.sync`), which flushes the meta page too. `durable_index` therefore
advances to what was committed *before* a commit started, never to that commit's own
entries (durability.py, "Why the lag is safe").
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, NoReturn

import lmdb

from . import record
from .codec import encode_payload
from .durability import GroupFlusher, PeriodicSyncer
from .lmdbenv import SharedEnv, check_same_process
from .archive import Archive
from .commits import Commits
from .compaction import Compactor
from .errors import CompactedError, FencedError, SealedError
from .health import WriterHealth
from .locking import WriterLock
from .storage import Storage
from .tail import Tail, Waiter


class Writer:
    """A writer's state and its write paths. EventLog states each public contract.

    Call sequence:
    1. ``Writer(...)`` on the opening thread stores term + 1 (storage.start_term).
    2. ``start_background(...)`` starts the group flusher or os syncer thread.
    3. Any thread: append_one / append_encoded / wait_durable / flush / truncate_after /
       compact_through. The worker thread: `commits`' commit_pending (group) or sync
       (os), and poison when either fails.
    4. ``close()`` once, on the closing thread: the worker commits what waits and ends;
       then ``lost_entries()`` says what a failure kept from the disk.
    """

    def __init__(self, storage: Storage, lock: WriterLock, durability: str, pid: int,
                 on_commit: Callable[[range], None] | None, archive: Archive | None = Archive()):
        self._storage = storage
        self._lock = lock
        self._durability = durability
        self._pid = pid
        self._generation = SharedEnv.generation
        self.term, bounds, self._last_checksum, damage = storage.start_term()
        self._first_index = bounds.first_index  # live: the first entry in LMDB
        self._archive_first = bounds.archive_first  # the first readable entry
        self.tail = Tail(bounds.last_index)
        self._state = self.tail.lock
        self.committing = threading.Lock()  # one LMDB write transaction at a time
        # True only when LMDB syncs each commit's meta page itself (sync mode's environment).
        self.meta_synced = storage.meta_synced
        self.health = WriterHealth(storage.path, damage)
        self.bytes_appended = 0  # stored bytes framed since open; truncation does not subtract
        self._background: GroupFlusher | PeriodicSyncer | None = None
        self._eager_batch = 0  # the flusher's eager batch (group mode), read per append
        if durability == "sync":
            self.append_one = self._commit_one  # per mode, once: no dispatch per append
        elif durability == "group":
            self.append_one = self._buffer_one
        self.commits = Commits(storage, self.tail, self.committing, self.health, self.meta_synced, on_commit,
                               self.write)
        self._compactor = Compactor(self, storage, archive, bounds)
        if not self.meta_synced:
            storage.sync()  # the term bump must not be lost behind later entries

    def start_background(self, group_window: float, group_max_batch: int, os_sync_interval: float) -> None:
        """Start the group flusher or the os syncer (none in sync mode)."""
        name = str(self._storage.path)
        if self._durability == "group":
            self._background = GroupFlusher(self.commits, self.tail, group_window, group_max_batch, name)
            self._eager_batch = self._background.eager_batch
        elif self._durability == "os":
            self._background = PeriodicSyncer(self.commits, self.tail, os_sync_interval, name)

    # ------------------------------------------------------------------ the view readers see

    @property
    def first_index(self) -> int:
        return self._archive_first

    @property
    def live_first_index(self) -> int:
        return self._first_index

    @property
    def last_index(self) -> int:
        return self.tail.last_index

    @property
    def durable_index(self) -> int:
        return self.tail.durable_index

    def pending_values(self, lo: int, hi: int) -> list[bytes]:
        return self.tail.values(lo, hi)

    def still_appended(self, index: int) -> bool:
        with self._state:
            return index <= self.tail.last_index

    # ------------------------------------------------------------------ appending

    def append_one(self, op_bytes: bytes, payload_bytes: bytes) -> int:
        """Append one checked entry; return its index. (Sync and group mode replace it in
        ``__init__`` with their own path: no dispatch per entry.)"""
        return self.append_encoded([(op_bytes, payload_bytes)]).start

    def _buffer_one(self, op_bytes: bytes, payload_bytes: bytes) -> int:
        """Group mode's append_one: frame the entry into the tail; the flusher commits it. Under
        one GIL the flusher competes with this per-entry cost: no batch bookkeeping, and the
        lock taken with acquire/release (``with`` builds two bound methods per entry)."""
        state = self._state
        state.acquire()
        try:
            if not self.health.usable or self._generation != SharedEnv.generation:
                self.check_writable()
            tail = self.tail
            index = tail.last_index + 1
            key, value, self._last_checksum = record.frame_entry(
                index, self.term, op_bytes, payload_bytes, time.time_ns(), self._last_checksum)
            self.bytes_appended += len(value)
            pending = tail.append_one(key, value)
            # Otherwise the flusher already knows: it re-checks the count after every
            # commit, so telling it when the count crosses a threshold is enough.
            if pending == self._eager_batch:  # may be 1 (group_max_batch=1): at once
                self._background.notify_locked()
            elif pending == 1:
                self._background.entry_arrived_locked()
        finally:
            state.release()
        return index

    def _commit_one(self, op_bytes: bytes, payload_bytes: bytes) -> int:
        """Sync mode's append_one: append_encoded without the batch bookkeeping. Paid per
        fdatasync'd commit, after which the CPU runs cold (our CPU above a raw put+commit
        measured about 5x as much on disk as on /dev/shm): one frame, one fenced
        `Storage.append_one` (no callback), one tail update, locks as in _buffer_one."""
        committing, state = self.committing, self._state
        committing.acquire()
        try:
            state.acquire()
            try:
                if not self.health.usable or self._generation != SharedEnv.generation:
                    self.check_writable()
                tail = self.tail
                index = tail.last_index + 1
                key, value, checksum = record.frame_entry(index, self.term, op_bytes, payload_bytes,
                                                          time.time_ns(), self._last_checksum)
                try:
                    self._storage.append_one(self.term, key, value)
                except (FencedError, lmdb.Error) as exc:
                    self._write_failed(exc)
                self._last_checksum = checksum
                self.bytes_appended += len(value)
                if self.meta_synced:
                    tail.mark_one_committed(index, durable=True)
                else:  # an environment shared with an earlier group/os writer: sync the meta too
                    tail.mark_one_committed(index, durable=False)
                    self.commits.sync_committed_locked()
            finally:
                state.release()
        finally:
            committing.release()
        return index

    def append_encoded(self, encoded: list[tuple[bytes, bytes]]) -> range:
        """Append checked (op bytes, payload bytes) pairs in one transaction (or one tail extension)."""
        self.check_writable()
        tail = self.tail
        if self._durability == "group":
            with self._state:
                self.check_writable()
                framed, self._last_checksum = self._frame(encoded)
                tail.append(framed)
                if framed:
                    self._background.notify_locked()
                return range(tail.last_index + 1 - len(framed), tail.last_index + 1)
        with self.committing, self._state:
            self.check_writable()
            framed, last_checksum = self._frame(encoded)
            if framed:
                synced_before = tail.committed_index
                self.write(self._storage.put_all, framed)
                self._last_checksum = last_checksum
                tail.mark_committed(tail.committed_index + len(framed), durable=self.meta_synced)
                if self._durability == "sync":
                    self.commits.sync_committed_locked()  # no-op unless the shared env skips meta syncs
                else:  # os: this commit's fdatasync also flushed the previous commit's meta page
                    tail.mark_durable(synced_before)
            return range(tail.last_index + 1 - len(framed), tail.last_index + 1)

    def _frame(self, encoded) -> tuple[list[tuple[bytes, bytes]], int]:
        """(key, value) pairs of `encoded` framed after last_index, and the last checksum."""
        now = time.time_ns()
        checksum = self._last_checksum
        framed = []
        index = self.tail.last_index
        for op_bytes, payload_bytes in encoded:
            index += 1
            key, value, checksum = record.frame_entry(index, self.term, op_bytes, payload_bytes, now, checksum)
            framed.append((key, value))
            self.bytes_appended += len(value)
        return framed, checksum

    def write(self, body, *args) -> None:
        """One fenced write transaction (`body(txn, *args)`). A fenced writer drops its lock; any LMDB
        failure poisons the log: after a failed write or fsync we cannot know what reached
        the disk, so nothing is retried silently."""
        try:
            self._storage.write(self.term, body, *args)
        except (FencedError, lmdb.Error) as exc:
            self._write_failed(exc)

    def _write_failed(self, exc: FencedError | lmdb.Error) -> NoReturn:
        """Raise for a write that failed with `exc` (write's rule, shared with the sync path):
        FencedError once the lock is dropped; an LMDB error poisons, LogPoisonedError."""
        if isinstance(exc, FencedError):
            self.health.fence(exc)
            self._lock.release()  # no longer the writer: let the takeover writer hold the lock now
            raise exc
        self.poison(exc)
        raise self.health.write_failed() from exc

    def poison(self, exc: BaseException) -> None:
        """A write or sync failed with `exc`: every later call raises; waiters wake."""
        self.commits.poison(exc)

    @property
    def failed(self) -> bool:
        return self.health.failed

    # ------------------------------------------------------------------ durability

    def wait_durable(self, index: int, timeout: float | None) -> None:
        tail = self.tail
        with self._state:
            if index > tail.last_index:
                raise IndexError(f"index {index} is beyond last_index {tail.last_index}")
            if index <= tail.durable_index:
                return
        if self._durability == "os":
            self._background.sync_now()
            return
        tail.wait_until(lambda: tail.durable_index >= index, waiter=Waiter(index), timeout=timeout,
                        check=self.health.raise_if_waiting_is_futile, nudge=self._nudge)

    def flush(self) -> int:
        tail = self.tail
        with self._state:
            if tail.durable_index >= tail.last_index:
                return tail.durable_index
        if self._durability == "os":
            self._background.sync_now()
        else:
            tail.wait_until(lambda: tail.durable_index >= tail.last_index, waiter=None, timeout=None,
                            check=self.health.raise_if_waiting_is_futile, nudge=self._nudge)
        return tail.durable_index

    def _nudge(self) -> None:
        # Someone is blocked on durability: the flusher stops lingering for more entries
        # and commits now (the window only helps callers who do not wait).
        if self._durability == "group":
            self._background.notify_locked()

    # ------------------------------------------------------------------ rewriting

    def truncate_after(self, index: int, then_append: tuple[str, Any] | None) -> int | None:
        """Drop entries after `index`, then append `then_append` (op, payload) in the same transaction."""
        extra = _encoded_extra(then_append)
        self.check_writable(allow_tail_damage=True)
        self._storage.reader_check()  # as in compact_through: free the slots of dead readers
        tail = self.tail
        # The commit lock first: no group commit is in flight while the suffix is decided.
        with self.committing, self._state:
            if index < self._archive_first - 1:
                raise CompactedError(index, self._archive_first)
            if index < self._first_index - 1:
                raise SealedError(index, self._first_index)
            if index > tail.last_index:
                raise IndexError(f"truncate_after({index}): last_index is {tail.last_index}")
            if index == tail.last_index and self.health.tail_damage is None and extra is None:
                return None
            committed = tail.committed_index
            if index > committed:
                checksum = record.stored_checksum(index, tail.value(index))
            else:
                with self._storage.read_txn() as txn:
                    checksum = self._storage.checksum_in(txn, index)
            framed = []
            if extra is not None:
                value, after_checksum = record.frame(index + 1, self.term, *extra, time.time_ns(), checksum)
                framed = [(record.key(index + 1), value)]
            buffered = self._durability == "group" and index >= committed
            wrote = index < committed or (framed and not buffered)
            if wrote:
                # One transaction: the committed suffix goes and the new entry comes together.
                self.write(self._replace_after, index, committed, framed)
            tail.drop_after(index)
            self._last_checksum = checksum
            self.health.clear_tail_damage()
            if framed:
                self.bytes_appended += len(framed[0][1])
                self._last_checksum = after_checksum
                if buffered:
                    tail.append(framed)
                    self._background.notify_locked()
                else:
                    tail.mark_committed(index + 1, durable=self.meta_synced)
            if wrote and not self.meta_synced:
                # The rewrite is durable on return, as documented: its meta page too. (A
                # group rollback of buffered entries wrote nothing and pays no sync.)
                self._storage.sync()
                tail.mark_durable(tail.committed_index)
            return index + 1 if framed else None

    def _replace_after(self, txn, index: int, committed: int, framed) -> None:
        """In `txn`: delete committed entries index+1..committed, then put `framed`."""
        self._storage.delete_range(txn, index + 1, committed + 1)
        if framed:
            self._storage.put_all(txn, framed)

    def compact_through(self, index: int) -> None:
        """Seal entries live_first..index into the archive (unless archive=None), then drop
        them from LMDB and apply retention (compaction.py)."""
        self._compactor.compact_through(index)

    def moved_first(self, live_first: int, archive_first: int | None) -> None:
        """Compaction dropped the entries below `live_first` from LMDB, and the archive's
        first entry is now `archive_first` (None: unchanged)."""
        with self._state:
            self._first_index = live_first
            if archive_first is not None:
                self._archive_first = archive_first

    # ------------------------------------------------------------------ lifecycle

    def check_writable(self, allow_tail_damage: bool = False) -> None:
        """The error this writer's next write would get, if any (another process, closed, failed, damaged tail)."""
        check_same_process(self._storage.path, self._pid, self._generation)
        self.health.check_writable(allow_tail_damage)

    def close(self) -> BaseException | None:
        """Commit or sync what is waiting, stop the background thread; return (not raise) what failed.

        Afterwards every call and every waiter gets ClosedError; the caller releases
        storage and the lock, then raises `lost_entries()` if it is not None.
        """
        error = None
        try:
            if self._background is not None:
                self._background.stop()
            if not self.health.failed and not self.meta_synced:
                with self.committing:
                    self.commits.sync_committed_locked()
        except BaseException as exc:  # the caller still releases the environment and the lock
            error = exc
        finally:
            with self._state:
                self.health.close()
                self.tail.wake_all()
        return error

    def lost_entries(self):
        """The error for appended entries a failure kept from the disk, or None."""
        tail = self.tail
        # group: committed entries whose meta page was never synced count too; they were
        # never acknowledged, and after a failed sync the kernel may have dropped their pages.
        unsynced = tail.committed_index - tail.durable_index if self._durability == "group" else 0
        return self.health.lost_entries(tail.pending + unsynced)

    def describe(self) -> str:
        return f"term {self.term}, {self._durability}"



def _encoded_extra(then_append: tuple[str, Any] | None) -> tuple[bytes, bytes] | None:
    """truncate_after's then_append=(op, payload), checked and encoded (before anything is dropped)."""
    if then_append is None:
        return None
    op, payload = then_append
    extra = (record.check_op(op), encode_payload(payload))
    if len(extra[1]) > record.MAX_PAYLOAD_LEN:
        raise ValueError(f"{op!r}: payload of {len(extra[1])} bytes exceeds 4 GiB")
    return extra
