"""The read side of EventLog's public surface: verified entries and headers, terms and
checksums, sealed ranges for shipping, the archive's segments, and verify.

`LogQueries` is a base class of `EventLog` so that these methods keep their contracts on
the public class while log.py keeps opening, writing and the lifecycle. Each method
checks the handle is open and hands the work to the log's `Reader` (reader.py),
`transfer`, `archive` or `verification`; it relies on the attributes EventLog's open
sets (below) and on nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from . import record, transfer, verification
from .archive import ARCHIVE_DIR, SegmentInfo, segment_infos
from .reader import Reader, View
from .segment_checks import CheckedSegment
from .storage import Storage
from .verification import VerifyReport


class LogQueries:
    """EventLog's reads. A subclass sets `_path`, `_storage`, `_writer` (None when readonly),
    `_view`, `_reader`, and defines `_check_open`, `flush`, `first_index` and
    `live_first_index`."""

    _path: Path
    _storage: Storage
    _view: View
    _reader: Reader

    def entry(self, index: int) -> record.Entry:
        """The verified entry at `index`.

        CompactedError if index < first_index; IndexError if index < 1 or index >
        last_index; CorruptEntryError(index) if its bytes or chain link are damaged
        (DamagedSegmentError, naming the file, if its archive segment is damaged or missing).
        """
        self._check_open()
        return self._reader.entry(index)

    def entries(self, start: int | None = None, stop: int | None = None) -> Iterator[record.Entry]:
        """Verified entries with index in [start, stop), in order.

        start defaults to first_index; stop defaults to last_index + 1 as of the call and
        is clamped to it. CompactedError if start < first_index. Each batch is read in
        its own short read transaction, so a slow consumer never pins the writer's pages.
        Raises CorruptEntryError(index) at the first damaged entry, after the entries
        before it; an entry missing while entries after it are committed is damaged too
        (wherever a read batch starts), and so is the entry right after a missing one, if
        the read starts there (its chain seed is gone: the error names the missing one).
        The iterator ends early, without error, only where the log itself ends before
        `stop`: a writer truncated it meanwhile. A missing last entry is such an end
        (last_index is the last entry stored; nothing else records it).
        """
        self._check_open()
        return self._reader.entries(start, stop)

    def entry_batches(self, start: int | None = None, stop: int | None = None, *, size: int = 64
                      ) -> Iterator[list[record.Entry]]:
        """`entries(start, stop)` in lists of at most `size` (>= 1), for consumers that work
        a batch at a time (replay): the same entries, checks and errors (raised after the
        list of the entries before the damaged one), one generator step per list."""
        self._check_open()
        return self._reader.entry_batches(start, stop, size)

    def headers(self, start: int | None = None, stop: int | None = None, *, verify: bool = True
                ) -> Iterator[record.EntryHeader]:
        """Like `entries` but yields EntryHeader without decoding payloads (fast audit scans).

        verify=False skips the checksum and copies only each entry's header and op out of
        the map (framing is still checked), so it costs the same for any payload size.
        """
        self._check_open()
        return self._reader.headers(start, stop, verify)

    def term_at(self, index: int) -> int:
        """Term of entry `index`, valid for first_index - 1 .. last_index.

        index == first_index - 1 answers from the compaction boundary (0 for index 0).
        CompactedError below that; IndexError above last_index.
        """
        self._check_open()
        return self._reader.term_at(index)

    def checksum_at(self, index: int) -> int:
        """Chained checksum of entry `index`, valid for first_index - 1 .. last_index.

        index == first_index - 1 answers from the compaction boundary (0 for index 0, the
        seed of the first entry ever written). CompactedError below that; IndexError
        above last_index; CorruptEntryError(index) if the entry's bytes or its link to
        the entry before it are damaged (the checksum is verified, as `headers` does).
        """
        self._check_open()
        return self._reader.checksum_at(index)

    def sealed_range(self, first: int, last: int) -> bytes:
        """The bytes of one sealed segment (FORMAT.md) holding entries first..last, as stored.

        Edge cases first: TypeError for non-int bounds; ValueError if first > last;
        IndexError if first < 1, or last > durable_index (an entry that could still be
        lost is never shipped; on a readonly log durable_index is last_index);
        CompactedError if first < first_index; ValueError if the body would exceed what
        one segment may hold (`segment.raw_limit`: 64 MiB for several entries, one
        maximal entry alone): split with `segment_ranges` first. CorruptEntryError
        (DamagedSegmentError for the archive) if a stored entry is damaged or does not
        chain. Entries are read from the archive and LMDB alike and copied byte for byte,
        so checksums and the chain are unchanged; the header's prev_term/prev_checksum
        are those of entry first - 1 (the compaction boundary when first == first_index).
        Works on readonly and writer logs. Entries must not be truncated meanwhile.
        """
        self._check_open()
        return transfer.sealed_range(self._reader, self._view, first, last)

    def sealed_segment(self, first: int, last: int) -> tuple[bytes, CheckedSegment]:
        """`sealed_range(first, last)` (the same bytes, the same errors) and a CheckedSegment
        (first, last, prev_term, prev_checksum, last_term, last_checksum) as sealing them
        verified every entry: what `check_segment` of the bytes would say, without a second
        decompression (a shipper uploads them at once)."""
        self._check_open()
        return transfer.seal_range(self._reader, self._view, first, last)

    def segment_ranges(self, first: int, last: int, target: int | None = None) -> list[tuple[int, int]]:
        """Consecutive (first, last) ranges covering first..last for `sealed_range`, each body at
        most `target` bytes (default ``eventlog.SEGMENT_TARGET_BYTES``, 16 MiB, what
        compaction seals; capped at the 64 MiB limit) unless it is one larger entry alone.

        [] if first > last; range errors as `headers`; reads headers only.
        """
        self._check_open()
        return transfer.segment_ranges(self._reader, first, last, target)

    def segments(self) -> list[SegmentInfo]:
        """The archive's sealed segments holding entries first_index..live_first_index - 1, in
        index order: (path, first, last, size on disk). [] without an archive. For reports
        (sizes, counts); reads never need it. Segments are listed, not verified (`verify` does).
        """
        self._check_open()
        return segment_infos(self._path / ARCHIVE_DIR, self.first_index, self.live_first_index)

    def verify(self) -> VerifyReport:
        """Check every entry's framing and checksum, the chain, contiguity and terms.

        Never raises on damage: every problem is a `Damage(index, reason)` in the report
        (see `verification.verify`, which works beside a live writer). A writer's
        uncommitted entries are flushed first (a writer's view).
        """
        self._check_open()
        if self._writer is not None and not self._writer.failed:
            self.flush()
        return verification.verify(self._storage)
