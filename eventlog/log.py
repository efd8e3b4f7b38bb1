"""EventLog: the durable, term-fenced, checksum-chained write-ahead log on LMDB."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb

from . import record
from .codec import encode_payload
from .durability import DURABILITY_MODES, GroupFlusher, PeriodicSyncer
from .errors import (
    CompactedError,
    CorruptEntryError,
    DamagedLogError,
    FencedError,
    FormatError,
    LogError,
    LogPoisonedError,
    TruncatedError,
)
from .environment import ReadTxn, SharedEnv
from .lmdbfile import STRUCTURAL_ERRORS, check_data_file, damaged
from .locking import WriterLock, describe_write_failure, fsync_directory, refuse_network_filesystem
from .report import Damage, VerifyReport

FORMAT_VERSION = 1
DEFAULT_MAP_SIZE = 256 * 2**20
READ_BATCH = 1024  # entries per read transaction: readers never pin pages for long
VERIFY_ATTEMPTS = 3  # verify walks; the last holds one read transaction (see verify)
READ_BATCH_BYTES = 4 * 2**20  # ... and at most this many bytes copied out of the map

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_META_FORMAT, _META_TERM = b"format", b"term"
_META_FIRST, _META_BTERM, _META_BSUM = b"first_index", b"boundary_term", b"boundary_checksum"


class EventLog:
    """An append-only log of (index, term, op, payload, time) entries. See the package docs.

    Indexes start at 1 and are contiguous. ``first_index`` is the oldest retained entry
    (1 until compaction), ``last_index`` the newest appended (0 for an empty,
    never-compacted log; ``first_index - 1`` whenever the log holds no entries), and
    ``durable_index`` the newest entry that survives a power loss.

    A writer is safe to use from several threads. Never use a log across ``fork()``:
    open it again in the child (a call from another pid raises LogError).
    """

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        durability: str = "sync",
        readonly: bool = False,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        group_window: float = 0.002,
        group_max_batch: int = 8192,
        os_sync_interval: float = 1.0,
        takeover: bool = False,
    ) -> "EventLog":
        """Open (creating if needed, unless readonly) the log at directory `path`.

        - readonly=True: never creates, takes no lock, bumps no term; works beside a live
          writer in another process. A missing or foreign path raises FormatError.
        - A writer takes the exclusive writer lock (LockedError at once if another process
          holds it) and persists ``term = previous term + 1`` in the transaction that reads
          it; every entry it appends carries that term.
        - takeover=True fences a hung writer instead of waiting for its lock: the new term
          fences the old writer, whose next write raises FencedError, writes nothing and
          drops its lock. The takeover writer holds ``takeover.lock`` at once and claims
          ``writer.lock`` as soon as it is free (see locking.WriterLock), so while it
          lives a plain open gets LockedError and `eventlog.writer_pid` names it.
        - durability is "sync", "group" or "os" (see the package docs for what each loses).
        - map_size is the initial LMDB map; it doubles whenever it fills.
        - A path on a network filesystem, a non-log directory or file, or a log of a
          newer format version raises LogError/FormatError naming it.
        """
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {sorted(DURABILITY_MODES)}, got {durability!r}")
        return cls(Path(path), durability, readonly, map_size, group_window, group_max_batch,
                   os_sync_interval, takeover)

    def __init__(self, path, durability, readonly, map_size, group_window, group_max_batch,
                 os_sync_interval, takeover):
        self._path = path
        self._durability = durability
        self._readonly = readonly
        self._pid = os.getpid()
        self._generation = SharedEnv.generation
        self._usable = False  # True while appends need no checks: open, writable, healthy
        self._state = threading.RLock()  # guards the index/checksum bookkeeping below
        self._writing = threading.Lock()  # one LMDB write transaction at a time
        self._durable_cond = threading.Condition(self._state)
        self._poison: BaseException | None = None
        self._poison_note = ""  # the poison's description for messages (says when the disk is full)
        self._fenced: FencedError | None = None
        self._closed = False
        self._lock: WriterLock | None = None
        self._background = None
        self._unflushed: list[tuple[int, bytes]] = []  # group mode: appended, not yet committed
        self._tail_damage: CorruptEntryError | None = None
        self._bytes_appended = 0
        self._durable_waiters = 0  # threads blocked in wait_durable/flush (group mode)
        self._waiters: set[_Waiter] = set()  # wait_durable callers, told when truncation removes their entry

        _check_path(path, readonly)
        created = []  # directories this open creates, outermost first
        if not readonly:
            created = [p for p in (*reversed(path.parents), path) if not p.exists()]
            creating = created or not (path / "data.mdb").exists()
            path.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(path)
            self._lock.acquire(takeover=takeover)
        try:
            self._shared = SharedEnv.acquire(path, readonly, map_size, durability)
            self._env, self._gate = self._shared.env, self._shared.gate
            if readonly:
                self._open_readonly()
            else:
                self._open_writer()
        except STRUCTURAL_ERRORS as exc:
            self._release_after_failed_open()
            raise damaged(path, exc) from exc
        except lmdb.Error as exc:
            self._release_after_failed_open()
            raise LogError(f"cannot open {path}: {exc}") from exc
        except BaseException:
            self._release_after_failed_open()
            raise
        self._refresh_usable()
        if not readonly and creating:
            self._fsync_new_names(created)
        if not readonly:
            if durability == "group":
                self._background = GroupFlusher(self, group_window, group_max_batch)
            elif durability == "os":
                self._background = PeriodicSyncer(self, os_sync_interval)

    def _fsync_new_names(self, created: list[Path]) -> None:
        """Make data.mdb, lock files and created directories survive a power loss.

        LMDB fsyncs the file's contents, never the directory entry naming it: after a
        power loss a freshly created log could vanish along with acknowledged entries.
        The log directory and every directory holding a name this open created are fsynced.
        """
        for directory in {self._path, self._path.parent, *(p.parent for p in created)}:
            fsync_directory(directory)

    def _release_after_failed_open(self):
        if getattr(self, "_shared", None) is not None:
            self._shared.release()
        if self._lock is not None:
            self._lock.release()

    def _open_readonly(self):
        try:
            self._entries_db = self._env.open_db(b"entries", create=False)
            self._meta_db = self._env.open_db(b"meta", create=False)
        except lmdb.NotFoundError:
            raise FormatError(f"{self._path} is not an event log (no entries/meta databases)") from None
        with self._read_txn() as txn:
            self._check_format(txn)
            self._term = self._meta_u64(txn, _META_TERM)

    def _open_writer(self):
        while True:
            try:
                return self._open_writer_once()
            except lmdb.MapFullError:  # even a tiny initial map must not stop an open
                self._grow_map()

    def _open_writer_once(self):
        self._entries_db = self._env.open_db(b"entries")
        self._meta_db = self._env.open_db(b"meta")
        with self._env.begin(write=True) as txn:
            if txn.get(_META_FORMAT, db=self._meta_db) is None:
                if txn.stat(self._entries_db)["entries"]:
                    raise FormatError(f"{self._path} has entries but no format record; not an event log")
                txn.put(_META_FORMAT, _U32.pack(FORMAT_VERSION), db=self._meta_db)
                for name in (_META_TERM, _META_BTERM, _META_BSUM):
                    txn.put(name, _U64.pack(0), db=self._meta_db)
                txn.put(_META_FIRST, _U64.pack(1), db=self._meta_db)
            self._check_format(txn)
            self._term = self._meta_u64(txn, _META_TERM) + 1
            txn.put(_META_TERM, _U64.pack(self._term), db=self._meta_db)
            first, last, bterm, bsum = self._bounds(txn)
            self._first_index, self._last_index = first, last
            self._committed_index = self._durable_index = last
            if last >= first:
                value = txn.get(record.key(last), db=self._entries_db)
                try:
                    self._last_checksum = record.stored_checksum(last, value)
                except CorruptEntryError as exc:
                    # Appending would chain onto garbage; refuse until the operator
                    # truncates the damaged tail (truncate_after) or restores the log.
                    self._tail_damage = exc
                    self._last_checksum = 0
            else:
                self._last_checksum = bsum
        if self._durability == "os":
            self._env.sync(True)  # the term bump must not be lost behind later entries

    def _check_format(self, txn):
        raw = txn.get(_META_FORMAT, db=self._meta_db)
        if raw is None or len(raw) != 4:
            raise FormatError(f"{self._path} is not an event log (no format record)")
        version = _U32.unpack(raw)[0]
        if version > FORMAT_VERSION:
            raise FormatError(
                f"{self._path} has log format version {version}; this eventlog reads up to {FORMAT_VERSION}. Upgrade eventlog."
            )

    def _meta_u64(self, txn, name: bytes) -> int:
        raw = txn.get(name, db=self._meta_db)
        if raw is None or len(raw) != 8:
            raise DamagedLogError(f"{self._path}: the log's metadata record {name.decode()!r} is missing or damaged")
        return _U64.unpack(raw)[0]

    def _bounds(self, txn) -> tuple[int, int, int, int]:
        """(first_index, last_index, boundary term, boundary checksum) as committed."""
        first = self._meta_u64(txn, _META_FIRST)
        bterm = self._meta_u64(txn, _META_BTERM)
        bsum = self._meta_u64(txn, _META_BSUM)
        cursor = txn.cursor(db=self._entries_db)
        last = record.index_of(cursor.key()) if cursor.last() else first - 1
        return first, last, bterm, bsum

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The log's directory."""
        return self._path

    @property
    def durability(self) -> str:
        """"sync", "group" or "os"."""
        return self._durability

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def term(self) -> int:
        """A writer's own term; for a readonly log, the current term stored in the log."""
        self._check_open()
        if self._readonly:
            with self._read_txn() as txn:
                return self._meta_u64(txn, _META_TERM)
        return self._term

    @property
    def first_index(self) -> int:
        """Index of the oldest retained entry; last_index + 1 when the log holds none."""
        self._check_open()
        if self._readonly:
            with self._read_txn() as txn:
                return self._bounds(txn)[0]
        return self._first_index

    @property
    def last_index(self) -> int:
        """Index of the newest appended entry; first_index - 1 when the log holds none."""
        self._check_open()
        if self._readonly:
            with self._read_txn() as txn:
                return self._bounds(txn)[1]
        return self._last_index

    @property
    def durable_index(self) -> int:
        """Newest index that survives a power loss (all entries up to it do too).

        For a readonly log: the newest committed index (whether the writer has synced it
        cannot be seen from outside the writer).
        """
        self._check_open()
        if self._readonly:
            return self.last_index
        return self._durable_index

    @property
    def bytes_appended(self) -> int:
        """Stored bytes (header + op + payload) this writer has appended since it opened; 0 for readers.

        Truncated entries are not subtracted: it counts work written, for policies such as
        "snapshot every N bytes of log".
        """
        return self._bytes_appended

    # ------------------------------------------------------------------ writing

    def append(self, op: str, payload: Any = None, *, encoded: bytes | None = None) -> int:
        """Append one entry; return its index (last_index + 1).

        - sync: returns once the entry is durable.
        - group: returns at once; the entry becomes durable within the commit window
          (``wait_durable(index)`` blocks for it).
        - os: returns once the entry is committed to the OS page cache.
        - A payload that cannot be encoded raises TypeError naming its path; nothing is
          appended. FencedError, LogPoisonedError, LogError as documented.
        - encoded: the payload already encoded by `eventlog.encode_payload` (then
          `payload` must be None, else ValueError). The bytes are stored as given and
          not decoded again, so a caller can encode once, hand
          ``decode_payload(encoded)`` to its consumer and know replay decodes the very
          same bytes. Bytes that did not come from encode_payload make an entry whose
          payload fails to decode on read (CorruptEntryError); a non-bytes value raises
          TypeError.
        """
        op_bytes = record.check_op(op)
        payload_bytes = encode_payload(payload) if encoded is None else _given_encoding(payload, encoded)
        if len(payload_bytes) > record.MAX_PAYLOAD_LEN:
            raise ValueError(f"{op!r}: payload of {len(payload_bytes)} bytes exceeds 4 GiB")
        if self._durability != "group":
            return self._append_encoded([(op_bytes, payload_bytes)]).start
        # The group-mode hot path: one entry, no batch bookkeeping. Under one GIL the
        # producer's per-entry cost is what the flusher competes with.
        with self._state:
            if not self._usable or self._generation != SharedEnv.generation:
                self._check_writable()
            index = self._last_index + 1
            value, self._last_checksum = record.frame(
                index, self._term, op_bytes, payload_bytes, time.time_ns(), self._last_checksum)
            self._bytes_appended += len(value)
            self._unflushed.append((index, value))
            self._last_index = index
            if len(self._unflushed) == 1 or len(self._unflushed) >= self._background.max_batch:
                self._background.notify_locked()  # otherwise the flusher is already due to run
        return index

    def append_many(self, items: Iterable[tuple[str, Any]]) -> range:
        """Append several entries in one transaction; return their range of indexes.

        All or nothing: if any payload fails to encode, TypeError names its position and
        path and nothing is appended. An empty iterable returns an empty range at
        last_index + 1. Durability as for `append`.
        """
        encoded = []
        for position, (op, payload) in enumerate(items):
            op_bytes = record.check_op(op)
            try:
                payload_bytes = encode_payload(payload)
            except TypeError as exc:
                raise TypeError(f"item {position} ({op!r}): {exc}") from None
            if len(payload_bytes) > record.MAX_PAYLOAD_LEN:
                raise ValueError(f"item {position} ({op!r}): payload of {len(payload_bytes)} bytes exceeds 4 GiB")
            encoded.append((op_bytes, payload_bytes))
        return self._append_encoded(encoded)

    def _append_encoded(self, encoded: list[tuple[bytes, bytes]]) -> range:
        """Append checked (op bytes, payload bytes) pairs in one transaction; see append_many."""
        self._check_writable()
        if self._durability == "group":
            return self._append_group(encoded)
        with self._writing, self._state:
            self._check_writable()
            framed, last_checksum = self._frame(encoded)
            if framed:
                synced_before = self._committed_index
                self._write_txn(lambda txn: self._put_all(txn, framed))
                self._last_index = self._committed_index = framed[-1][0]
                self._last_checksum = last_checksum
                if self._durability == "sync":
                    self._durable_index = self._last_index
                else:  # os: this commit's fdatasync also flushed the previous commit's meta page
                    self._durable_index = max(self._durable_index, synced_before)
            return range(self._last_index + 1 - len(framed), self._last_index + 1)

    def _frame(self, encoded) -> tuple[list[tuple[int, bytes]], int]:
        now = time.time_ns()
        checksum = self._last_checksum
        framed = []
        index = self._last_index
        for op_bytes, payload_bytes in encoded:
            index += 1
            value, checksum = record.frame(index, self._term, op_bytes, payload_bytes, now, checksum)
            framed.append((index, value))
            self._bytes_appended += len(value)
        return framed, checksum

    def _append_group(self, encoded) -> range:
        with self._state:
            self._check_writable()
            framed, last_checksum = self._frame(encoded)
            self._unflushed.extend(framed)
            self._last_index += len(framed)
            self._last_checksum = last_checksum
            if framed:
                self._background.notify_locked()
            return range(self._last_index + 1 - len(framed), self._last_index + 1)

    def _put_all(self, txn, framed):
        # putmulti keeps the whole batch in C: faster, and fewer points where the GIL can
        # switch away from the flusher in the middle of a commit.
        cursor = txn.cursor(db=self._entries_db)
        consumed, added = cursor.putmulti(((record.key(i), v) for i, v in framed), append=True)
        if added != len(framed):
            raise LogError(f"indexes {framed[0][0]}..{framed[-1][0]} collide with existing entries; "
                           "the log changed under this writer")

    def _commit_pending(self, max_batch: int) -> None:
        """Group mode: commit the oldest (at most `max_batch`) unflushed entries durably.

        The batch is taken from the buffer while holding the write lock, so a
        `truncate_after` (which takes the same lock) runs wholly before or wholly after
        this commit: it can never drop entries from the buffer while a batch holding
        them is on its way to the disk.
        """
        with self._writing:
            with self._state:
                batch = self._unflushed[:max_batch]
            if batch:
                self._commit_batch(batch)

    def _commit_batch(self, batch: list[tuple[int, bytes]]) -> None:
        """Commit `batch` (a prefix of the unflushed entries); the caller holds the write lock."""
        self._write_txn(lambda txn: self._put_all(txn, batch))
        with self._state:
            del self._unflushed[: len(batch)]
            self._committed_index = self._durable_index = batch[-1][0]
            self._durable_cond.notify_all()

    def _write_txn(self, body) -> None:
        """Run `body(txn)` in a fenced write transaction, growing the map when it fills.

        Any other LMDB failure poisons the log: after a failed write or fsync we cannot
        know what reached the disk, so nothing is retried silently.
        """
        while True:
            try:
                with self._gate:
                    txn = self._env.begin(write=True, db=self._entries_db)
                    try:
                        current = self._meta_u64(txn, _META_TERM)
                        if current != self._term:
                            self._fenced = FencedError(self._term, current)
                            self._usable = False
                            # No longer the writer: let the takeover writer hold the lock now.
                            self._lock.release()
                            raise self._fenced
                        body(txn)
                        txn.commit()
                    except BaseException:
                        txn.abort()
                        raise
                return
            except lmdb.MapFullError:
                self._grow_map()
            except lmdb.MapResizedError:
                self._gate.run_exclusive(lambda: self._env.set_mapsize(0))
            except lmdb.Error as exc:
                self._set_poison(exc)
                raise LogPoisonedError(f"write to {self._path} failed; the log is poisoned: {self._poison_note}") from exc

    def _grow_map(self) -> None:
        def grow():
            size = self._env.info()["map_size"]
            self._env.set_mapsize(size * 2)

        self._gate.run_exclusive(grow)

    def _set_poison(self, exc: BaseException) -> None:
        with self._state:
            if self._poison is None:
                self._poison = exc
                self._poison_note = describe_write_failure(self._path, exc)
            self._refresh_usable()
            self._durable_cond.notify_all()

    def wait_durable(self, index: int, timeout: float | None = None) -> None:
        """Block until entry `index` (and all before it) survives a power loss.

        Returns at once for index <= durable_index (0 and compacted indexes included).
        IndexError if index > last_index (it would never become durable);
        TruncatedError if `truncate_after` removes entry `index` while this waits (it
        never will become durable; a later entry may reuse its index, which is not the
        entry waited for); LogPoisonedError if the flush that would cover it failed;
        TimeoutError after `timeout` seconds.
        """
        self._check_open()
        if self._readonly:
            raise LogError("wait_durable needs the writer; this log is open readonly")
        with self._state:
            if index > self._last_index:
                raise IndexError(f"index {index} is beyond last_index {self._last_index}")
            if index <= self._durable_index:
                return
        if self._durability == "os":
            self._background.sync_now()
            return
        waiter = _Waiter(index)
        self._block_until(lambda: self._durable_index >= index, waiter, timeout)

    def _block_until(self, durable_enough, waiter: "_Waiter | None", timeout: float | None) -> None:
        """Wait (group mode) until durable_enough() holds under the state lock."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            # Someone is blocked on durability: the flusher stops lingering for more
            # entries and commits now (the window only helps callers who do not wait).
            self._durable_waiters += 1
            if waiter is not None:
                self._waiters.add(waiter)
            if self._durability == "group":
                self._background.notify_locked()
            try:
                while not durable_enough():
                    if waiter is not None and waiter.truncated_to is not None:
                        raise TruncatedError(waiter.index, waiter.truncated_to)
                    self._raise_if_poisoned()
                    if self._closed:
                        raise LogError(f"{self._path} was closed before the entries waited for became durable")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"entries not durable after {timeout} s")
                    self._durable_cond.wait(remaining)
            finally:
                self._durable_waiters -= 1
                self._waiters.discard(waiter)

    def flush(self) -> int:
        """Make every appended entry durable; return durable_index (== last_index).

        Entries that `truncate_after` removes while this waits no longer count as
        appended: the wait ends once everything still in the log is durable.
        """
        self._check_open()
        if self._readonly:
            return self.last_index
        with self._state:
            if self._durable_index >= self._last_index:
                return self._durable_index
        if self._durability == "os":
            self._background.sync_now()
        else:
            self._block_until(lambda: self._durable_index >= self._last_index, None, None)
        return self._durable_index

    def truncate_after(self, index: int, *, then_append: tuple[str, Any] | None = None) -> int | None:
        """Drop every entry after `index` (a conflicting or poisoned suffix), durably.

        No-op when index == last_index (and then_append is None). CompactedError if
        index < first_index - 1; IndexError if index > last_index. The next append gets
        index + 1 and chains from entry `index` (or from the compaction boundary).

        then_append=(op, payload): append that entry as index + 1 in the same
        transaction as the drop, and return index + 1 (None otherwise). A crash then
        leaves either the log untouched or both the drop and the entry (an operator's
        audit record can never be lost while the drop survives). The payload is encoded
        before anything is dropped: TypeError naming its path drops nothing.

        Group mode: dropped entries that were never committed leave the buffer without
        being written (a crash can never find them durable); committed ones are deleted
        in one durable transaction. Threads waiting in `wait_durable` for a dropped entry
        get TruncatedError. A then_append entry is durable on return in sync mode, as
        any append otherwise.
        """
        extra = None
        if then_append is not None:
            op, payload = then_append
            extra = (record.check_op(op), encode_payload(payload))
            if len(extra[1]) > record.MAX_PAYLOAD_LEN:
                raise ValueError(f"{op!r}: payload of {len(extra[1])} bytes exceeds 4 GiB")
        self._check_writable(allow_tail_damage=True)
        self._env.reader_check()  # as in compact_through: free the slots of dead readers
        # The write lock first: no group commit is in flight while the suffix is decided.
        with self._writing, self._state:
            if index < self._first_index - 1:
                raise CompactedError(index, self._first_index)
            if index > self._last_index:
                raise IndexError(f"truncate_after({index}): last_index is {self._last_index}")
            if index == self._last_index and self._tail_damage is None and extra is None:
                return None
            committed = self._committed_index
            if index > committed:
                checksum = record.stored_checksum(index, self._pending_value(index))
            else:
                checksum = self._last_checksum_at_commit(index)
            framed = []
            if extra is not None:
                value, after_checksum = record.frame(index + 1, self._term, *extra, time.time_ns(), checksum)
                framed = [(index + 1, value)]
            buffered = self._durability == "group" and index >= committed
            if index < committed or (framed and not buffered):
                # One transaction: the committed suffix goes and the new entry comes together.
                self._write_txn(lambda txn: self._replace_committed_after(txn, index, committed, framed))
            del self._unflushed[max(0, index - committed):]
            self._last_index = index
            self._committed_index = min(committed, index)
            self._durable_index = min(self._durable_index, index)
            self._last_checksum = checksum
            self._tail_damage = None
            self._refresh_usable()
            for waiter in self._waiters:
                if waiter.index > index:
                    waiter.truncated_to = index
            if framed:
                self._bytes_appended += len(framed[0][1])
                self._last_index, self._last_checksum = index + 1, after_checksum
                if buffered:
                    self._unflushed.append(framed[0])
                    self._background.notify_locked()
                else:
                    self._committed_index = index + 1
                    if self._durability != "os":
                        self._durable_index = index + 1
            self._durable_cond.notify_all()
            if self._durability == "os":
                self._env.sync(True)
                self._durable_index = self._committed_index
            return index + 1 if framed else None

    def _last_checksum_at_commit(self, index: int) -> int:
        """Checksum of committed entry `index` (or of the compaction boundary below first_index)."""
        with self._read_txn() as txn:
            if index >= self._first_index:
                return record.stored_checksum(index, txn.get(record.key(index), db=self._entries_db))
            return self._meta_u64(txn, _META_BSUM)

    def _replace_committed_after(self, txn, index: int, committed: int, framed) -> None:
        """In `txn`: delete committed entries index+1..committed, then put `framed`."""
        for i in range(index + 1, committed + 1):
            txn.delete(record.key(i), db=self._entries_db)
        if framed:
            self._put_all(txn, framed)

    def compact_through(self, index: int) -> None:
        """Drop every entry up to and including `index` (a snapshot covers them), durably.

        No-op when index < first_index (already compacted). IndexError if index >
        last_index. Afterwards first_index == index + 1 and term_at(index) still answers
        from the kept boundary; compacting through last_index leaves an empty log whose
        next append is index + 1.
        """
        self._check_writable()
        # Only the entries it drops must be committed (they are read from LMDB below);
        # waiting for the whole log would wait on entries a concurrent truncate_after
        # may be removing.
        with self._state:
            needed = min(index, self._last_index)
        if needed >= self._first_index:
            self.wait_durable(needed)
        # A reader killed inside a read transaction keeps its slot, and the old pages it
        # pinned can never be reused: the file would grow for as long as this writer runs.
        self._env.reader_check()
        # Only the write lock is held through the transaction: group-mode appends (which
        # take the state lock alone) go on while a background thread compacts.
        with self._writing:
            with self._state:
                if index < self._first_index:
                    return
                if index > self._last_index:
                    raise IndexError(f"compact_through({index}): last_index is {self._last_index}")
                first = self._first_index

            def drop_prefix(txn):
                value = txn.get(record.key(index), db=self._entries_db)
                _, _, term, _, checksum, _ = record.parse_header(index, value)
                for i in range(first, index + 1):
                    txn.delete(record.key(i), db=self._entries_db)
                txn.put(_META_FIRST, _U64.pack(index + 1), db=self._meta_db)
                txn.put(_META_BTERM, _U64.pack(term), db=self._meta_db)
                txn.put(_META_BSUM, _U64.pack(checksum), db=self._meta_db)

            self._write_txn(drop_prefix)
            with self._state:
                self._first_index = index + 1
            if self._durability == "os":
                self._env.sync(True)

    # ------------------------------------------------------------------ reading

    def entry(self, index: int) -> record.Entry:
        """The verified entry at `index`.

        CompactedError if index < first_index; IndexError if index < 1 or index >
        last_index; CorruptEntryError(index) if its bytes or chain link are damaged.
        """
        for found in self._iter_decoded(index, index + 1, _decode_entry, strict=True):
            return found
        raise IndexError(f"log index {index} is beyond last_index {self.last_index}")

    def entries(self, start: int | None = None, stop: int | None = None) -> Iterator[record.Entry]:
        """Verified entries with index in [start, stop), in order.

        start defaults to first_index; stop defaults to last_index + 1 as of the call and
        is clamped to it. CompactedError if start < first_index. Each batch is read in
        its own short read transaction, so a slow consumer never pins the writer's pages.
        Raises CorruptEntryError(index) at the first damaged entry.
        """
        return self._iter_decoded(start, stop, _decode_entry)

    def headers(self, start: int | None = None, stop: int | None = None, *, verify: bool = True
                ) -> Iterator[record.EntryHeader]:
        """Like `entries` but yields EntryHeader without decoding payloads (fast audit scans).

        verify=False skips the checksum and copies only each entry's header and op out of
        the map (framing is still checked), so it costs the same for any payload size.
        """
        if verify:
            return self._iter_decoded(start, stop, _decode_header)
        return self._iter_decoded(start, stop, _decode_header_unverified, head_only=True)

    def term_at(self, index: int) -> int:
        """Term of entry `index`, valid for first_index - 1 .. last_index.

        index == first_index - 1 answers from the compaction boundary (0 for index 0).
        CompactedError below that; IndexError above last_index.
        """
        self._check_open()
        with self._state:
            pending = self._pending_value(index)
        if pending is not None:
            return record.parse_header(index, pending)[2]
        with self._read_txn() as txn:
            first, last, bterm, _ = self._bounds(txn)
            last = max(last, self._last_index) if not self._readonly else last
            if index == first - 1:
                return bterm
            if index < first - 1:
                raise CompactedError(index, first)
            if index > last:
                raise IndexError(f"term_at({index}): last_index is {last}")
            value = txn.get(record.key(index), db=self._entries_db)
            if value is None:
                raise CorruptEntryError(index, "entry is missing from the log")
            return record.parse_header(index, value)[2]

    def checksum_at(self, index: int) -> int:
        """Chained checksum of entry `index`, valid for first_index - 1 .. last_index.

        index == first_index - 1 answers from the compaction boundary (0 for index 0, the
        seed of the first entry ever written). CompactedError below that; IndexError
        above last_index; CorruptEntryError(index) if the entry's bytes or its link to
        the entry before it are damaged (the checksum is verified, as `headers` does).
        """
        self._check_open()
        with self._read_txn() as txn:
            first, _, _, bsum = self._bounds(txn)
        if index == first - 1:
            return bsum
        if index < first - 1:
            raise CompactedError(index, first)
        for header in self._iter_decoded(index, index + 1, _decode_header, strict=True):
            return header.checksum
        raise IndexError(f"checksum_at({index}): last_index is {self.last_index}")

    def _pending_value(self, index):
        if self._readonly or index <= self._committed_index or index > self._last_index:
            return None
        return self._unflushed[index - self._committed_index - 1][1]

    def _iter_decoded(self, start, stop, decode, *, strict=False, head_only=False):
        """Yield decode(index, value, stored length, seed) for [start, stop), batch by batch.

        `decode` returns (item, checksum); each checksum seeds the next entry's check.
        """
        self._check_open()
        if self._readonly:  # another process may have appended or compacted: ask the log
            with self._read_txn() as txn:
                first, last, _, _ = self._bounds(txn)
        else:  # the writer's own bounds, no transaction needed
            with self._state:
                first, last = self._first_index, self._last_index
        lo = first if start is None else start
        hi = last + 1 if stop is None else min(stop, last + 1)
        if strict and lo < 1:
            raise IndexError(f"log index {lo} is out of range {first}..{last}")
        if lo < first:
            raise CompactedError(lo, first)
        if strict and lo > last:
            raise IndexError(f"log index {lo} is out of range {first}..{last}")
        return self._generate(lo, hi, decode, head_only)

    def _generate(self, lo, hi, decode, head_only):
        index = lo
        while index < hi:
            batch, seed = self._read_batch(index, min(hi, index + READ_BATCH), head_only)
            if not batch:
                if not self._readonly and self._still_appended(index):
                    # The group flusher committed `index` between the LMDB read (it was
                    # not there yet) and the buffer read (it had left): read it again.
                    continue
                return  # truncated concurrently by the writer
            for i, value, length in batch:
                if isinstance(value, CorruptEntryError):
                    raise value
                item, seed = decode(i, value, length, seed)
                yield item
            index = batch[-1][0] + 1

    def _still_appended(self, index: int) -> bool:
        with self._state:
            return index <= self._last_index

    def _read_batch(self, lo, hi, head_only=False) -> tuple[list[tuple[int, bytes, int]], int | None]:
        """(index, value, stored length) for [lo, hi) and the checksum that seeds lo, from one
        read transaction (or from the group-commit buffer for entries not yet committed).

        A batch also ends after READ_BATCH_BYTES of values. head_only copies just the
        header and op of each value (the payload stays in the map).
        """
        batch: list[tuple[int, bytes, int]] = []
        copied = 0
        with self._read_txn() as txn:
            first, _, _, bsum = self._bounds(txn)
            if lo < first:
                raise CompactedError(lo, first)
            if lo == first:
                seed = bsum
            else:
                prev = txn.get(record.key(lo - 1), db=self._entries_db)
                seed = record.stored_checksum(lo - 1, prev) if prev is not None else None
            cursor = txn.cursor(db=self._entries_db)
            if cursor.set_key(record.key(lo)):
                for raw_key, value in cursor:
                    index = record.index_of(raw_key)
                    if index >= hi or copied >= READ_BATCH_BYTES:
                        break
                    if index != lo + len(batch):
                        raise CorruptEntryError(lo + len(batch), "entry is missing from the log")
                    copy = _copy_framed(index, value, head_only)
                    if isinstance(copy, CorruptEntryError):
                        batch.append((index, copy, len(value)))  # raised when the reader gets there
                        break
                    copied += len(copy)
                    batch.append((index, copy, len(value)))
        if not self._readonly and len(batch) < hi - lo and copied < READ_BATCH_BYTES:
            with self._state:
                for index in range(lo + len(batch), hi):
                    pending = self._pending_value(index)
                    if pending is None:
                        break
                    batch.append((index, pending, len(pending)))
        if batch and seed is None:
            with self._state:
                prev = self._pending_value(lo - 1)
            if prev is None:
                raise CorruptEntryError(lo - 1, "entry is missing from the log")
            seed = record.stored_checksum(lo - 1, prev)
        return batch, seed

    def _read_txn(self):
        return ReadTxn(self._env, self._gate, self._path)

    # ------------------------------------------------------------------ verification

    def verify(self) -> VerifyReport:
        """Check every entry's framing and checksum, the chain, contiguity and terms.

        Never raises on damage: every problem is a `Damage(index, reason)` in the report
        (index 0 for damage to the file as a whole, such as a damaged page structure).
        Entries still in the group-commit buffer are flushed first (a writer's view).

        Beside a live writer (another process, or this writer's own threads) it reports
        only real damage: the entries first_index..last_index as of the call are read in
        short batches, and each batch re-reads the bounds. Entries compacted between two
        batches are skipped (the walk continues from the new boundary, whose checksum
        seeds the chain); entries truncated away shorten the walk. If the entry before a
        batch is no longer the one the walk checked (truncated and re-appended), the walk
        starts again, and on the last of `VERIFY_ATTEMPTS` tries holds one read
        transaction throughout, which sees one consistent log.
        """
        self._check_open()
        if not self._readonly and self._poison is None and self._fenced is None:
            self.flush()
        for attempt in range(VERIFY_ATTEMPTS):
            try:
                check_data_file(self._path)  # cut short since it was opened: touching the map would be a SIGBUS
                with self._read_txn() as txn:
                    first, last, bterm, _ = self._bounds(txn)
                    current = self._meta_u64(txn, _META_TERM)
            except DamagedLogError as exc:
                report = VerifyReport(str(self._path), 0, 0, 0, 0)
                report.damaged.append(Damage(0, str(exc)))
                return report
            report = VerifyReport(str(self._path), first, last, current, bterm)
            try:
                self._verify_walk(report, last, one_txn=attempt == VERIFY_ATTEMPTS - 1)
                return report
            except _Rewritten:
                continue
            except DamagedLogError as exc:
                report.damaged.append(Damage(0, str(exc)))
                return report
        raise AssertionError("unreachable: the last attempt holds one transaction")  # pragma: no cover

    def _verify_walk(self, report: VerifyReport, stop_at: int, one_txn: bool) -> None:
        """Verify entries up to `stop_at` into `report`, batch by batch (see verify)."""
        expected = seed = prev_term = None
        with (self._read_txn() if one_txn else contextlib.nullcontext()) as held:
            while True:
                with (contextlib.nullcontext(held) if one_txn else self._read_txn()) as txn:
                    first, last, bterm, bsum = self._bounds(txn)
                    if expected is None or expected < first:
                        # The start, or a compaction since the last batch: what it dropped
                        # cannot be damage; the new boundary seeds the chain.
                        report.first_index = max(report.first_index, first)
                        expected, seed, prev_term = first, bsum, max(bterm, prev_term or 0)
                    elif seed is not None and expected > first and not self._still_checked(txn, expected - 1, seed):
                        raise _Rewritten()
                    stop = min(stop_at, last)  # a truncation since the last batch shortens the walk
                    report.last_index = min(report.last_index, max(stop, first - 1))
                    if expected > stop:
                        return
                    rows = []
                    cursor = txn.cursor(db=self._entries_db)
                    if cursor.set_range(record.key(expected)):
                        for raw_key, value in cursor:
                            index = record.index_of(raw_key)
                            if index > stop:
                                break
                            rows.append((index, _copy_framed(index, value)))
                            if len(rows) >= READ_BATCH:
                                break
                if not rows:
                    report.damaged.append(Damage(expected, f"entries {expected}..{stop} are missing"))
                    return
                for index, value in rows:
                    if index != expected:
                        report.damaged.append(Damage(expected, f"entries {expected}..{index - 1} are missing"))
                        seed = None
                    seed, prev_term = self._verify_one(report, index, value, seed, prev_term)
                    expected = index + 1

    def _still_checked(self, txn, index: int, checksum: int) -> bool:
        """Whether entry `index` in `txn` is still the entry whose stored checksum the walk saw."""
        value = txn.get(record.key(index), db=self._entries_db)
        try:
            return value is not None and record.stored_checksum(index, value) == checksum
        except CorruptEntryError:
            return False

    def _verify_one(self, report, index, value, seed, prev_term):
        report.checked += 1
        try:
            if isinstance(value, CorruptEntryError):
                raise value
            op_len, payload_len, term, _, checksum, _ = record.parse_header(index, value)
        except CorruptEntryError as exc:
            report.damaged.append(Damage(index, exc.reason))
            return None, prev_term  # the next entry's link cannot be checked
        report.payload_bytes += payload_len
        if seed is not None:
            try:
                record.verify_value(index, value, seed)
            except CorruptEntryError as exc:
                report.damaged.append(Damage(index, exc.reason))
        if term < prev_term:
            report.damaged.append(Damage(index, f"term {term} is lower than the previous entry's term {prev_term}"))
        elif term > report.current_term:
            report.damaged.append(Damage(index, f"term {term} is above the log's current term {report.current_term}"))
        if not report.terms or report.terms[-1][0] != term:
            report.terms.append((term, index))
        return checksum, max(term, prev_term)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Flush (group mode), sync (os mode), stop background threads, release the lock.

        Idempotent. In group mode a failed final flush raises LogPoisonedError after
        releasing everything; entries it covered were never acknowledged as durable.
        """
        if self._closed or os.getpid() != self._pid:
            return
        error = None
        try:
            if self._background is not None:
                self._background.stop()
            if not self._readonly and self._poison is None and self._fenced is None:
                if self._durability == "os":
                    self._env.sync(True)
        except BaseException as exc:  # still release the environment and the lock
            error = exc
        finally:
            with self._state:
                self._closed = True
                self._usable = False
                self._durable_cond.notify_all()
            self._shared.release()
            if self._lock is not None:
                self._lock.release()
        if error is not None:
            raise error
        if self._fenced is not None and self._unflushed:
            raise FencedError(self._fenced.own_term, self._fenced.current_term)
        if self._poison is not None and self._unflushed:
            raise LogPoisonedError(
                f"{self._path}: {len(self._unflushed)} appended entries were never made durable: {self._poison_note}"
            )

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("readonly" if self._readonly else f"term {self._term}, {self._durability}")
        return f"<EventLog {self._path} {state}>"

    # ------------------------------------------------------------------ guards

    def _refresh_usable(self) -> None:
        """Recompute the one flag the append fast path checks; call after any state change it covers."""
        self._usable = not (self._closed or self._readonly or self._poison is not None
                            or self._fenced is not None or self._tail_damage is not None)

    def _check_open(self) -> None:
        if self._generation != SharedEnv.generation:
            raise LogError(
                f"EventLog {self._path} was opened in pid {self._pid} and used in pid {os.getpid()}; "
                "LMDB environments must not cross fork(): open the log again in the child"
            )
        if self._closed:
            raise LogError(f"EventLog {self._path} is closed")

    def _raise_if_poisoned(self) -> None:
        if self._fenced is not None:
            # Fenced is not poisoned: reopening would fence the live writer in turn.
            raise FencedError(self._fenced.own_term, self._fenced.current_term)
        if self._poison is not None:
            raise LogPoisonedError(
                f"{self._path} is poisoned by an earlier failed write ({self._poison_note}); "
                "reopen it to recover the durable prefix"
            ) from self._poison

    def _check_writable(self, allow_tail_damage: bool = False) -> None:
        self._check_open()
        if self._readonly:
            raise LogError(f"{self._path} is open readonly")
        self._raise_if_poisoned()
        if self._fenced is not None:
            raise FencedError(self._fenced.own_term, self._fenced.current_term)
        if self._tail_damage is not None and not allow_tail_damage:
            raise LogError(
                f"{self._path}: the last entry is damaged ({self._tail_damage}); appending would chain "
                f"onto it. Inspect with verify() and drop it with truncate_after({self._tail_damage.index - 1})"
            )


class _Rewritten(Exception):
    """verify: the log was truncated and re-appended under the walk; it starts again."""


def _copy_framed(index: int, value, head_only: bool = False) -> bytes | CorruptEntryError:
    """A copy of a stored value (of its header and op only if head_only) whose framing
    checks out, else the CorruptEntryError.

    The framing is checked on the value's header before anything else is copied: a
    damaged LMDB node can claim a length that runs past the end of the file, and copying
    it would touch unmapped pages (SIGBUS) or allocate without bound.
    """
    try:
        record.parse_header(index, value)
    except CorruptEntryError as exc:
        return exc
    return bytes(value[: record.head_length(value)]) if head_only else bytes(value)


class _Waiter:
    """A thread in wait_durable(index); truncate_after sets truncated_to when it drops the entry."""

    __slots__ = ("index", "truncated_to")

    def __init__(self, index: int):
        self.index = index
        self.truncated_to: int | None = None


def _given_encoding(payload: Any, encoded: Any) -> bytes:
    """The `encoded=` argument of append, checked for the contract it can check cheaply."""
    if payload is not None:
        raise ValueError("append: pass either payload or encoded=, not both")
    if type(encoded) is not bytes:
        raise TypeError(f"append: encoded= must be the bytes encode_payload returned, got {type(encoded).__name__}")
    return encoded


def _check_path(path: Path, readonly: bool) -> None:
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    refuse_network_filesystem(existing)
    if path.exists() and not path.is_dir():
        raise FormatError(f"{path} is a file, not an event log directory")
    if path.is_dir():
        has_data = (path / "data.mdb").exists()
        if not has_data and readonly:
            raise FormatError(f"{path} is not an event log (no data.mdb)")
        if has_data and readonly and (path / "data.mdb").stat().st_size == 0:
            # The creating writer died before LMDB's first commit: nothing was ever
            # acknowledged, and opening it for writing initialises it.
            raise FormatError(f"{path} is an event log whose creation never completed (empty data.mdb); "
                              "it holds no entries")
        if not has_data and any(p.name not in ("lock.mdb", "writer.lock", "takeover.lock") for p in path.iterdir()):
            raise FormatError(f"{path} is a non-empty directory that is not an event log; refusing to write into it")
    elif readonly:
        raise FormatError(f"{path} does not exist")


def _decode_entry(index, value, length, seed):
    entry = record.decode_entry(index, value, seed)
    return entry, entry.checksum


def _decode_header(index, value, length, seed):
    header = record.decode_header(index, value, seed)
    return header, header.checksum


def _decode_header_unverified(index, head, length, seed):
    header = record.decode_head(index, head, length)
    return header, header.checksum
