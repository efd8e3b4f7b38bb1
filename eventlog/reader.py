"""Reading the log: batched, verified reads that consult the writer's tail, then storage.

A read sees the log through a `View`: a readonly handle's view is the committed log,
re-read on every call (another process writes it); a writer's view is its own
bookkeeping plus the entries still in its tail (see writer.Writer).
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

from . import record
from .archive import ArchiveDir
from .errors import CompactedError, CorruptEntryError, DamagedSegmentError
from .storage import Storage

READ_BATCH = 1024  # entries per read transaction: readers never pin pages for long
READ_BATCH_BYTES = 4 * 2**20  # ... and at most this many bytes copied out of the map
DECODE_CHUNK = 64  # entries decoded ahead of the consumer
MISSING = "entry is missing from the log"  # CorruptEntryError's reason for a key absent inside the bounds


class View(Protocol):
    """What one handle sees of the log's bounds and of entries not in storage yet."""

    @property
    def term(self) -> int: ...
    @property
    def first_index(self) -> int: ...
    @property
    def live_first_index(self) -> int: ...
    @property
    def last_index(self) -> int: ...
    @property
    def durable_index(self) -> int: ...
    @property
    def bytes_appended(self) -> int: ...

    def pending_values(self, lo: int, hi: int) -> list[bytes]:
        """Values of uncommitted entries lo, lo+1, ... below hi (stops at the first committed or absent)."""

    def still_appended(self, index: int) -> bool:
        """Whether this handle appended `index` and has not truncated it (a read may retry it)."""


class CommittedView:
    """A readonly handle's view: the committed log as of each call."""

    bytes_appended = 0  # a reader appends nothing

    def __init__(self, storage: Storage):
        self._storage = storage

    @property
    def term(self) -> int:
        with self._storage.read_txn() as txn:
            return self._storage.current_term(txn)

    @property
    def first_index(self) -> int:
        with self._storage.read_txn() as txn:
            return self._storage.bounds(txn).archive_first

    @property
    def live_first_index(self) -> int:
        with self._storage.read_txn() as txn:
            return self._storage.bounds(txn).first_index

    @property
    def last_index(self) -> int:
        with self._storage.read_txn() as txn:
            return self._storage.bounds(txn).last_index

    @property
    def durable_index(self) -> int:
        # Whether the writer has synced it cannot be seen from outside the writer.
        return self.last_index

    def pending_values(self, lo: int, hi: int) -> list[bytes]:
        return []

    def still_appended(self, index: int) -> bool:
        return False


