"""The archive tier: the retention policy users pass, and reading sealed segments.

`Archive` is the policy (`EventLog.open(..., archive=Archive(...))`); `ArchiveDir` is one
handle's view of ``<log>/archive/``: the listing of segment names (listed again whenever
an index is not found, since a compaction may have sealed it since) and the most
recently read segment. Writing is in sealing.py. The rules are in FORMAT.md, "The archive".
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from . import record, segment
from .errors import DamagedSegmentError, LogError
from .segment import Segment, SegmentDamage, SegmentName

ARCHIVE_DIR = "archive"
RELISTS = 4  # listings of the directory before an index in the archive's range counts as missing


@dataclass(frozen=True)
class Archive:
    """How long sealed history is kept. ``Archive()`` keeps everything (the default).

    - keep_bytes: after a compaction, the oldest whole segments are deleted while the
      archive's files total more than this many bytes (None: no limit).
    - keep_seconds: ... while the oldest segment's newest entry is older than this
      (None: no limit).
    Only whole segments wholly below the compaction point are deleted, oldest first;
    `first_index` moves to the first entry kept. ``archive=None`` keeps nothing.
    """

    keep_bytes: int | None = None
    keep_seconds: float | None = None

    def __post_init__(self):
        kb = self.keep_bytes
        if kb is not None and (isinstance(kb, bool) or not isinstance(kb, int) or kb < 0):
            raise ValueError(f"Archive.keep_bytes must be None or an integer >= 0, got {kb!r}")
        ks = self.keep_seconds
        if ks is not None and (isinstance(ks, bool) or not isinstance(ks, (int, float))
                               or not math.isfinite(ks) or ks < 0):
            raise ValueError(f"Archive.keep_seconds must be None or a finite number >= 0, got {ks!r}")

    @property
    def keeps_everything(self) -> bool:
        return self.keep_bytes is None and self.keep_seconds is None


def check_policy(archive) -> Archive | None:
    """`EventLog.open`'s archive= argument, checked: an Archive or None."""
    if archive is not None and not isinstance(archive, Archive):
        raise TypeError(f"archive must be an eventlog.Archive or None, got {type(archive).__name__}")
    return archive


class SegmentInfo(NamedTuple):
    """One sealed segment file as listed: its path, its entries first..last and its size on disk."""

    path: Path
    first: int
    last: int
    size: int


def segment_infos(directory: Path, first: int, live_first: int) -> list[SegmentInfo]:
    """The segments holding entries first..live_first - 1, in index order (leftovers of a
    crash, outside that range, are not listed); a file that vanished meanwhile is skipped."""
    out = []
    for name in list_segments(directory):
        if name.last < first or name.first >= live_first:
            continue
        try:
            size = os.lstat(directory / name.name).st_size
        except FileNotFoundError:
            continue
        out.append(SegmentInfo(directory / name.name, name.first, name.last, size))
    return out


