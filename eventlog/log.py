"""EventLog: the durable, term-fenced, checksum-chained write-ahead log on LMDB.

EventLog states the public contract and holds the pieces: `Storage` (the committed
log), a `Writer` (term, fencing, the uncommitted `Tail`, durability workers) unless the
log is open readonly, a `Reader` for batched reads, and `verification.verify`. Its read
methods (entry, entries, headers, term_at, checksum_at, sealed_range, segment_ranges,
segments, verify) live in its base class `queries.LogQueries`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import lmdb

from . import record
from .codec import encode_payload
from .durability import DURABILITY_MODES
from .lmdbenv import SharedEnv, check_same_process
from .errors import ClosedError, FormatError, LogError
from .lmdbfile import STRUCTURAL_ERRORS, damaged
from .locking import WriterLock, fsync_directory, refuse_network_filesystem
from .archive import Archive, check_policy
from .queries import LogQueries
from .reader import CommittedView, Reader, View
from .storage import Storage
from .writer import Writer

DEFAULT_MAP_SIZE = 256 * 2**20


class EventLog(LogQueries):
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
        group_window: float = 0.1,
        group_max_batch: int = 8192,
        os_sync_interval: float = 1.0,
        takeover: bool = False,
        on_commit: Callable[[range], None] | None = None,
        archive: Archive | None = Archive(),
    ) -> "EventLog":
        """Open (creating if needed, unless readonly) the log at directory `path`.

        - readonly=True: never creates a log, takes no lock, bumps no term; works beside a
          live writer in another process. A missing or foreign path raises FormatError.
          It creates or uses LMDB's ``lock.mdb`` (its reader table) when this process may
          write it, and otherwise reads without one (a read-only mount, another user's
          log; see environment.can_lock for what that gives up beside a live writer).
        - A writer takes the exclusive writer lock (LockedError at once if another process
          holds it) and persists ``term = previous term + 1`` in the transaction that reads
          it; every entry it appends carries that term.
        - takeover=True fences a hung writer instead of waiting for its lock: the new term
          fences the old writer, whose next write raises FencedError, writes nothing and
          drops its lock. The takeover writer holds ``takeover.lock`` at once and claims
          ``writer.lock`` as soon as it is free (see locking.WriterLock), so while it
          lives a plain open gets LockedError and `eventlog.writer_pid` names it.
        - durability is "sync", "group" or "os" (see the package docs for what each loses).
        - group_window (group mode, seconds, >= 0): the bound on how long an appended entry
          may stay not durable, not counting the one fdatasync that ends it. The flusher
          commits what waits every half window (one fdatasync per commit, which also makes
          the previous batch durable) and syncs a last batch by the window's end, so 5-50 ms
          training steps share commits. `wait_durable`/`flush` never wait for it. 0 commits
          and syncs every entry at once. group_max_batch: entries per commit at most.
        - map_size is the initial LMDB map; it doubles whenever it fills.
        - A path on a network filesystem, a non-log directory or file, or a log of a
          newer format version raises LogError/FormatError naming it.
        - on_commit: called with each range of indexes that has just become durable (group
          mode: on the flusher thread, once per commit or sync that moved durable_index;
          a commit makes the batch before it durable). For metrics and benchmarks; it must
          return quickly and must not call the log.
        - archive: where `compact_through` puts the entries it drops. An `Archive` (the
          default keeps everything) seals them into immutable segments under
          ``path/archive/`` first, and they stay readable; None deletes them (format
          version 1's behaviour). TypeError for anything else. Readers always read
          whatever archive the log has; the policy only matters to a writer.
        """
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {sorted(DURABILITY_MODES)}, got {durability!r}")
        archive = check_policy(archive)
        return cls(Path(path), durability, readonly, map_size, takeover, on_commit,
                   (group_window, group_max_batch, os_sync_interval), archive)

    def __init__(self, path, durability, readonly, map_size, takeover, on_commit, background, archive=Archive()):
        self._path = path
        self._durability = durability
        self._pid = os.getpid()
        self._generation = SharedEnv.generation
        self._closed = False
        self._lock: WriterLock | None = None
        self._storage: Storage | None = None
        self._writer: Writer | None = None

        _check_path(path, readonly)
        created = []  # directories this open creates, outermost first
        if not readonly:
            created = [p for p in (*reversed(path.parents), path) if not p.exists()]
            creating = created or not (path / "data.mdb").exists()
            path.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(path)
            self._lock.acquire(takeover=takeover)
        try:
            self._storage = Storage(path, readonly, map_size, durability)
            if not readonly:
                self._writer = Writer(self._storage, self._lock, durability, self._pid, on_commit, archive)
                if creating:
                    _fsync_new_names(path, created)
                self._writer.start_background(*background)
        except STRUCTURAL_ERRORS as exc:
            self._release()
            raise damaged(path, exc) from exc
        except lmdb.Error as exc:
            self._release()
            raise LogError(f"cannot open {path}: {exc}") from exc
        except BaseException:
            self._release()
            raise
        # The one place a handle's kind is decided: every bound is read through the view.
        self._view: View = self._writer if self._writer is not None else CommittedView(self._storage)
        self._reader = Reader(self._storage, self._view)

    def _release(self) -> None:
        """Release the environment and the writer lock (after a failed open, and by close)."""
        if self._storage is not None:
            self._storage.release()
        if self._lock is not None:
            self._lock.release()

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
        return self._writer is None

    @property
    def term(self) -> int:
        """A writer's own term; for a readonly log, the current term stored in the log."""
        self._check_open()
        return self._view.term

    @property
    def first_index(self) -> int:
        """Index of the oldest readable entry, archived or live; last_index + 1 when the log holds none.

        It moves only when history is really deleted: by a compaction with archive=None or
        by the archive's retention policy.
        """
        self._check_open()
        return self._view.first_index

    @property
    def live_first_index(self) -> int:
        """Index of the oldest entry still in LMDB (entries first_index..live_first_index - 1
        are sealed in the archive); last_index + 1 when LMDB holds none."""
        self._check_open()
        return self._view.live_first_index

    @property
    def last_index(self) -> int:
        """Index of the newest appended entry; first_index - 1 when the log holds none."""
        self._check_open()
        return self._view.last_index

    @property
    def durable_index(self) -> int:
        """Newest index that survives a power loss (all entries up to it do too).

        For a readonly log: the newest committed index (whether the writer has synced it
        cannot be seen from outside the writer).
        """
        self._check_open()
        return self._view.durable_index

    @property
    def bytes_appended(self) -> int:
        """Stored bytes (header + op + payload) this writer has appended since it opened; 0 for readers.

        Truncated entries are not subtracted: it counts work written, for policies such as
        "snapshot every N bytes of log".
        """
        return self._view.bytes_appended

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
        op_bytes = record.known_op_bytes(op) if type(op) is str else None
        if op_bytes is None:
            op_bytes = record.check_op(op)
        if encoded is None:
            payload_bytes = encode_payload(payload)
        elif payload is None and type(encoded) is bytes:  # the journal's path: checked inline
            payload_bytes = encoded
        else:
            payload_bytes = _given_encoding(payload, encoded)
        if len(payload_bytes) > record.MAX_PAYLOAD_LEN:
            raise ValueError(f"{op!r}: payload of {len(payload_bytes)} bytes exceeds 4 GiB")
        writer = self._writer
        if writer is None:
            writer = self._writing()  # raises the readonly (or closed) error
        return writer.append_one(op_bytes, payload_bytes)

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
        return self._writing().append_encoded(encoded)

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
        if self._writer is None:
            raise LogError("wait_durable needs the writer; this log is open readonly")
        self._writer.wait_durable(index, timeout)

    def flush(self) -> int:
        """Make every appended entry durable; return durable_index (== last_index).

        Entries that `truncate_after` removes while this waits no longer count as
        appended: the wait ends once everything still in the log is durable.
        """
        self._check_open()
        if self._writer is None:
            return self.last_index
        return self._writer.flush()

    def truncate_after(self, index: int, *, then_append: tuple[str, Any] | None = None) -> int | None:
        """Drop every entry after `index` (a conflicting or poisoned suffix), durably.

        No-op when index == last_index (and then_append is None). CompactedError if
        index < first_index - 1; SealedError (a CompactedError) if index <
        live_first_index - 1 (sealed history is never rewritten); IndexError if index >
        last_index. The next append gets
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
        return self._writing().truncate_after(index, then_append)

    def compact_through(self, index: int) -> None:
        """Move every entry up to and including `index` out of LMDB (a snapshot covers them), durably.

        No-op when index < live_first_index (already compacted). IndexError if index >
        last_index. Afterwards live_first_index == index + 1. With an archive (the
        default) the entries are first sealed into durable segments and stay readable
        (`entry`, `entries`, `term_at`, `verify` see them); the archive's retention may
        then delete whole oldest segments, moving first_index. With archive=None they are
        deleted: first_index == index + 1 and term_at(index) still answers from the kept
        boundary. Compacting through last_index leaves LMDB empty; the next append is
        index + 1. A crash at any point loses nothing (FORMAT.md, "Sealing").
        """
        self._writing().compact_through(index)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Flush (group mode), sync (os mode), stop background threads, release the lock.

        Idempotent. In group mode a failed final flush raises LogPoisonedError after
        releasing everything; entries it covered were never acknowledged as durable.
        """
        if self._closed or os.getpid() != self._pid:
            return
        error = self._writer.close() if self._writer is not None else None
        self._closed = True
        self._release()
        if error is not None:
            raise error
        lost = self._writer.lost_entries() if self._writer is not None else None
        if lost is not None:
            raise lost

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("readonly" if self._writer is None else self._writer.describe())
        return f"<EventLog {self._path} {state}>"

    def _check_open(self) -> None:
        check_same_process(self._path, self._pid, self._generation)
        if self._closed:
            raise ClosedError(f"EventLog {self._path} is closed")

    def _writing(self) -> Writer:
        """The writer, for a call that writes; LogError for a readonly log (after the open checks)."""
        writer = self._writer
        if writer is None:
            self._check_open()
            raise LogError(f"{self._path} is open readonly")
        return writer


def _fsync_new_names(path: Path, created: list[Path]) -> None:
    """Make data.mdb, lock files and created directories survive a power loss.

    LMDB fsyncs the file's contents, never the directory entry naming it: after a
    power loss a freshly created log could vanish along with acknowledged entries.
    The log directory and every directory holding a name this open created are fsynced.
    """
    for directory in {path, path.parent, *(p.parent for p in created)}:
        fsync_directory(directory)


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
