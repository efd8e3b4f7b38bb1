"""The log's meta records (database ``meta``; their table is in FORMAT.md).

``format`` (u32) says which format version wrote the log; ``term`` (u64) is the current
term; ``first_index``, ``boundary_term`` and ``boundary_checksum`` (u64 each) describe
the live boundary, the entry just before the oldest entry still in LMDB: its term still
answers ``term_at(first_index - 1)`` and its checksum seeds the chain at first_index.
Version 2 adds ``archive_first``, ``archive_boundary_term`` and
``archive_boundary_checksum``: the oldest readable entry (sealed in the archive) and the
entry before it. A version-1 log has none: its readable log is its live log.
Every function here works inside a transaction its caller holds.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

from . import record
from .errors import DamagedLogError, FormatError

FORMAT_VERSION = 2

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
FORMAT, TERM = b"format", b"term"
FIRST, BOUNDARY_TERM, BOUNDARY_CHECKSUM = b"first_index", b"boundary_term", b"boundary_checksum"
ARCHIVE_FIRST, ARCHIVE_TERM, ARCHIVE_CHECKSUM = b"archive_first", b"archive_boundary_term", b"archive_boundary_checksum"


class Bounds(NamedTuple):
    """The committed extent of a log, read in one transaction.

    ``first_index`` is the first entry in LMDB (the API's ``live_first_index``);
    ``archive_first`` the first readable one (the API's ``first_index``), equal to it
    when the archive is empty.
    """

    first_index: int
    last_index: int  # first_index - 1 when LMDB holds no entries
    boundary_term: int
    boundary_checksum: int
    archive_first: int
    archive_boundary_term: int
    archive_boundary_checksum: int


def initialise(txn, meta_db, entries_db, path: Path) -> None:
    """Write the records of a new, empty log unless `txn` already holds a format record.

    FormatError if the entries database holds entries but there is no format record.
    """
    if txn.get(FORMAT, db=meta_db) is not None:
        return
    if txn.stat(entries_db)["entries"]:
        raise FormatError(f"{path} has entries but no format record; not an event log")
    txn.put(FORMAT, _U32.pack(FORMAT_VERSION), db=meta_db)
    for name in (TERM, BOUNDARY_TERM, BOUNDARY_CHECKSUM, ARCHIVE_TERM, ARCHIVE_CHECKSUM):
        txn.put(name, _U64.pack(0), db=meta_db)
    txn.put(FIRST, _U64.pack(1), db=meta_db)
    txn.put(ARCHIVE_FIRST, _U64.pack(1), db=meta_db)


def format_version(txn, meta_db) -> int:
    """The log's format version; 0 if the record is missing or damaged (callers then read strictly)."""
    raw = txn.get(FORMAT, db=meta_db)
    return _U32.unpack(raw)[0] if raw is not None and len(raw) == 4 else 0


def upgrade(txn, meta_db, path: Path) -> None:
    """Make a version-1 log a version-2 log with an empty archive (a no-op on version 2).

    The archive records start equal to the live boundary: nothing is archived yet.
    """
    if format_version(txn, meta_db) >= 2:
        return
    first = read_u64(txn, meta_db, FIRST, path)
    term = read_u64(txn, meta_db, BOUNDARY_TERM, path)
    checksum = read_u64(txn, meta_db, BOUNDARY_CHECKSUM, path)
    write_archive_boundary(txn, meta_db, first, term, checksum)
    txn.put(FORMAT, _U32.pack(2), db=meta_db)


def check_format(txn, meta_db, path: Path) -> None:
    """FormatError unless the log's format record names a version this package reads."""
    raw = txn.get(FORMAT, db=meta_db)
    if raw is None or len(raw) != 4:
        raise FormatError(f"{path} is not an event log (no format record)")
    version = _U32.unpack(raw)[0]
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{path} has log format version {version}; this eventlog reads up to {FORMAT_VERSION}. Upgrade eventlog."
        )


def read_u64(txn, meta_db, name: bytes, path: Path) -> int:
    """A u64 record; DamagedLogError naming it if it is missing or the wrong size."""
    raw = txn.get(name, db=meta_db)
    if raw is None or len(raw) != 8:
        raise DamagedLogError(f"{path}: the log's metadata record {name.decode()!r} is missing or damaged")
    return _U64.unpack(raw)[0]


def pack_u64(value: int) -> bytes:
    """A u64 record's stored bytes (for a caller that compares a record without decoding it)."""
    return _U64.pack(value)


def write_term(txn, meta_db, term: int) -> None:
    txn.put(TERM, _U64.pack(term), db=meta_db)


def write_boundary(txn, meta_db, first_index: int, term: int, checksum: int) -> None:
    """Record a compaction: entries before `first_index` are gone; (term, checksum) are the last one's."""
    txn.put(FIRST, _U64.pack(first_index), db=meta_db)
    txn.put(BOUNDARY_TERM, _U64.pack(term), db=meta_db)
    txn.put(BOUNDARY_CHECKSUM, _U64.pack(checksum), db=meta_db)


def write_archive_boundary(txn, meta_db, archive_first: int, term: int, checksum: int) -> None:
    """Record the oldest readable entry: entries before `archive_first` are gone for good."""
    txn.put(ARCHIVE_FIRST, _U64.pack(archive_first), db=meta_db)
    txn.put(ARCHIVE_TERM, _U64.pack(term), db=meta_db)
    txn.put(ARCHIVE_CHECKSUM, _U64.pack(checksum), db=meta_db)


def read_bounds(txn, meta_db, entries_db, path: Path) -> Bounds:
    """The committed bounds: meta records for the boundaries, the last key for last_index."""
    first = read_u64(txn, meta_db, FIRST, path)
    bterm = read_u64(txn, meta_db, BOUNDARY_TERM, path)
    bsum = read_u64(txn, meta_db, BOUNDARY_CHECKSUM, path)
    if txn.get(ARCHIVE_FIRST, db=meta_db) is None and format_version(txn, meta_db) == 1:
        afirst, aterm, asum = first, bterm, bsum  # version 1: no archive
    else:
        afirst = read_u64(txn, meta_db, ARCHIVE_FIRST, path)
        aterm = read_u64(txn, meta_db, ARCHIVE_TERM, path)
        asum = read_u64(txn, meta_db, ARCHIVE_CHECKSUM, path)
        if afirst > first:
            raise DamagedLogError(f"{path}: the log's metadata says its archive starts at {afirst}, after its "
                                  f"live entries (first_index {first}); a metadata record is damaged")
    cursor = txn.cursor(db=entries_db)
    last = record.index_of(cursor.key()) if cursor.last() else first - 1
    return Bounds(first, last, bterm, bsum, afirst, aterm, asum)
