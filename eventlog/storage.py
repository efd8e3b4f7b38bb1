"""The committed log: the ``entries`` and ``meta`` databases of one LMDB environment.

Storage holds no writer state. Reads are short transactions (`read_txn`); a write is
one transaction through `write`, which re-reads the current term first (fencing) and
grows the map when it fills. The writer decides what a failed write means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import lmdb

from . import meta, record
from .lmdbenv import ReadTxn, SharedEnv
from .errors import CorruptEntryError, FencedError, FormatError, LogError
from .meta import Bounds


class PrefixChanged(Exception):
    """The entry a compaction sealed is no longer in LMDB as sealed (truncated and re-appended meanwhile)."""


class Storage:
    """One log directory's LMDB environment and its two databases, shared per process (SharedEnv)."""

    def __init__(self, path: Path, readonly: bool, map_size: int, durability: str):
        """Open the environment and its databases; a writer creates them (see `meta.initialise`).

        FormatError if a readonly open finds no event log databases. The caller releases
        the storage (`release`) if anything after this fails.
        """
        self.path = path
        self._shared = SharedEnv.acquire(path, readonly, map_size, durability)
        self.env, self._gate = self._shared.env, self._shared.gate
        self._writing = self._gate.writing  # held across every write transaction (lmdbenv.TxnGate)
        self._fence_term, self._fence_raw = None, b""  # `write`'s term and its stored bytes
        # Whether LMDB syncs the meta page inside each commit (MDB_NOMETASYNC off). The
        # environment is shared per process, so its first opener's mode decides it, not ours.
        self.meta_synced = bool(self.env.flags()["metasync"])
        try:
            if readonly:
                try:
                    self._entries_db = self.env.open_db(b"entries", create=False)
                    self._meta_db = self.env.open_db(b"meta", create=False)
                except lmdb.NotFoundError:
                    raise FormatError(f"{path} is not an event log (no entries/meta databases)") from None
                with self.read_txn() as txn:
                    meta.check_format(txn, self._meta_db, path)
                    self.current_term(txn)  # a damaged term record is damage at open
            else:
                self._with_map_growth(self._open_databases)
        except BaseException:
            self._shared.release()
            raise

    def _open_databases(self) -> None:
        with self._writing:  # open_db runs a write transaction of its own
            self._entries_db = self.env.open_db(b"entries")
            self._meta_db = self.env.open_db(b"meta")

    def release(self) -> None:
        """Drop this handle's share of the environment (closed with the last one)."""
        self._shared.release()

    # ------------------------------------------------------------------ reading

    def read_txn(self) -> ReadTxn:
        """A short read transaction (context manager) that adopts a map grown elsewhere."""
        return ReadTxn(self.env, self._gate, self.path, self._shared.lockless)

    def bounds(self, txn) -> Bounds:
        """(first_index, last_index, boundary term, boundary checksum) as committed in `txn`."""
        return meta.read_bounds(txn, self._meta_db, self._entries_db, self.path)

    def current_term(self, txn) -> int:
        """The log's current term (the newest writer's) in `txn`."""
        return meta.read_u64(txn, self._meta_db, meta.TERM, self.path)

    def value(self, txn, index: int):
        """The raw stored value of entry `index` in `txn` (a buffer into the map), or None."""
        return txn.get(record.key(index), db=self._entries_db)

    def checksum_in(self, txn, index: int) -> int:
        """Stored checksum of committed entry `index`, or the boundary's for index first_index - 1.

        CorruptEntryError if the entry is missing or its framing is damaged.
        """
        bounds = self.bounds(txn)
        if index == bounds.first_index - 1:
            return bounds.boundary_checksum
        value = self.value(txn, index)
        if value is None:
            raise CorruptEntryError(index, "entry is missing from the log")
        return record.stored_checksum(index, value)

    def term_and_checksum(self, index: int) -> tuple[int | None, int | None]:
        """(term, stored checksum) of committed entry `index` in LMDB, (None, None) if it is not there.

        CorruptEntryError if its framing is damaged.
        """
        with self.read_txn() as txn:
            value = self.value(txn, index)
            if value is None:
                return None, None
            _, _, term, _, checksum, _ = record.parse_header(index, value)
            return term, checksum

    def values_from(self, txn, start: int, *, exact: bool = False) -> Iterator[tuple[int, object]]:
        """(index, raw value) in key order from `start` (from the next key present unless `exact`)."""
        cursor = txn.cursor(db=self._entries_db)
        found = cursor.set_key(record.key(start)) if exact else cursor.set_range(record.key(start))
        if found:
            for raw_key, value in cursor:
                yield record.index_of(raw_key), value

    # ------------------------------------------------------------------ writing

    def start_term(self) -> tuple[int, Bounds, int, CorruptEntryError | None]:
        """Writer open: initialise a new log, check its format and store term + 1, in one transaction.

        Returns (the new term, the bounds, the checksum the next entry chains from, and
        the CorruptEntryError of a last entry whose framing is damaged, else None).
        """
        def body():
            with self._writing, self.env.begin(write=True) as txn:
                meta.initialise(txn, self._meta_db, self._entries_db, self.path)
                meta.check_format(txn, self._meta_db, self.path)
                meta.upgrade(txn, self._meta_db, self.path)
                term = self.current_term(txn) + 1
                meta.write_term(txn, self._meta_db, term)
                bounds = self.bounds(txn)
                if bounds.last_index < bounds.first_index:
                    return term, bounds, bounds.boundary_checksum, None
                try:
                    return term, bounds, self.checksum_in(txn, bounds.last_index), None
                except CorruptEntryError as exc:
                    return term, bounds, 0, exc

        return self._with_map_growth(body)

    def write(self, term: int, body: Callable[..., None], *args) -> None:
        """Run `body(txn, *args)` in one write transaction and commit it, if `term` is still current.

        FencedError (nothing written) if another writer's term is current;
        DamagedLogError if the term record is damaged. A full map is grown and the
        transaction run again; any other LMDB error propagates (the caller cannot know
        what reached the disk).
        """
        fence = self._fence_raw if term == self._fence_term else self._fence_for(term)
        while True:
            try:
                with self._writing:
                    txn = self.env.begin(write=True, db=self._entries_db)
                    try:
                        # The fence: the stored term record must still be this writer's,
                        # byte for byte (one get and one compare on every commit; anything
                        # else is read properly, which names damage or the newer term).
                        if txn.get(meta.TERM, db=self._meta_db) != fence:
                            self._refuse_other_term(txn, term)
                        body(txn, *args)
                        txn.commit()
                    except BaseException:
                        txn.abort()
                        raise
                return
            except lmdb.MapFullError:
                self.grow_map()
            except lmdb.MapResizedError:
                self._gate.run_exclusive(lambda: self.env.set_mapsize(0))

    def append_one(self, term: int, key: bytes, value: bytes) -> None:
        """Append one entry (its `record.key`, its framed value) after the last key in its own
        transaction: `write` with the put inline, in one Python frame, for sync mode's
        path (paid on every fdatasync'd append). The same fence, map growth and errors as
        `write`; LogError (nothing written) if `key` is not after the last key."""
        fence = self._fence_raw if term == self._fence_term else self._fence_for(term)
        writing = self._writing
        while True:
            try:
                # acquire/release and positional arguments, not `with` and keywords: `with`
                # makes two bound methods, and each keyword call to py-lmdb a dict (about
                # 0.1 us each, per append).
                writing.acquire()
                try:
                    txn = self.env.begin(self._entries_db, None, True)  # db, parent, write
                    try:
                        if txn.get(meta.TERM, None, self._meta_db) != fence:  # key, default, db: the fence
                            self._refuse_other_term(txn, term)
                        if not txn.put(key, value, True, True, True):  # dupdata, overwrite, append=True
                            raise LogError(f"index {record.index_of(key)} collides with an existing entry; "
                                           "the log changed under this writer")
                        txn.commit()
                    except BaseException:
                        txn.abort()
                        raise
                finally:
                    writing.release()
                return
            except lmdb.MapFullError:
                self.grow_map()
            except lmdb.MapResizedError:
                self._gate.run_exclusive(lambda: self.env.set_mapsize(0))

    def _fence_for(self, term: int) -> bytes:
        """The stored bytes of term record `term` (remembered: a writer asks for its own term only)."""
        self._fence_term, self._fence_raw = term, meta.pack_u64(term)
        return self._fence_raw

    def _refuse_other_term(self, txn, term: int) -> None:
        """The term record in `txn` is not `term`'s bytes: FencedError naming the current term,
        or DamagedLogError for a damaged record (read_u64 names it); returns if it is `term`
        after all."""
        current = self.current_term(txn)
        if current != term:
            raise FencedError(term, current)

    def put_all(self, txn, framed: list[tuple[bytes, bytes]]) -> None:
        """In `txn`: append framed (key, value) pairs (keys from `record.key`) after the last key."""
        # putmulti walks the list in C: no Python call per entry, and fewer points where
        # the GIL can switch away from the flusher in the middle of a commit.
        cursor = txn.cursor(db=self._entries_db)
        consumed, added = cursor.putmulti(framed, append=True)
        if added != len(framed):
            raise LogError(f"indexes {record.index_of(framed[0][0])}..{record.index_of(framed[-1][0])} collide "
                           "with existing entries; the log changed under this writer")

    def delete_range(self, txn, lo: int, hi: int) -> None:
        """In `txn`: delete entries [lo, hi)."""
        for i in range(lo, hi):
            txn.delete(record.key(i), db=self._entries_db)

    def drop_prefix(self, txn, first: int, through: int, sealed_checksum: int | None = None,
                    archive: tuple[int, int, int] | None = None) -> tuple[int, int]:
        """In `txn`: delete entries first..through and make `through` the live boundary.

        sealed_checksum: the stored checksum of entry `through` as it was sealed into the
        archive; PrefixChanged (nothing deleted) if entry `through` is no longer that
        entry. archive: (archive_first, its boundary term, checksum) to record, or None
        to leave the archive boundary as it is. Returns (term, checksum) of `through`.
        """
        value = self.value(txn, through)
        if value is None:
            raise PrefixChanged(through)
        _, _, term, _, checksum, _ = record.parse_header(through, value)
        if sealed_checksum is not None and checksum != sealed_checksum:
            raise PrefixChanged(through)
        self.delete_range(txn, first, through + 1)
        meta.write_boundary(txn, self._meta_db, through + 1, term, checksum)
        if archive is not None:
            meta.write_archive_boundary(txn, self._meta_db, *archive)
        return term, checksum

    def grow_map(self) -> None:
        """Double the map (waits until no transaction of this process is open)."""
        self._gate.run_exclusive(lambda: self.env.set_mapsize(self.env.info()["map_size"] * 2))

    def sync(self) -> None:
        """fdatasync the environment: every committed transaction becomes durable, its meta
        page included (which a commit leaves unsynced unless `meta_synced`)."""
        self.env.sync(True)

    def reader_check(self) -> None:
        """Free the reader slots of dead processes, whose pinned pages could never be reused."""
        self.env.reader_check()

    def _with_map_growth(self, fn):
        while True:
            try:
                return fn()
            except lmdb.MapFullError:  # even a tiny initial map must not stop an open
                self.grow_map()
