"""Segment and manifest keys of a replica, and the walk from head backwards (FORMAT.md, "Restore").

A segment's key says where it sits in a chain: its first and last index, the checksum it
chains from and the checksum of its last entry. Following keys backwards from the head's
(index, checksum) finds exactly the segments of the head's history, whatever else (an
abandoned chain after a truncation, another writer's objects) is under `segments/`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Object keys of the replica's format (FORMAT.md, "Objects"), not paths of a journal directory
# (those are spelled once, in replay/layout.py): a replica keeps these names whatever the local layout.
SEGMENTS = "segments/"
MANIFESTS = "manifests/"
CHUNKS = "chunks/"
ENVIRONMENT_KEY = "environment.json"
_SEGMENT = re.compile(r"^segments/([0-9]{20})-([0-9]{20})-([0-9a-f]{16})-([0-9a-f]{16})\.seg$")
_MANIFEST = re.compile(r"^manifests/([0-9]{1,19})-([0-9]{1,19})$")


class SegmentKey(NamedTuple):
    """A segment object as its key describes it: entries first..last, chained from `prev`
    (the checksum of entry first - 1), ending with checksum `last_checksum`."""

    first: int
    last: int
    prev: int
    last_checksum: int

    @property
    def key(self) -> str:
        return f"{SEGMENTS}{self.first:020d}-{self.last:020d}-{self.prev:016x}-{self.last_checksum:016x}.seg"


def parse_segment_key(key: str) -> SegmentKey | None:
    """The SegmentKey a key names, None for any other key (ignored by every reader)."""
    m = _SEGMENT.match(key)
    if m is None:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    if not 1 <= first <= last:
        return None
    return SegmentKey(first, last, int(m.group(3), 16), int(m.group(4), 16))


def manifest_key(name: str) -> str:
    return MANIFESTS + name


def parse_manifest_key(key: str) -> tuple[int, int] | None:
    """(index, term) of a manifest key, None for any other key."""
    m = _MANIFEST.match(key)
    return (int(m.group(1)), int(m.group(2))) if m else None


def chunk_key(cid: str) -> str:
    return CHUNKS + cid


def walk_back(segments: list[SegmentKey], index: int, checksum: int) -> list[SegmentKey]:
    """The path ending at (index, checksum), oldest first: the segment ending there, the one
    ending where it starts, and so on while one does. [] when none ends there.

    Two segments ending at the same point (a range shipped again, cut differently) are
    both valid continuations; the one reaching further back is taken, as fewer objects
    cover the same history. A cycle is impossible (each step goes to a lower index)."""
    by_end: dict[tuple[int, int], SegmentKey] = {}
    for seg in segments:
        end = (seg.last, seg.last_checksum)
        if end not in by_end or seg.first < by_end[end].first:
            by_end[end] = seg
    path = []
    point = (index, checksum)
    while point in by_end:
        seg = by_end[point]
        path.append(seg)
        point = (seg.first - 1, seg.prev)
    path.reverse()
    return path
