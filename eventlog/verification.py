"""Offline verification: every entry's framing and checksum, the chain, contiguity and
terms, checked over the archive's sealed segments and committed storage, as one log, by
a function that needs no writer, and the report it returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from . import record
from .archive import ArchiveDir, list_segments
from .errors import CorruptEntryError, DamagedLogError, DamagedSegmentError
from .lmdbfile import check_data_file
from .storage import Storage

VERIFY_ATTEMPTS = 3  # walks; the last holds one read transaction (see verify)
READ_BATCH = 1024  # entries per read transaction: a walk never pins the writer's pages for long


@dataclass(frozen=True)
class Damage:
    """One problem at one index (or index 0 for log-wide problems such as bad metadata).

    A damaged archive segment is one Damage at its first index whose reason names the
    file and its index range.
    """

    index: int
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Every checksum, the chain, index contiguity and the term sequence, checked once.

    `ok` is True only when `damage` is empty. `terms` lists (term, first index written
    in that term) in log order, archived entries included: each restart of a writer
    shows as a new term. `first_index` is the first readable entry and `boundary_term`
    the term of the entry before it; `live_first_index` the first entry still in LMDB;
    `segments` how many archive segments were read.
    """

    path: str
    first_index: int
    last_index: int
    current_term: int
    boundary_term: int
    checked: int = 0
    payload_bytes: int = 0
    damage: tuple[Damage, ...] = ()
    terms: tuple[tuple[int, int], ...] = ()
    live_first_index: int = 0
    segments: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage

    def __str__(self) -> str:
        head = (f"log {self.path}: entries {self.first_index}..{self.last_index} ({self.checked} checked), "
                f"current term {self.current_term}: ")
        if self.ok:
            return head + "sound"
        first, more = self.damage[0], len(self.damage) - 1
        return head + f"damaged at {first.index}: {first.reason}" + (f" (and {more} more problem(s))" if more else "")


def verify(storage: Storage) -> VerifyReport:
    """Verify the committed log in `storage`. Never raises on damage: every problem is a
    `Damage(index, reason)` in the report (index 0 for damage to the file as a whole,
    such as a cut data.mdb or a damaged page structure).

    Beside a live writer (another process, or this process's writer threads) it reports
    only real damage: the entries first_index..last_index as of the call are read in
    short batches (a whole segment for archived ones), and each batch re-reads the
    bounds. Entries compacted into the archive between two batches are read from their
    segments; entries deleted between two batches (archive=None, retention) are
    skipped (the walk continues from the new boundary, whose checksum seeds the chain);
    entries truncated away shorten the walk. If the entry before a batch is
    no longer the one the walk checked (truncated and re-appended), the walk starts
    again, and on the last of `VERIFY_ATTEMPTS` tries holds one read transaction
    throughout, which sees one consistent log.
    """
    path = str(storage.path)
    for attempt in range(VERIFY_ATTEMPTS):
        try:
            check_data_file(storage.path)  # cut short since it was opened: touching the map would be a SIGBUS
            with storage.read_txn() as txn:
                bounds = storage.bounds(txn)
                current = storage.current_term(txn)
        except DamagedLogError as exc:
            return VerifyReport(path, 0, 0, 0, 0, damage=(Damage(0, str(exc)),))
        walk = _Walk(storage, bounds.archive_first, bounds.last_index, current, ArchiveDir(storage.path))
        try:
            walk.run(one_txn=attempt == VERIFY_ATTEMPTS - 1)
        except _Rewritten:
            continue
        except DamagedLogError as exc:
            walk.damage.append(Damage(0, str(exc)))
        return VerifyReport(path, walk.first_index, walk.last_index, current, walk.boundary_term, walk.checked,
                            walk.payload_bytes, tuple(walk.damage), tuple(walk.terms), walk.live_first_index,
                            walk.segments)
    raise AssertionError("unreachable: the last attempt holds one transaction")  # pragma: no cover


class _Rewritten(Exception):
    """The log was truncated and re-appended under the walk; it starts again."""


