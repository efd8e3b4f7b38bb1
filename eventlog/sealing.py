"""The writer's side of the archive: sealing compacted entries, retention, and cleaning up.

Used only by the writer, under its compaction lock (one compaction at a time), in the
order FORMAT.md ("The archive", Sealing) numbers: `clean`, `seal`, then the writer's
drop transaction carrying `retention`'s new archive boundary, then `remove`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

from . import record, segment
from . import merging
from .archive import ARCHIVE_DIR, Archive, list_segments
from .errors import CorruptEntryError
from .locking import fsync_directory
from .meta import Bounds
from .segment import SegmentDamage, SegmentName
from .storage import Storage

READ_BATCH = 1024  # entries per read transaction while sealing: the writer's pages are never pinned long
READ_BATCH_BYTES = 4 * 2**20


class ArchiveBoundary(NamedTuple):
    """What the drop transaction records as the oldest readable entry and the entry before it."""

    first: int
    term: int
    checksum: int


class Sealed(NamedTuple):
    """The segments one compaction wrote, and the stored checksum of the last entry they hold."""

    names: list[SegmentName]
    last_checksum: int


class Sealer:
    """Seals entries of one log into ``<log>/archive/`` and applies the retention policy."""

    def __init__(self, storage: Storage, policy: Archive | None):
        self._storage = storage
        self.policy = policy
        self.directory = storage.path / ARCHIVE_DIR
        self._headers: dict[SegmentName, tuple[int, int]] = {}  # name -> (last_time_ns, file size)

    def clean(self, bounds: Bounds) -> None:
        """Remove temp files, segments whose entries are all still live (a crash before the
        drop), segments wholly below archive_first (a crash before their unlink), and
        segments a merged segment holds (a crash between a merge's rename and its unlinks),
        once that merged segment reads back whole."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".") and name.endswith(segment.TEMP_SUFFIX):
                _unlink(self.directory / name)
        kept = []
        for name in list_segments(self.directory):
            if name.first >= bounds.first_index or name.last < bounds.archive_first:
                _unlink(self.directory / name.name)
                self._headers.pop(name, None)
            else:
                kept.append(name)
        for outer, inner in _contained(kept):
            try:
                segment.read_segment(self.directory / outer.name, outer)
            except (SegmentDamage, OSError):
                continue  # keep the smaller copies: verify reports the damaged merged file
            _unlink(self.directory / inner.name)
            self._headers.pop(inner, None)

    def merge(self, archive_first: int, live_first: int) -> list[SegmentName]:
        """Rewrite the newest MERGE_FANOUT (8) archived segments as one while `merging.newest_to_merge`
        says so of their file sizes and their bodies fit TARGET_RAW together; return the
        names written.

        Runs after a compaction's drop, under the compaction lock. Each merge writes the
        merged segment (temp, fsync, rename, directory fsync) before unlinking the ones it
        replaces, so every entry is in a durable file throughout; a crash in between leaves
        both, which read alike (same bytes, same chain) until `clean` removes the smaller.
        Segments that do not chain into each other are left for verify to report: a merge
        never rewrites damage into a file with a valid checksum. A no-op with archive=None.
        """
        written: list[SegmentName] = []
        if self.policy is None:
            return written
        while True:
            listing = [n for n in list_segments(self.directory) if archive_first <= n.first and n.last < live_first]
            inner = {name for _, name in _contained(listing)}
            run = [n for n in listing if n not in inner][-merging.MERGE_FANOUT:]
            if len(run) < merging.MERGE_FANOUT or any(b.first != a.last + 1 for a, b in zip(run, run[1:])):
                return written
            try:
                sizes = [segment.read_raw_size(self.directory / n.name, n) for n in run]
            except (SegmentDamage, OSError):
                return written
            if not merging.newest_to_merge([size for _, size in sizes]) or sum(raw for raw, _ in sizes) > segment.TARGET_RAW:
                return written
            try:
                loaded = [segment.read_segment(self.directory / n.name, n) for n in run]
            except (SegmentDamage, OSError):
                return written
            if not _chained(loaded):
                return written
            values = [value for seg in loaded for value in seg.values]
            name = segment.write_segment(self.directory, run[0].first, values, loaded[0].prev_term, loaded[0].prev_checksum)
            fsync_directory(self.directory)
            self.remove(run)
            written.append(name)

    def prepare(self, bounds: Bounds, through: int) -> Sealed | None:
        """Steps 1-2 of a compaction through `through`: clean up, then seal the live entries
        up to it (None with archive=None: nothing is sealed)."""
        if self.policy is None:
            return None
        self.clean(bounds)
        return self.seal(bounds.first_index, through, bounds.boundary_term, bounds.boundary_checksum)

    def decide(self, bounds: Bounds, through: int, sealed: Sealed | None, through_entry: tuple
               ) -> tuple[ArchiveBoundary | None, list[SegmentName]] | None:
        """Under the writer's commit lock, given (term, checksum) of entry `through` in LMDB now:
        None if it is not the entry sealed (a truncation rewrote it: the stale segments are
        removed, the caller seals again); else the archive boundary the drop records (None:
        unchanged) and the segments to remove once it is durable."""
        term, checksum = through_entry
        if sealed is not None and checksum != sealed.last_checksum:
            self.discard(sealed)
            return None
        boundary, doomed = self.retention(bounds, through, term, checksum)
        if boundary is None and sealed is not None and bounds.archive_first == bounds.first_index:
            # The archive was empty: it now starts with the first entry sealed.
            boundary = ArchiveBoundary(bounds.first_index, bounds.boundary_term, bounds.boundary_checksum)
        return boundary, doomed

    def discard(self, sealed: Sealed | None) -> None:
        """Remove the segments of a compaction that did not drop its entries."""
        if sealed is not None:
            self.remove(sealed.names)

    def seal(self, first: int, through: int, prev_term: int, prev_checksum: int) -> Sealed:
        """Write entries first..through (committed, in LMDB) as durable segments.

        Each segment is fsynced under a temp name and renamed; the directory is fsynced
        once at the end (and the log directory when the archive directory is new), so
        every name returned survives a power loss. CorruptEntryError if an entry's
        framing is damaged or one is missing: nothing damaged is sealed.
        """
        if not self.directory.is_dir():
            self.directory.mkdir(exist_ok=True)
            fsync_directory(self._storage.path)
        names: list[SegmentName] = []
        pending: list[bytes] = []
        pending_bytes = 0
        index = first
        while index <= through:
            for value in self._read(index, through):
                if pending and pending_bytes + len(value) + segment.LENGTH.size > segment.TARGET_RAW:
                    prev_term, prev_checksum = self._flush(names, index - len(pending), pending, prev_term, prev_checksum)
                    pending, pending_bytes = [], 0
                pending.append(value)
                pending_bytes += len(value) + segment.LENGTH.size
                index += 1
        if pending:
            prev_term, prev_checksum = self._flush(names, index - len(pending), pending, prev_term, prev_checksum)
        fsync_directory(self.directory)
        return Sealed(names, prev_checksum)

    def _flush(self, names: list, start: int, pending: list, prev_term: int, prev_checksum: int) -> tuple[int, int]:
        """Seal `pending` as entries start..; return (term, checksum) of its last entry, the next seed."""
        names.append(segment.write_segment(self.directory, start, pending, prev_term, prev_checksum))
        last = start + len(pending) - 1
        _, _, term, _, checksum, _ = record.parse_header(last, pending[-1])
        return term, checksum

    def _read(self, lo: int, through: int) -> list[bytes]:
        """Copies of the stored values lo.. (one short read transaction's worth), framing checked."""
        out, copied = [], 0
        storage = self._storage
        with storage.read_txn() as txn:
            for index, value in storage.values_from(txn, lo, exact=True):
                if index > through or len(out) >= READ_BATCH or copied >= READ_BATCH_BYTES:
                    break
                if index != lo + len(out):
                    break
                copy = record.copy_framed(index, value)
                if isinstance(copy, CorruptEntryError):
                    raise copy
                out.append(copy)
                copied += len(copy)
        if not out:
            raise CorruptEntryError(lo, "entry is missing from the log; it cannot be sealed")
        return out

    def retention(self, bounds: Bounds, through: int, through_term: int, through_checksum: int
                  ) -> tuple[ArchiveBoundary | None, list[SegmentName]]:
        """The archive boundary after compacting through `through` and the segments to remove after the drop.

        None as the boundary means "unchanged". archive=None removes every segment and
        the boundary becomes the new live boundary. A policy deletes oldest whole
        segments below through + 1 (FORMAT.md); if the first kept segment fails its
        checks, nothing is deleted (its header would give the new boundary).
        """
        listing = list_segments(self.directory)
        if self.policy is None:
            return ArchiveBoundary(through + 1, through_term, through_checksum), listing
        if self.policy.keeps_everything:
            return None, []
        segments = [n for n in listing if n.first >= bounds.archive_first and n.last <= through]
        info = []
        for name in segments:
            if name not in self._headers:
                try:
                    self._headers[name] = segment.read_header(self.directory / name.name, name)
                except (SegmentDamage, OSError):
                    return None, []  # decide nothing on a header that cannot be read
            info.append(self._headers[name])
        total = sum(size for _, size in info)
        cutoff = None
        if self.policy.keep_seconds is not None:
            cutoff = time.time_ns() - int(self.policy.keep_seconds * 1e9)
        doomed = 0
        while doomed < len(segments) and (
                (self.policy.keep_bytes is not None and total > self.policy.keep_bytes)
                or (cutoff is not None and info[doomed][0] < cutoff)):
            total -= info[doomed][1]
            doomed += 1
        if doomed == 0:
            return None, []
        if doomed == len(segments):
            return ArchiveBoundary(through + 1, through_term, through_checksum), segments
        kept = segments[doomed]
        try:
            first_kept = segment.read_segment(self.directory / kept.name, kept)
        except (SegmentDamage, OSError):
            return None, []
        return ArchiveBoundary(kept.first, first_kept.prev_term, first_kept.prev_checksum), segments[:doomed]

    def remove(self, names: list[SegmentName]) -> None:
        """Unlink segments the committed archive boundary no longer covers (or a failed compaction's)."""
        for name in names:
            _unlink(self.directory / name.name)
            self._headers.pop(name, None)


def _contained(names: list[SegmentName]) -> list[tuple[SegmentName, SegmentName]]:
    """(outer, inner) for every listed segment whose range lies within another's (a merge's leftovers)."""
    out = []
    for inner in names:
        for outer in names:
            if outer != inner and outer.first <= inner.first and inner.last <= outer.last:
                out.append((outer, inner))
                break
    return out


def _chained(loaded: list) -> bool:
    """Whether each segment starts from the last entry of the one before (term and checksum)."""
    for before, after in zip(loaded, loaded[1:]):
        try:
            _, _, term, _, checksum, _ = record.parse_header(before.last, before.values[-1])
        except CorruptEntryError:
            return False
        if (after.prev_term, after.prev_checksum) != (term, checksum):
            return False
    return True


def _unlink(path: Path) -> None:
    """Remove a segment or temp file; a directory in its place is left for verify to report."""
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
