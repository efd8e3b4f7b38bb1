"""Where each segment object of a shipping round comes from (FORMAT.md beside this file, "Objects").

A replica's segment object and a local archive segment are the same format (eventlog's
FORMAT.md, "The archive"), so a range the local archive already holds as one sealed file
is shipped as that file's bytes, unchanged: nothing is decompressed to read it and nothing
re-encoded to send it. Only entries no archive file covers whole (the live log in LMDB, or
the part of a file before the chain's start) are sealed by `log.sealed_range`. Either way
the round verifies the bytes once (`eventlog.segment_bounds`) before they count.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from eventlog import read_segment_file


class Piece(NamedTuple):
    """Entries first..last of one segment object to ship: `path` is the local archive file
    holding exactly them, or None when `log.sealed_range` seals them."""

    first: int
    last: int
    path: Path | None

    def read(self, log) -> bytes:
        """The segment's bytes (not yet verified). An archive file that vanished (a local merge
        replaced it, FORMAT.md of eventlog) is sealed from the log instead: same entries."""
        if self.path is not None:
            try:
                return read_segment_file(self.path, self.first, self.last)
            except FileNotFoundError:
                pass
        return log.sealed_range(self.first, self.last)


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