@dataclass
class _Walk:
    """One pass over the entries, batch by batch, collecting what the report will say."""

    storage: Storage
    first_index: int
    last_index: int  # where the walk stops: the last index as of the call, lowered by truncations
    current_term: int
    archive: ArchiveDir
    boundary_term: int = 0
    live_first_index: int = 0
    checked: int = 0
    payload_bytes: int = 0
    segments: int = 0
    damage: list[Damage] = field(default_factory=list)
    terms: list[tuple[int, int]] = field(default_factory=list)

    def run(self, one_txn: bool) -> None:
        storage, stop_at = self.storage, self.last_index
        expected = seed = prev_term = None
        with (storage.read_txn() if one_txn else contextlib.nullcontext()) as held:
            while True:
                with (contextlib.nullcontext(held) if one_txn else storage.read_txn()) as txn:
                    bounds = storage.bounds(txn)
                    first, last = bounds.first_index, bounds.last_index
                    self.live_first_index = first
                    if expected is None or expected < bounds.archive_first:
                        # The start, or history deleted since the last batch (archive=None,
                        # retention): what went cannot be damage; its boundary seeds the chain.
                        if expected is None:
                            self.boundary_term = bounds.archive_boundary_term
                        self.first_index = max(self.first_index, bounds.archive_first)
                        expected, seed = bounds.archive_first, bounds.archive_boundary_checksum
                        prev_term = max(bounds.archive_boundary_term, prev_term or 0)
                    elif seed is not None and expected > first and not _still_checked(storage, txn, expected - 1, seed):
                        raise _Rewritten()
                    stop = min(stop_at, last)  # a truncation since the last batch shortens the walk
                    self.last_index = min(self.last_index, max(stop, first - 1))
                    rows = []
                    if expected < first:
                        archived_to = min(first - 1, stop)
                        if archived_to < expected:
                            return
                    else:
                        archived_to = None
                        if expected > stop:
                            return
                        for index, value in storage.values_from(txn, expected):
                            if index > stop:
                                break
                            rows.append((index, record.copy_framed(index, value)))
                            if len(rows) >= READ_BATCH:
                                break
                if archived_to is not None:
                    expected, seed, prev_term = self._archived(expected, archived_to, seed, prev_term)
                    continue
                if not rows:
                    self.damage.append(Damage(expected, f"entries {expected}..{stop} are missing"))
                    return
                for index, value in rows:
                    if index != expected:
                        self.damage.append(Damage(expected, f"entries {expected}..{index - 1} are missing"))
                        seed = None
                    seed, prev_term = self._check_one(index, value, seed, prev_term)
                    expected = index + 1

    def _archived(self, expected: int, upto: int, seed, prev_term):
        """Check the archived entries from `expected` through the segment holding it (at most
        `upto`); return (next expected index, seed, previous term)."""
        try:
            loaded = self.archive.load(expected, self.first_index, upto + 1)
        except DamagedSegmentError as exc:
            with self.storage.read_txn() as txn:
                archive_first = self.storage.bounds(txn).archive_first
            if expected < archive_first:
                return expected, seed, prev_term  # deleted by retention meanwhile: the walk jumps
            if exc.path == str(self.archive.directory):
                # No segment holds `expected`: the gap runs to the next segment that exists.
                following = [n.first for n in list_segments(self.archive.directory) if expected < n.first <= upto]
                gap_end = min(following, default=upto + 1) - 1
                self.damage.append(Damage(expected, f"entries {expected}..{gap_end} are missing from the archive "
                                                    f"{exc.path} (a segment file is missing)"))
                return gap_end + 1, None, prev_term
            self.damage.append(Damage(expected, exc.reason))
            return exc.last + 1, None, prev_term
        self.segments += 1
        stop = min(loaded.last, upto)
        if seed is None:
            try:  # after damage: the segment's own seed still checks the rest of it
                seed = loaded.seed(expected)
            except CorruptEntryError:
                seed = None
        for index in range(expected, stop + 1):
            seed, prev_term = self._check_one(index, loaded.values[index - loaded.first], seed, prev_term)
        return stop + 1, seed, prev_term

    def _check_one(self, index, value, seed, prev_term):
        """Check one entry; return the checksum and term the next entry is checked against."""
        self.checked += 1
        try:
            if isinstance(value, CorruptEntryError):
                raise value
            op_len, payload_len, term, _, checksum, _ = record.parse_header(index, value)
        except CorruptEntryError as exc:
            self.damage.append(Damage(index, exc.reason))
            return None, prev_term  # the next entry's link cannot be checked
        self.payload_bytes += payload_len
        if seed is not None:
            try:
                record.verify_value(index, value, seed)
            except CorruptEntryError as exc:
                self.damage.append(Damage(index, exc.reason))
        if term < prev_term:
            self.damage.append(Damage(index, f"term {term} is lower than the previous entry's term {prev_term}"))
        elif term > self.current_term:
            self.damage.append(Damage(index, f"term {term} is above the log's current term {self.current_term}"))
        if not self.terms or self.terms[-1][0] != term:
            self.terms.append((term, index))
        return checksum, max(term, prev_term)


def _still_checked(storage: Storage, txn, index: int, checksum: int) -> bool:
    """Whether entry `index` in `txn` is still the entry whose stored checksum the walk saw."""
    value = storage.value(txn, index)
    try:
        return value is not None and record.stored_checksum(index, value) == checksum
    except CorruptEntryError:
        return False
