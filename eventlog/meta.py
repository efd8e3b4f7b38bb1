"""The log's meta records (database ``meta``; their table is in FORMAT.md).

``format`` (u32) says which format version wrote the log; ``term`` (u64) is the current
term; ``first_index``, ``boundary_term`` and ``boundary_checksum`` (u64 each) describe
the compaction boundary, the entry just before the oldest retained one: its term still
answers ``term_at(first_index - 1)`` and its checksum seeds the chain at first_index.
Every function here works inside a transaction its caller holds.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

from . import record
from .errors import DamagedLogError, FormatError

FORMAT_VERSION = 1

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
FORMAT, TERM = b"format", b"term"
FIRST, BOUNDARY_TERM, BOUNDARY_CHECKSUM = b"first_index", b"boundary_term", b"boundary_checksum"


class Bounds(NamedTuple):
    """The committed extent of a log, read in one transaction."""

    first_index: int
    last_index: int  # first_index - 1 when the log holds no entries
    boundary_term: int
    boundary_checksum: int


def initialise(txn, meta_db, entries_db, path: Path) -> None:
    """Write the records of a new, empty log unless `txn` already holds a format record.

    FormatError if the entries database holds entries but there is no format record.
    """
    if txn.get(FORMAT, db=meta_db) is not None:
        return
    if txn.stat(entries_db)["entries"]:
        raise FormatError(f"{path} has entries but no format record; not an event log")
    txn.put(FORMAT, _U32.pack(FORMAT_VERSION), db=meta_db)
    for name in (TERM, BOUNDARY_TERM, BOUNDARY_CHECKSUM):
        txn.put(name, _U64.pack(0), db=meta_db)
    txn.put(FIRST, _U64.pack(1), db=meta_db)


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


def write_term(txn, meta_db, term: int) -> None:
    txn.put(TERM, _U64.pack(term), db=meta_db)


def write_boundary(txn, meta_db, first_index: int, term: int, checksum: int) -> None:
    """Record a compaction: entries before `first_index` are gone; (term, checksum) are the last one's."""
    txn.put(FIRST, _U64.pack(first_index), db=meta_db)
    txn.put(BOUNDARY_TERM, _U64.pack(term), db=meta_db)
    txn.put(BOUNDARY_CHECKSUM, _U64.pack(checksum), db=meta_db)


def read_bounds(txn, meta_db, entries_db, path: Path) -> Bounds:
    """The committed bounds: meta records for the boundary, the last key for last_index."""
    first = read_u64(txn, meta_db, FIRST, path)
    bterm = read_u64(txn, meta_db, BOUNDARY_TERM, path)
    bsum = read_u64(txn, meta_db, BOUNDARY_CHECKSUM, path)
    cursor = txn.cursor(db=entries_db)
    last = record.index_of(cursor.key()) if cursor.last() else first - 1
    return Bounds(first, last, bterm, bsum)