def list_segments(directory: Path) -> list[SegmentName]:
    """Every segment name in `directory`, in index order ([] when it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in map(segment.parse_name, names) if n is not None)


class ArchiveDir:
    """One handle's reads of a log's archive: the listing and the last segment read.

    Used from any thread of its handle; the listing and the cached segment are replaced
    whole (one assignment each), never mutated.
    """

    def __init__(self, log_path: Path):
        self.directory = Path(log_path) / ARCHIVE_DIR
        self._listing: list[SegmentName] = []
        self._cached: Segment | None = None
        self._before: tuple[int, int] | None = None  # (last index, its checksum) of the segment read before
        self._chained: Segment | None = None  # the segment check_chain passed last (checked once per load)
        # Segments whose chain was followed to the live log's boundary (or as far as it can
        # be, up to a damaged or missing segment): name -> the prev_checksum it was checked with.
        self._anchored: dict[SegmentName, int] = {}

    def checksum_before(self, first: int) -> int | None:
        """The checksum of entry first - 1 if the segment read before the current one ended
        there (a sequential scan), else None. Sealed entries never change, so it is still
        the checksum the segment starting at `first` must chain from."""
        before = self._before
        return before[1] if before is not None and before[0] == first - 1 else None

    def find(self, index: int, relist: bool) -> SegmentName | None:
        """The segment whose range holds `index` (the newest-starting one if several do), or None."""
        if relist:
            self._listing = list_segments(self.directory)
        listing = self._listing
        at = bisect.bisect_right(listing, SegmentName(index, 2**64)) - 1
        # Segments do not overlap except after a crash (FORMAT.md): a few steps back suffice.
        for name in reversed(listing[max(0, at - 3):at + 1]):
            if name.first <= index <= name.last:
                return name
        return None

    def load(self, index: int, archive_first: int, live_first: int) -> Segment:
        """The checked segment holding entry `index` (archive_first <= index < live_first).

        DamagedSegmentError naming the file and range if it fails a check, or naming the
        archive directory if no segment holds `index` even after listing again.
        """
        cached = self._cached
        if cached is not None and cached.first <= index <= cached.last:
            return cached
        # A merge (sealing.py) renames the merged segment in and then unlinks the ones it
        # replaces; a directory listing that runs across both may see neither (readdir
        # beside renames and unlinks is unspecified). A listing started after the unlink
        # sees the merged file, so a file that vanished is listed again a few times before
        # the index counts as missing.
        for relist in (False,) + (True,) * RELISTS:
            name = self.find(index, relist)
            if name is None:
                continue
            path = self.directory / name.name
            try:
                loaded = segment.read_segment(path, name)
            except FileNotFoundError:
                continue  # removed since the listing: list again
            except SegmentDamage as exc:
                raise DamagedSegmentError(index, str(path), name.first, name.last, str(exc)) from None
            except OSError as exc:
                raise DamagedSegmentError(index, str(path), name.first, name.last,
                                          f"cannot be read ({exc.strerror or exc})") from None
            if cached is not None:
                try:
                    self._before = (cached.last, record.stored_checksum(cached.last, cached.values[-1]))
                except LogError:
                    self._before = None
            self._cached = loaded
            return loaded
        raise DamagedSegmentError(index, str(self.directory), archive_first, live_first - 1,
                                  f"no segment holds entry {index}: a segment file is missing")

    def check_chain(self, loaded: Segment, bounds) -> None:
        """DamagedSegmentError unless segment `loaded` continues this log's history (FORMAT.md,
        "The archive", the chain across segments); `bounds` are the committed meta.Bounds.

        A segment copied from another log (a fork sharing the history before it) is
        self-consistent: its checksum and its inner chain are fine, and its first entry may
        even chain from ours. What gives it away is where it ends. So: a segment starting at
        `archive_first` must chain from the archive boundary, and the chain is followed
        forward from `loaded`'s last entry, segment by segment, to the live log's boundary
        checksum (the seed of `live_first_index`), comparing each segment's last checksum
        with the next one's header seed. Segments followed once are remembered, so a scan
        reads each segment's body once more at most and otherwise only the next segment's
        80-byte header. A damaged or missing segment met on the way ends the check there
        (it is reported when it is read).

        Where a link breaks, the error names the side that does not fit: the segment after
        the break if its own next link breaks too (one segment swapped), else the one
        before it (a segment across the fork point) -- its file and the index where its
        part of the chain stops.
        """
        if loaded is self._chained:
            return
        name = SegmentName(loaded.first, loaded.last)
        if loaded.first == bounds.archive_first and loaded.prev_checksum != bounds.archive_boundary_checksum:
            raise self._foreign(name, loaded.first, (
                f"its first entry chains from checksum {loaded.prev_checksum:#018x}, but the log's archive "
                f"boundary (entry {loaded.first - 1}) has checksum {bounds.archive_boundary_checksum:#018x}"))
        try:
            end = loaded.last_checksum()
        except LogError:
            return  # its last entry's framing is damaged: CorruptEntryError when it is read
        walked = [(name, loaded.prev_checksum)]
        current = name
        while True:
            link = self._link_after(current, bounds)
            if link is None:
                break  # a damaged or missing segment: reported when its entries are read
            following, seed, anchored = link
            if seed != end:
                raise self._break(current, end, following, seed, bounds)
            if following is None or anchored:
                break
            body = self._body(following)
            if body is None:
                break
            current, end = following, body
            walked.append((current, seed))
        self._anchored = {**self._anchored, **dict(walked)}
        self._chained = loaded

    def _link_after(self, name: SegmentName, bounds) -> tuple[SegmentName | None, int, bool] | None:
        """What the entry after segment `name` chains from: (the next segment, its header seed,
        whether it was followed before) or (None, the live boundary checksum, True) for the
        last sealed segment; None if the next segment is missing or its header unreadable."""
        if name.last >= bounds.first_index - 1:
            if name.last != bounds.first_index - 1:
                return None
            return None, bounds.boundary_checksum, True
        following = self._starting_at(name.last + 1)
        if following is None:
            return None
        try:
            seed = segment.read_prev_checksum(self.directory / following.name, following)
        except (SegmentDamage, OSError):
            return None
        return following, seed, self._anchored.get(following) == seed

    def _body(self, name: SegmentName) -> int | None:
        """The last checksum of segment `name`, read whole and checked; None if it cannot be read."""
        try:
            return record.stored_checksum(name.last, segment.read_last_value(self.directory / name.name, name))
        except (SegmentDamage, OSError, LogError):
            return None

    def _break(self, current: SegmentName, end: int, following: SegmentName | None, seed: int,
               bounds) -> DamagedSegmentError:
        """The error for a chain that breaks after segment `current` (last checksum `end`)."""
        if following is None:
            return self._foreign(current, current.last, (
                f"its last entry's checksum {end:#018x} is not {seed:#018x}, the checksum the live log "
                f"(from entry {bounds.first_index}) chains from"))
        after = self._body(following)
        link = self._link_after(following, bounds) if after is not None else None
        if link is not None and link[1] != after:
            # The next segment fits on neither side: it is the stranger.
            return self._foreign(following, following.first, (
                f"its first entry chains from checksum {seed:#018x}, but entry {following.first - 1} (in "
                f"{current.name}) has checksum {end:#018x}, and its last entry does not chain into what follows"))
        return self._foreign(current, current.last, (
            f"its last entry's checksum {end:#018x} is not {seed:#018x}, the checksum the next segment "
            f"{following.name} chains from"))

    def _starting_at(self, index: int) -> SegmentName | None:
        for relist in (False,) + (True,) * RELISTS:
            found = self.find(index, relist)
            if found is not None and found.first == index:
                return found
        return None

    def _foreign(self, name: SegmentName, index: int, reason: str) -> DamagedSegmentError:
        return DamagedSegmentError(index, str(self.directory / name.name), name.first, name.last,
                                   f"{reason}: the chain breaks there, so this segment is not this log's "
                                   "history (a copy from another log sharing its start?)")