class Reader:
    """Verified reads of entries and headers in short read transactions, across the archive
    (entries below live_first_index) and LMDB, as one log."""

    def __init__(self, storage: Storage, view: View):
        self._storage = storage
        self._view = view
        self._archive = ArchiveDir(storage.path)

    def entry(self, index: int) -> record.Entry:
        for found in self._iter_decoded(index, index + 1, _decode_entry, strict=True):
            return found
        raise IndexError(f"log index {index} is beyond last_index {self._view.last_index}")

    def entries(self, start: int | None, stop: int | None) -> Iterator[record.Entry]:
        return self._iter_decoded(start, stop, _decode_entry)

    def entry_batches(self, start: int | None, stop: int | None, size: int) -> Iterator[list[record.Entry]]:
        """`entries` in lists of at most `size` (LogQueries.entry_batches); ValueError if size < 1."""
        if size < 1:
            raise ValueError(f"entry batch size must be at least 1, got {size}")
        return self._iter_decoded(start, stop, _decode_entry, chunk=size)

    def headers(self, start: int | None, stop: int | None, verify: bool) -> Iterator[record.EntryHeader]:
        if verify:
            return self._iter_decoded(start, stop, _decode_header)
        return self._iter_decoded(start, stop, _decode_header_unverified, head_only=True)

    def stored_values(self, start: int, stop: int) -> Iterator[tuple[int, object]]:
        """(index, stored value) for [start, stop), framing checked, as stored (for sealing copies).

        Range errors as `entry`'s for `start`; checksums are left to the caller, which
        chains them from the entry before `start`.
        """
        return self._iter_decoded(start, stop, _stored_value, strict=True)

    def term_at(self, index: int) -> int:
        pending = self._view.pending_values(index, index + 1)
        if pending:
            return record.parse_header(index, pending[0])[2]
        with self._storage.read_txn() as txn:
            bounds = self._storage.bounds(txn)
            if index >= bounds.first_index:
                if index > bounds.last_index:
                    raise IndexError(f"term_at({index}): last_index is {bounds.last_index}")
                value = self._storage.value(txn, index)
                if value is None:
                    raise CorruptEntryError(index, MISSING)
                return record.parse_header(index, value)[2]
        if index == bounds.first_index - 1:
            return bounds.boundary_term
        if _at_boundary(index, bounds.archive_first):
            return bounds.archive_boundary_term
        loaded = self._archived(index, bounds)
        return record.parse_header(index, loaded.values[index - loaded.first])[2]

    def checksum_at(self, index: int) -> int:
        with self._storage.read_txn() as txn:
            bounds = self._storage.bounds(txn)
        if index == bounds.first_index - 1:
            return bounds.boundary_checksum
        if _at_boundary(index, bounds.archive_first):
            return bounds.archive_boundary_checksum
        for header in self._iter_decoded(index, index + 1, _decode_header, strict=True):
            return header.checksum
        raise IndexError(f"checksum_at({index}): last_index is {self._view.last_index}")

    def _archived(self, index: int, bounds):
        """The checked segment holding archived entry `index` (archive_first <= index < live first).

        A segment that vanished (retention deleted it since `bounds` were read) is
        CompactedError once the committed bounds say so; otherwise damage.
        """
        try:
            loaded = self._archive.load(index, bounds.archive_first, bounds.first_index)
            self._archive.check_chain(loaded, bounds)  # once per segment loaded, not per entry
            return loaded
        except DamagedSegmentError:
            with self._storage.read_txn() as txn:
                now = self._storage.bounds(txn)
            if index < now.archive_first:
                raise CompactedError(index, now.archive_first) from None
            raise

    def _iter_decoded(self, start, stop, decode: Callable, *, strict=False, head_only=False, chunk=None):
        """Yield decode(index, value, stored length, seed) for [start, stop), batch by batch.

        `decode` returns (item, checksum); each checksum seeds the next entry's check.
        The range is checked now; entries are read as the caller iterates. `chunk` (entries
        only): yield lists of at most that many entries instead of single entries.
        """
        first, last = self._view.first_index, self._view.last_index
        lo = first if start is None else start
        hi = last + 1 if stop is None else min(stop, last + 1)
        if strict and lo < 1:
            raise IndexError(f"log index {lo} is out of range {first}..{last}")
        if lo < first:
            raise CompactedError(lo, first)
        if strict and lo > last:
            raise IndexError(f"log index {lo} is out of range {first}..{last}")
        return self._generate(lo, hi, decode, head_only, chunk)

    def _generate(self, lo, hi, decode, head_only, chunk=None):
        index = lo
        while index < hi:
            batch, seed = self._read_batch(index, min(hi, index + READ_BATCH), head_only)
            if not batch:
                # _read_batch found neither `index` nor anything after it in the log's
                # bounds (a gap raises there, from the same read transaction).
                if self._view.still_appended(index):
                    # The group flusher committed `index` between the LMDB read (it was
                    # not there yet) and the tail read (it had left): read it again.
                    continue
                return  # the log ends before `index`: truncated by the writer since the range was set
            if decode is _decode_entry:
                # The whole batch in one tight loop (record.decode_entries): the same
                # checks and errors, a fraction of the calls per entry.
                # A few at a time: the entries a consumer holds at once stay young, so the
                # garbage collector's passes stay short (decoding a whole batch before
                # yielding the first made the collector promote and rescan thousands).
                step = DECODE_CHUNK if chunk is None else chunk
                for at in range(0, len(batch), step):
                    entries, error = record.decode_entries(batch[at:at + step], seed)
                    if chunk is None:
                        yield from entries
                    elif entries:
                        yield entries
                    if error is not None:
                        raise error
                    seed = entries[-1].checksum
            elif decode is _decode_header_unverified:
                heads, error = record.decode_heads(batch)
                yield from heads
                if error is not None:
                    raise error
            else:
                for i, value, length in batch:
                    if isinstance(value, CorruptEntryError):
                        raise value
                    item, seed = decode(i, value, length, seed)
                    yield item
            index = batch[-1][0] + 1

    def _read_batch(self, lo, hi, head_only=False) -> tuple[list[tuple[int, bytes, int]], int | None]:
        """(index, value, stored length) for [lo, hi) and the checksum that seeds lo, from one
        read transaction (or from the writer's tail for entries not yet committed).

        A batch also ends after READ_BATCH_BYTES of values. head_only copies just the
        header and op of each value (the payload stays in the map).

        [] if the log ends before lo (no entry lo committed or in the writer's tail), or
        when the writer's flusher committed lo - 1 between this transaction and the tail
        read (the caller asks `still_appended` and reads again).
        CorruptEntryError(lo) if lo is missing from LMDB although the bounds read in the
        same transaction reach past it (a gap, never the end of the log); an entry missing
        after lo ends the batch with its CorruptEntryError in place of its value (the
        entries before it are yielded first, as for a damaged value).
        """
        batch: list[tuple[int, bytes, int]] = []
        copied = 0
        storage = self._storage
        with storage.read_txn() as txn:
            bounds = storage.bounds(txn)
            first, bsum = bounds.first_index, bounds.boundary_checksum
            if lo < first:
                archived = True
            else:
                archived = False
                if lo == first:
                    seed = bsum
                else:
                    prev = storage.value(txn, lo - 1)
                    seed = record.stored_checksum(lo - 1, prev) if prev is not None else None
                expected = lo
                framing = record.FRAMING.unpack_from
                append = batch.append
                for index, value in storage.values_from(txn, lo, exact=True):
                    if index >= hi or copied >= READ_BATCH_BYTES:
                        break
                    if index != expected:
                        append((expected, CorruptEntryError(expected, MISSING), 0))
                        break  # raised when the reader gets there
                    expected += 1
                    # The framing is checked before anything is copied (see record.copy_framed):
                    # inline for a sound value, through copy_framed (which names the damage) otherwise.
                    length = len(value)
                    if length >= record.HEADER_SIZE:
                        version, flags, op_len, payload_len = framing(value)
                        sound = (version == record.ENTRY_VERSION and not flags
                                 and length == record.HEADER_SIZE + op_len + payload_len)
                    else:
                        sound = False
                    if not sound:
                        append((index, record.copy_framed(index, value, head_only), length))
                        break  # raised when the reader gets there
                    copy = bytes(value[:record.HEADER_SIZE + op_len]) if head_only else bytes(value)
                    append((index, copy, length))
                    copied += len(copy)
                if not batch and lo <= bounds.last_index:
                    # Entries after lo are committed in this same snapshot, so lo was not
                    # truncated away (a truncation drops the whole suffix in one commit).
                    raise CorruptEntryError(lo, MISSING)
        if archived:
            return self._archived_batch(lo, min(hi, first), bounds)
        # The writer's tail continues the committed entries only where LMDB ran out of
        # them, never after damage (the batch then ends at the damage, raised in place).
        at_damage = bool(batch) and isinstance(batch[-1][1], BaseException)
        if not at_damage and len(batch) < hi - lo and copied < READ_BATCH_BYTES:
            if not batch and seed is None:
                # Neither lo - 1 nor lo was committed when the transaction began: both come
                # from the tail, in one read, so the flusher cannot commit lo - 1 between
                # the two (lo's seed gone from the tail, lo still in it). [] when it has
                # committed lo - 1 since: the caller reads again (still_appended).
                values = self._view.pending_values(lo - 1, hi)
                if not values:
                    return [], None
                seed = record.stored_checksum(lo - 1, values[0])
                batch.extend((i, value, len(value)) for i, value in enumerate(values[1:], lo))
                return batch, seed
            start = lo + len(batch)
            batch.extend((i, value, len(value)) for i, value in enumerate(self._view.pending_values(start, hi), start))
        if batch and seed is None:
            prev = self._view.pending_values(lo - 1, lo)
            if not prev:
                raise CorruptEntryError(lo - 1, MISSING)
            seed = record.stored_checksum(lo - 1, prev[0])
        return batch, seed


    def _archived_batch(self, lo: int, hi: int, bounds) -> tuple[list[tuple[int, object, int]], int]:
        """Archived entries [lo, hi) from the one segment holding lo (at most READ_BATCH) and lo's seed."""
        if lo < bounds.archive_first:
            raise CompactedError(lo, bounds.archive_first)
        loaded = self._archived(lo, bounds)
        stop = min(hi, loaded.last + 1, lo + READ_BATCH)
        values = loaded.values
        batch = [(i, values[i - loaded.first], len(values[i - loaded.first])) for i in range(lo, stop)]
        seed = None
        if lo == loaded.first:
            # Chain the segment to what precedes it rather than trusting its own header, where
            # that is known without another read: the archive's boundary, or the segment read
            # just before (a scan). A self-consistent segment of another log then fails here.
            seed = bounds.archive_boundary_checksum if lo == bounds.archive_first else self._archive.checksum_before(lo)
        return batch, loaded.seed(lo) if seed is None else seed


def _at_boundary(index: int, first_index: int) -> bool:
    """Whether `index` is the compaction boundary (first_index - 1); CompactedError below it."""
    if index < first_index - 1:
        raise CompactedError(index, first_index)
    return index == first_index - 1


def _decode_entry(index, value, length, seed):
    entry = record.decode_entry(index, value, seed)
    return entry, entry.checksum


def _decode_header(index, value, length, seed):
    header = record.decode_header(index, value, seed)
    return header, header.checksum


def _stored_value(index, value, length, seed):
    return (index, value), record.stored_checksum(index, value)


def _decode_header_unverified(index, head, length, seed):
    header = record.decode_head(index, head, length)
    return header, header.checksum
