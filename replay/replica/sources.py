"""Where each segment object of a shipping round comes from (FORMAT.md beside this file, "Objects").

A replica's segment object and a local archive segment are the same format (eventlog's
FORMAT.md, "The archive"), so a range the local archive already holds as one sealed file
is shipped as that file's bytes, unchanged: nothing is decompressed to read it and nothing
re-encoded to send it. Only entries no archive file covers whole (the live log in LMDB, or
the part of a file before the chain's start) are sealed, by `log.sealed_segment`, which
verifies every entry against the chain as it copies it and says where the bytes end: those
bytes are not decompressed again. An archive file is verified once (`eventlog.segment_bounds`)
before it counts, and `Verified` remembers the outcome, so a file met again (read for one
round and shipped in the next) is decompressed once per shipper.

Why an archive file whose file checksum verifies is still decompressed once: the checksum
(header and every compressed byte) proves the bytes are what a sealer wrote, and its header
gives the seed it chains from, but not the checksum of its last entry, which is what the
next segment must chain from. Only the body says that. Taking it from the next file's seed
instead would count an archive file of another history that starts at the same entry
(tests/replica/test_pipelined_uploads.py); and an entry damaged in LMDB before it was
sealed sits under a valid file checksum. Both are caught here, by the entry chain, and
never counted (replica FORMAT.md, "Order of uploads", has the table of what is caught
where). A sealer-written record of each file's end would remove this decompression; it
would be an addition to eventlog's on-disk format, not made here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple

from eventlog import SegmentDamage, read_segment_seed, segment_bounds, segment_identity

REMEMBERED = 4096  # segments whose full check a shipper remembers (a few dozen bytes each)


class Piece(NamedTuple):
    """Entries first..last of one segment object to ship: `path` is the local archive file
    holding exactly them, or None when `log.sealed_range` seals them. An archive file that
    vanished once listed (a local merge replaced it, eventlog's FORMAT.md) is sealed from
    the log instead: the same entries (prepared.Prepared reads pieces)."""

    first: int
    last: int
    path: Path | None


def plan(log, start: int, settled: int, most: int) -> list[Piece]:
    """At most `most` pieces covering start.. (consecutive, in order, through `settled` at most).

    Edge cases first: [] when start > settled. Whole archive files starting at the next
    index and ending by `settled` are taken as they are; an archive file the range starts
    inside is sealed from `start` to its end; the rest (the live log, or an archive the
    listing does not cover) is cut by `log.segment_ranges`. Reads only the archive's
    listing and, for the sealed part, entry headers.
    """
    if start > settled:
        return []
    whole: dict[int, object] = {}
    inside = None
    for info in log.segments():
        if info.last > settled:
            continue
        if info.first >= start and (info.first not in whole or info.last > whole[info.first].last):
            whole[info.first] = info  # after a crash mid-merge both copies are listed: take the larger
        elif info.first < start <= info.last:
            inside = info
    pieces: list[Piece] = []
    at = start
    if inside is not None and start not in whole:
        pieces += [Piece(f, l, None) for f, l in log.segment_ranges(start, inside.last)]
        at = inside.last + 1
    while at in whole and len(pieces) < most:
        info = whole[at]
        pieces.append(Piece(info.first, info.last, Path(info.path)))
        at = info.last + 1
    if at <= settled and len(pieces) < most:
        pieces += [Piece(f, l, None) for f, l in log.segment_ranges(at, settled)]
    return pieces[:most]


class Verified:
    """Segments a shipper checked in full, remembered by identity (range, chain seed and file
    checksum: `eventlog.segment_identity`, which reads no entry), so that bytes met again
    are checked by their file checksum alone instead of being decompressed again.

    Sound because a segment's file checksum covers its header and every compressed byte:
    bytes with the identity of a segment that passed `segment_bounds` are that segment."""

    def __init__(self):
        self._checked: dict[tuple[int, int, int, int], tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()  # bounds runs on several threads at once (prepared.py)

    def bounds(self, data) -> tuple[int, int, int, int]:
        """`eventlog.segment_bounds(data)` (SegmentDamage likewise), decompressing only bytes not
        checked before. Safe to call from several threads at once (the check runs unlocked)."""
        identity = segment_identity(data)
        with self._lock:
            got = self._checked.get(identity)
        if got is None:
            got = segment_bounds(data)
            with self._lock:
                if len(self._checked) >= REMEMBERED:
                    self._checked.pop(next(iter(self._checked)))  # the oldest: catch-ups move forward
                self._checked[identity] = got
        return got

    def archive_checksum(self, log, index: int) -> int | None:
        """The checksum of entry `index` when a local archive file starts right after it: that
        file's chain seed, from its 80-byte header (`eventlog.read_segment_seed`); None when no
        archive file starts at index + 1 (or it vanished, or its header is damaged).

        Cheaper than `log.checksum_at` on an archived index, which decompresses that segment
        and the body of every archive file after it. A planning answer (which manifests to
        ship, where a chain starts): nothing counts on the replica before the file is
        checked in full and against its neighbours (Shipping.ship_segments), and a restore
        checks every manifest against the log its segments build."""
        for info in log.segments():
            if info.first - 1 != index:
                continue
            try:
                return read_segment_seed(info.path, info.first, info.last)[1]
            except (FileNotFoundError, SegmentDamage):
                return None
        return None
